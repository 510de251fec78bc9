"""Train the ORB vocabulary used by the ``loop_closure`` plugin's place recognition.

    python tools/train_orb_vocabulary.py --out plugins/loop_closure/data/orb_vocabulary.npz \
        --images datasets/samples/tum_fr1_rpy/rgb --synthetic 3 --words 1024

Descriptors come from ORB (1000 per image) on every image of the given folders and
on frames rendered by the synthetic room renderer (``--synthetic N`` seeds, 40 frames
each); k-majority clustering (plugins/loop_closure/retrieval.py) makes the words. The
result is deterministic for the same inputs and ``--seed``. Use your own images to
train a vocabulary for your environment and pass it with
``--set loop_closure.vocabulary=path.npz``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    import cv2

    from slam3r_plugins.features import extract
    from slam3r_plugins.loop_closure.retrieval import Vocabulary

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", nargs="*", default=[], help="folders of images")
    ap.add_argument("--synthetic", type=int, default=0, help="synthetic room seeds to render (40 frames each)")
    ap.add_argument("--words", type=int, default=1024)
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    K = np.eye(3)
    descs, sources = [], []
    for folder in args.images:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        for p in files:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)[..., ::-1]
            descs.append(extract(img, None, K).descriptors)
        sources.append(f"{folder} ({len(files)} images)")
    if args.synthetic:
        from slam3r_datasets.synthetic import SyntheticSequence

        for seed in range(args.synthetic):
            seq = SyntheticSequence(seed=100 + seed, frames=40, width=640, height=480)
            for i in range(0, 40):
                rgb, _ = seq.render(i)
                descs.append(extract(rgb, None, K).descriptors)
        sources.append(f"synthetic room seeds 100..{99 + args.synthetic} (40 frames each, 640x480)")
    if not descs:
        ap.error("no images: give --images and/or --synthetic")
    D = np.concatenate(descs)
    print(f"{len(D)} descriptors from {', '.join(sources)}; training {args.words} words")
    voc = Vocabulary.train(D, k=args.words, iterations=args.iterations, seed=args.seed)
    voc.save(args.out, sources=np.array(sources), descriptors=len(D), seed=args.seed)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
