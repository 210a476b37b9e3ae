"""Scan-region detection and cropping, on phantom clips with burnt-in screen overlays."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pocovid.phantom import PhantomConfig, make_phantom, write_phantom
from pocovid.region import CropToScanRegion, ScanRegion, crop_frames, detect_scan_region, scan_region_of


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def overlay_mask(ph) -> np.ndarray:
    """Screen furniture: whatever is drawn outside the sector (the phantom leaves the rest black)."""
    return ph.frames.any(axis=(0, 3)) & ~ph.mask


def check_overlays_left_out(region: ScanRegion, ph) -> None:
    ov = overlay_mask(ph)
    assert ov.sum() > 500, "the phantom should draw overlays"
    inside = ov & region.mask
    # nothing that stands apart from the sector (text, logo, panel, grey bar, caliper, scale) ...
    far = cv2.dilate(ph.mask.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    assert not (inside & far).any(), f"{int((inside & far).sum())} overlay pixels kept away from the sector"
    # ... and at most a trace of a marker drawn right at the sector's edge
    assert inside.sum() <= 0.002 * ov.sum()


@pytest.fixture(scope="module", params=[("convex", "regular", 0), ("convex", "pneumonia", 3),
                                        ("linear", "covid", 1), ("linear", "pneumonia", 3)],
                ids=lambda p: f"{p[0]}-{p[1]}")
def phantom(request):
    probe, label, seed = request.param
    return make_phantom(PhantomConfig(label=label, probe=probe, width=400, height=320, n_frames=20, fps=15,
                                      overlays=True, seed=seed))


def test_clip_finds_the_sector_and_leaves_overlays_out(phantom):
    region = detect_scan_region(phantom.frames)
    assert iou(region.mask, phantom.mask) > 0.9
    assert (phantom.mask & ~region.mask).sum() <= 0.01 * phantom.mask.sum()  # the sector is not cut
    check_overlays_left_out(region, phantom)
    assert region.shape == phantom.config.probe
    assert region.method == "temporal+intensity"
    assert region.frame_size == phantom.mask.shape
    assert region.mask.shape == phantom.mask.shape and region.mask.dtype == bool


def test_single_frame_uses_space_only(phantom):
    region = detect_scan_region(phantom.frames[7])  # one RGB image
    assert region.method == "intensity"
    assert iou(region.mask, phantom.mask) > 0.9
    check_overlays_left_out(region, phantom)
    grey = cv2.cvtColor(phantom.frames[7], cv2.COLOR_RGB2GRAY)
    assert detect_scan_region(grey) == region


def test_crop_keeps_the_sector_and_blanks_the_rest(phantom):
    region = detect_scan_region(phantom.frames)
    x0, y0, x1, y1 = region.box
    before = phantom.frames.copy()
    crops = crop_frames(phantom.frames, region)
    assert len(crops) == len(phantom.frames)
    for frame, crop in zip(phantom.frames[::5], crops[::5]):
        assert crop.shape == (y1 - y0, x1 - x0, 3) and crop.dtype == np.uint8
        sector = phantom.mask[y0:y1, x0:x1] & region.crop_mask
        assert np.array_equal(crop[sector], frame[y0:y1, x0:x1][sector])  # image untouched
        assert not crop[~region.crop_mask].any()  # zero outside the mask
        assert not crop[overlay_mask(phantom)[y0:y1, x0:x1] & ~phantom.mask[y0:y1, x0:x1]].any()
    assert np.array_equal(phantom.frames, before)  # the input is left as it was
    grey = region.crop(phantom.frames[0, :, :, 0])
    assert grey.shape == (y1 - y0, x1 - x0)


def test_deterministic_and_saved_region_round_trips(phantom):
    a = detect_scan_region(phantom.frames)
    b = detect_scan_region(list(phantom.frames))
    assert a == b and a.to_dict() == b.to_dict()
    text = json.dumps(a.to_dict())
    assert len(text) < 8000  # a polygon, not a pixel mask
    c = ScanRegion.from_dict(json.loads(text))
    assert c == a and c.box == a.box and np.array_equal(c.mask, a.mask)
    assert np.array_equal(c.crop(phantom.frames[3]), a.crop(phantom.frames[3]))


def test_full_region_is_a_no_op():
    frame = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    full = ScanRegion.full(60, 80)
    assert full.box == (0, 0, 80, 60) and full.shape == "full" and full.method == "off"
    assert full.mask.all() and full.area_fraction == 1.0
    out = full.crop(frame)
    assert np.array_equal(out, frame) and out is not frame
    assert ScanRegion.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    off = detect_scan_region(frame, enabled=False)
    assert off == full


def test_nothing_plausible_falls_back_to_the_full_frame():
    black = np.zeros((5, 120, 160, 3), np.uint8)
    r = detect_scan_region(black)
    assert r.shape == "full" and r.method == "fallback" and r.note and r.mask.all()
    small = np.zeros((120, 160), np.uint8)
    cv2.circle(small, (30, 30), 12, 200, -1)  # a bright blob of ~2% of the frame
    r = detect_scan_region(small)
    assert r.shape == "full" and r.method == "fallback" and "%" in r.note


def test_mask_region_round_trips_as_run_lengths():
    rng = np.random.default_rng(1)
    mask = rng.random((37, 53)) > 0.6
    r = ScanRegion.from_mask(mask, shape="convex", method="manual")
    d = json.loads(json.dumps(r.to_dict()))
    assert "rle" in d and "polygon" not in d
    back = ScanRegion.from_dict(d)
    assert np.array_equal(back.mask, mask) and back.box == r.box
    with pytest.raises(ValueError):
        ScanRegion.from_mask(np.zeros((4, 4), bool))


def test_region_is_read_only_and_checks_sizes():
    r = ScanRegion.full(20, 30)
    with pytest.raises(ValueError):
        r.mask[0, 0] = False
    with pytest.raises(ValueError):
        r.crop(np.zeros((21, 30, 3), np.uint8))
    with pytest.raises(ValueError):
        detect_scan_region([np.zeros((20, 30, 3), np.uint8), np.zeros((21, 30, 3), np.uint8)])
    with pytest.raises(TypeError):
        detect_scan_region(np.zeros((20, 30), np.uint8), no_such_option=1)


def test_monai_style_transform():
    torch = pytest.importorskip("torch")
    ph = make_phantom(PhantomConfig(probe="convex", width=160, height=128, n_frames=6, overlays=True, seed=2))
    region = detect_scan_region(ph.frames)
    ref = region.crop(ph.frames[0])
    t = CropToScanRegion(region)
    assert np.array_equal(t(ph.frames[0]), ref)  # H, W, C
    chw = np.ascontiguousarray(ph.frames[0].transpose(2, 0, 1))
    assert np.array_equal(t(chw), ref.transpose(2, 0, 1))  # C, H, W (MONAI's layout)
    out = CropToScanRegion()(torch.from_numpy(chw).float(), region)
    assert isinstance(out, torch.Tensor) and np.array_equal(out.numpy().astype(np.uint8), ref.transpose(2, 0, 1))


@pytest.mark.parametrize("ext", [".mp4", ".png"])
def test_scan_region_of_a_recording(tmp_path, ext):
    path = tmp_path / f"clip{ext}"
    ph = write_phantom(path, PhantomConfig(label="covid", probe="convex", width=320, height=256, n_frames=12,
                                           overlays=True, seed=4))
    region = scan_region_of(path, max_frames=8)
    assert region.frame_size == ph.mask.shape
    assert iou(region.mask, ph.mask) > 0.9
    assert region.method == ("temporal+intensity" if ext == ".mp4" else "intensity")


def test_the_region_is_searched_on_the_first_seconds_only(tmp_path, monkeypatch):
    """A video decodes from its start: the search reads the first REGION_SPAN_S seconds, not the
    whole clip (which the frame pass decodes anyway), and finds the same region."""
    from pocovid.media.reader import VideoReader
    from pocovid.region import clip_region
    from pocovid.region.frames import REGION_SPAN_S

    path = tmp_path / "long.mp4"
    ph = write_phantom(path, PhantomConfig(label="covid", probe="convex", width=320, height=256, n_frames=120,
                                           fps=10.0, overlays=True, seed=4))
    asked = []
    real = VideoReader.frames

    def spy(self, indices=None):
        indices = list(indices) if indices is not None else None
        asked.append(max(indices) if indices else None)
        return real(self, indices)

    monkeypatch.setattr(VideoReader, "frames", spy)
    first = clip_region(path)
    assert asked[-1] < REGION_SPAN_S * 10
    whole = clip_region(path, span_s=None)
    assert asked[-1] == 119
    assert iou(first.mask, ph.mask) > 0.9 and iou(first.mask, whole.mask) > 0.95


@pytest.mark.realdata
def test_real_cropped_clips_are_not_cut(shared_pocus):
    """The real data is already cropped to the image: the detector must not cut into it."""
    from pocovid.media import sample_frames

    names = ["Reg_Avi_lung-sliding.MP4", "Cov-Atlas-pleural.mp4", "Pneu-Atlas-pneumonia2.gif",
             "Reg-Atlas-lungcurtain.gif", "Cov_Oliviera_2020_Fig16.jpg", "Pneu_Avi_consolidated-lung.JPG"]
    paths = {p.name: p for p in shared_pocus.rglob("*") if p.name in names}
    if not paths:
        pytest.skip("none of the chosen real files is present")
    for name, path in sorted(paths.items()):
        frames = [f.image for f in sample_frames(path, max_frames=16)]
        region = detect_scan_region(frames)
        mx = np.max([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames], axis=0).astype(np.float32)
        signal = cv2.GaussianBlur(mx, (0, 0), 1.0) > 20
        lost = (signal & ~region.mask).sum() / max(1, signal.sum())
        assert lost < 0.02, f"{name}: {lost:.1%} of the image lies outside the detected region"
