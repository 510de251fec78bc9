"""Issue 20, case 8 (low): a symbolic link inside a sequence that leads out of it is refused.

A sequence someone sent you (a tarball keeps links) could otherwise make slam3r read, and export,
any image on your disk. A sequence folder that is itself a link is fine (it is resolved first)."""
from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest

from slam3r_app.errors import SourceError
from slam3r_datasets import make_source
from slam3r_datasets.synthetic import SyntheticSequence


@pytest.fixture
def seq(tmp_path):
    return SyntheticSequence(seed=1, frames=3, width=64, height=48).write(tmp_path / "seq", format="tum")


def test_a_tum_sequence_with_a_link_out_of_it_is_refused(tmp_path, seq):
    secret = tmp_path / "private" / "photo.png"
    secret.parent.mkdir()
    cv2.imwrite(str(secret), np.full((48, 64, 3), 200, np.uint8))
    victim = sorted((seq / "rgb").glob("*.png"))[1]
    victim.unlink()
    os.symlink(secret, victim)
    with pytest.raises(SourceError) as exc:
        list(make_source({"type": "tum", "path": str(seq)}).frames())
    msg = str(exc.value)
    assert "rgb.txt:" in msg and victim.name in msg and "is a symbolic link to" in msg and str(secret) in msg


def test_a_folder_source_with_a_link_out_of_it_is_refused(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "0000.png"), np.zeros((48, 64, 3), np.uint8))
    outside = tmp_path / "outside.png"
    cv2.imwrite(str(outside), np.zeros((48, 64, 3), np.uint8))
    os.symlink(outside, folder / "0001.png")
    with pytest.raises(SourceError, match="0001.png is a symbolic link"):
        make_source({"type": "folder", "path": str(folder), "intrinsics": [50, 50, 32, 24]})


def test_a_sequence_folder_that_is_a_link_and_links_inside_it_are_fine(tmp_path, seq):
    inner = sorted((seq / "rgb").glob("*.png"))
    copy = seq / "rgb" / "copy.png"
    shutil.copy(inner[0], copy)
    inner[0].unlink()
    os.symlink(copy, inner[0])  # a link that stays inside the sequence
    link = tmp_path / "linked_seq"
    os.symlink(seq, link)
    frames = list(make_source({"type": "tum", "path": str(link)}).frames())
    assert len(frames) == 3
