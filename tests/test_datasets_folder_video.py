"""Image-folder and video-file readers on fixtures the tests write."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from slam3r_app.errors import BadFrameError, SourceError
from slam3r_datasets import ImageFolderSource, VideoSource


def _img(v: int, size=(48, 64)) -> np.ndarray:
    return np.full((size[0], size[1], 3), v, np.uint8)


# ----------------------------------------------------------------------------- folder
def test_folder_natural_order_extensions_and_options(tmp_path):
    names = ["frame10.png", "frame2.jpg", "frame1.PNG", "frame3.bmp", "frame20.jpeg"]
    for k, n in enumerate(names):
        assert cv2.imwrite(str(tmp_path / n), _img(40 * k))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    src = ImageFolderSource(tmp_path)
    assert [f.name for f in src.frames()] == ["frame1.PNG", "frame2.jpg", "frame3.bmp", "frame10.png", "frame20.jpeg"]
    assert [f.timestamp for f in src.frames()] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(f.intrinsics is None and f.depth is None and f.gt_pose is None for f in src.frames())
    src = ImageFolderSource(tmp_path, first=1, stride=2, max_frames=5, intrinsics=[50, 50, 31.5, 23.5], fps=10.0)
    frames = list(src.frames())
    assert [f.name for f in frames] == ["frame2.jpg", "frame10.png"]
    assert [f.index for f in frames] == [0, 1] and [f.timestamp for f in frames] == [0.1, 0.3]
    assert frames[0].intrinsics[0, 0] == 50 and len(src) == 2
    assert int(frames[1].rgb[0, 0, 0]) == 0  # frame10.png was written first (value 0): RGB order kept


def test_folder_rgb_channel_order(tmp_path):
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's BGR
    cv2.imwrite(str(tmp_path / "a.png"), bgr)
    f = next(ImageFolderSource(tmp_path).frames())
    assert tuple(f.rgb[0, 0]) == (0, 0, 255)


def test_folder_bad_input(tmp_path):
    with pytest.raises(SourceError, match="image folder not found"):
        ImageFolderSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match=r"no images .* \(empty sequence\)"):
        ImageFolderSource(tmp_path / "empty")
    d = tmp_path / "seq"
    d.mkdir()
    for i in range(5):
        cv2.imwrite(str(d / f"{i:03d}.png"), _img(i, (40, 64) if i == 3 else (48, 64)))
    (d / "001.png").write_bytes(b"\x89PNG\r\n\x1a\ncorrupt")
    items = list(ImageFolderSource(d)._iter_raw())
    assert [isinstance(x, BadFrameError) for x in items] == [False, True, False, True, False]
    assert "001.png: cannot decode image" in str(items[1])
    assert "003.png: image is 64x40, but the sequence's frames are 64x48" in str(items[3])
    assert len(list(ImageFolderSource(d).frames(on_bad_frame="skip"))) == 3
    with pytest.raises(SourceError, match="001.png"):
        list(ImageFolderSource(d).frames())


# ----------------------------------------------------------------------------- video
@pytest.fixture
def video(tmp_path):
    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert w.isOpened()
    for i in range(12):
        w.write(_img(20 * i))
    w.release()
    return path


def test_video_frames_timestamps_and_options(video):
    src = VideoSource(video)
    assert len(src) == 12 and src.fps == pytest.approx(10.0)
    frames = list(src.frames())
    assert len(frames) == 12
    assert [f.timestamp for f in frames] == pytest.approx([i / 10 for i in range(12)], abs=1e-6)
    assert [abs(int(f.rgb.mean()) - 20 * i) <= 3 for i, f in enumerate(frames)] == [True] * 12
    assert frames[0].rgb.shape == (48, 64, 3) and frames[0].intrinsics is None
    src = VideoSource(video, first=2, stride=3, max_frames=3, intrinsics=[60, 60, 32, 24])
    frames = list(src.frames())
    assert len(src) == 3 and [f.index for f in frames] == [0, 1, 2]
    assert [f.timestamp for f in frames] == pytest.approx([0.2, 0.5, 0.8], abs=1e-6)
    assert [abs(int(f.rgb.mean()) - 20 * i) <= 3 for i, f in zip((2, 5, 8), frames)] == [True] * 3
    assert frames[0].intrinsics[0, 0] == 60
    assert src.end_reason == ""


class FakeClock:
    """Stands in for the ``time`` module of the video reader: time only passes when it sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_video_realtime_pace(video, monkeypatch):
    """Realtime waits for each frame's media time (10 frames/s: 4 intervals of 0.1 s over 5 frames);
    fast never waits. A fake clock makes this exact, whatever the machine's load."""
    import slam3r_datasets.video as video_mod

    clock = FakeClock()
    monkeypatch.setattr(video_mod, "time", clock)
    n = len(list(VideoSource(video, max_frames=5, pace="realtime").frames()))
    assert n == 5 and len(clock.sleeps) == 4
    assert clock.now - 100.0 == pytest.approx(0.4, abs=1e-6)
    clock.sleeps.clear()
    assert len(list(VideoSource(video, max_frames=5, pace="fast").frames())) == 5
    assert clock.sleeps == []


def test_video_consumer_stopping_early_releases(video):
    src = VideoSource(video)
    gen = src.frames()
    next(gen)
    gen.close()  # runs the reader's finally: the capture is released
    assert len(list(src.frames())) == 12  # and a new pass opens it again


def test_video_bad_input(tmp_path, video):
    with pytest.raises(SourceError, match="video file not found"):
        VideoSource(tmp_path / "missing.mp4")
    with pytest.raises(SourceError, match="got a folder"):
        VideoSource(tmp_path)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match="junk.mp4: OpenCV cannot open this video file|junk.mp4: the video holds no"):
        VideoSource(junk)
    with pytest.raises(SourceError, match="no frames selected: first=50 but the video has 12"):
        VideoSource(video, first=50)
    with pytest.raises(SourceError, match="pace must be one of"):
        VideoSource(video, pace="slow")
