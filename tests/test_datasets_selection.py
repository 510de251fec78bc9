"""first / stride / max_frames mean the same in every reader, with the same messages for bad values.

Truth: the positions ``first, first + stride, ...`` (at most ``max_frames``) written out by hand,
checked against what each reader hands out (file names, the video's frame numbers, the TUM
sample's rgb.txt, the synthetic clock), and the exact messages users see.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from slam3r_app.errors import SourceError
from slam3r_datasets import ImageFolderSource, VideoSource
from slam3r_datasets.common import SAMPLES_DIR, check_selection, select_frames
from slam3r_datasets.tum import TumSource

EXPECTED = [2, 5, 8, 11]  # first=2, stride=3, max_frames=4 of 15


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("sel_folder")
    for i in range(15):
        assert cv2.imwrite(str(d / f"img{i}.png"), np.full((16, 16, 3), 10 * i, np.uint8))
    return d


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    import tests.test_live_support as support

    return support.write_video(tmp_path_factory.mktemp("sel_video") / "v.avi", n=15, fps=30.0, size=(32, 24))


def test_folder_video_tum_and_synthetic_select_the_same_positions(folder, video):
    sel = dict(first=2, stride=3, max_frames=4)
    assert [f.name for f in ImageFolderSource(folder, **sel).frames()] == [f"img{i}.png" for i in EXPECTED]
    assert [f.name for f in VideoSource(video, **sel).frames()] == [f"v.avi#{i}" for i in EXPECTED]
    rows = [ln.split() for ln in (SAMPLES_DIR / "tum_fr1_rpy" / "rgb.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    tum = list(TumSource("sample:tum_fr1_rpy", **sel).frames())
    assert [f.timestamp for f in tum] == pytest.approx([float(rows[i][0]) for i in EXPECTED], abs=1e-6)
    from slam3r_datasets.synthetic import SyntheticSource

    syn = SyntheticSource(frames=15, fps=10.0, width=32, height=24, **sel)
    assert syn.idx == EXPECTED and len(syn) == 4


@pytest.mark.parametrize("first, stride", [(-1, 1), (0, 0)])
def test_bad_first_or_stride_say_so_in_every_reader(folder, video, first, stride):
    text = f"first must be >= 0 and stride >= 1 (got first={first}, stride={stride})"
    with pytest.raises(SourceError) as e:
        ImageFolderSource(folder, first=first, stride=stride)
    assert str(e.value) == f"{folder}: {text}"
    with pytest.raises(SourceError) as e:
        VideoSource(video, first=first, stride=stride)
    assert str(e.value) == text
    with pytest.raises(SourceError) as e:
        TumSource("sample:tum_fr1_rpy", first=first, stride=stride)
    assert str(e.value) == f"{SAMPLES_DIR / 'tum_fr1_rpy'}: {text}"


def test_first_past_the_end_names_what_the_source_has(folder, video):
    with pytest.raises(SourceError) as e:
        ImageFolderSource(folder, first=15)
    assert str(e.value) == f"{folder}: no frames selected: first=15 but the folder has 15 image(s)"
    with pytest.raises(SourceError) as e:
        VideoSource(video, first=20)
    assert str(e.value) == f"{video}: no frames selected: first=20 but the video has 15 frame(s)"
    from slam3r_datasets.synthetic import SyntheticSource

    with pytest.raises(SourceError) as e:
        SyntheticSource(frames=5, first=5, width=32, height=24)
    assert str(e.value) == "synthetic: no frames selected: first=5 but only 5 frame(s) are rendered"


def test_helpers_alone():
    assert select_frames(10, 1, 4, None, "here", "10") == [1, 5, 9]
    with pytest.raises(SourceError, match=r"^here: no frames selected: first=0 but it has 10$"):
        select_frames(10, 0, 1, 0, "here", "it has 10")
    with pytest.raises(SourceError, match=r"^there: no frames selected: first=3 but it has 2$"):
        select_frames(2, 3, 1, None, "here", "it has 2", empty_where="there")
    check_selection(0, 1)
    with pytest.raises(SourceError, match=r"^first must be"):
        check_selection(0, 0)
