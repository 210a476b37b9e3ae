"""From a recording to model-ready frames: region found once per clip, same crop for every frame."""

import numpy as np

import pocovid.region.frames as frames_mod
from pocovid.phantom import write_phantom
from pocovid.region import ScanRegion, clip_region, load_clip


def test_load_clip_crops_every_frame_to_one_region(tmp_path):
    path = tmp_path / "scan.mp4"
    ph = write_phantom(path, label="covid", width=320, height=240, n_frames=12, fps=12, overlays=True, seed=2)
    clip = load_clip(path, rate_hz=4, size=112)
    assert len(clip.frames) == 4 and all(f.shape == (112, 112, 3) for f in clip.frames)
    assert np.all(np.diff(clip.times) > 0) and clip.indices == [0, 3, 6, 9]
    x0, y0, x1, y1 = clip.region.box
    bx0, by0, bx1, by1 = ph.box
    assert abs(x0 - bx0) <= 4 and abs(y0 - by0) <= 4 and abs(x1 - bx1) <= 4 and abs(y1 - by1) <= 4
    # the recorded region reproduces the same frames
    again = load_clip(path, rate_hz=4, size=112, region=clip.region.to_dict())
    assert all(np.array_equal(a, b) for a, b in zip(clip.frames, again.frames))


def test_crop_can_be_turned_off(tmp_path):
    path = tmp_path / "scan.png"
    write_phantom(path, width=160, height=128, overlays=True)
    clip = load_clip(path, crop=False)
    assert clip.region.shape == "full" and clip.region.method == "off"
    assert clip.frames[0].shape == (128, 160, 3)


def test_large_frames_are_detected_on_a_shrunk_copy(tmp_path, monkeypatch):
    path = tmp_path / "big.avi"
    ph = write_phantom(path, width=480, height=384, n_frames=6, overlays=True, seed=1)
    full = clip_region(path)
    monkeypatch.setattr(frames_mod, "DETECT_LONG_SIDE", 160)  # forces a factor-3 shrink
    shrunk = clip_region(path)
    assert shrunk.frame_size == full.frame_size == (384, 480)
    iou = (shrunk.mask & ph.mask).sum() / (shrunk.mask | ph.mask).sum()
    assert iou > 0.9
    assert isinstance(shrunk, ScanRegion)
