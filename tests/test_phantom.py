"""The synthetic lung-ultrasound phantom: geometry, classes, determinism, overlays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pocovid.phantom import LABELS, Phantom, PhantomConfig, make_phantom

W, H, T = 160, 128, 6


def small(**kw) -> Phantom:
    args = dict(width=W, height=H, n_frames=T, seed=1)
    args.update(kw)
    return make_phantom(PhantomConfig(**args))


def grey(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32).mean(axis=-1)


def depth_rows(p: Phantom, x: int) -> tuple[float, float]:
    """Screen rows of depth 0 and depth 1 along the scan line through column x (centre line)."""
    g = p.geometry
    if g["probe"] == "linear":
        return float(g["y0"]), float(g["y1"])
    return g["depth_rows"]


def band_mean(p: Phantom, img: np.ndarray, d0: float, d1: float, half_width: int = 8) -> float:
    """Mean intensity in a depth band [d0, d1) around the centre scan line."""
    cx = (p.box[0] + p.box[2]) // 2
    top, bot = depth_rows(p, cx)
    r0, r1 = int(round(top + d0 * (bot - top))), int(round(top + d1 * (bot - top)))
    return float(img[r0:max(r1, r0 + 1), cx - half_width:cx + half_width].mean())


# ---------------------------------------------------------------------------------------------


def test_config_is_validated():
    for bad in (dict(label="flu"), dict(probe="phased"), dict(width=8), dict(n_frames=0), dict(fps=0),
                dict(feature_frames=(5, 2))):
        with pytest.raises(ValueError):
            PhantomConfig(**bad)


@pytest.mark.parametrize("probe", ["convex", "linear"])
@pytest.mark.parametrize("label", LABELS)
def test_shapes_types_and_box(label, probe):
    p = small(label=label, probe=probe)
    assert p.frames.shape == (T, H, W, 3) and p.frames.dtype == np.uint8
    assert p.mask.shape == (H, W) and p.mask.dtype == bool
    assert p.fps == 15.0 and p.label == label
    ys, xs = np.nonzero(p.mask)
    assert p.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert p.finding_frames.shape == (T,) and p.finding_frames.dtype == bool
    if label == "regular":
        assert not p.finding_frames.any() and p.finding_masks is None
    else:
        assert p.finding_frames.all()
        assert p.finding_masks.shape == (T, H, W) and p.finding_masks.dtype == bool
        assert p.finding_masks.any(axis=(1, 2)).all()
        assert not (p.finding_masks & ~p.mask).any()  # findings lie inside the sector


def test_dark_background_and_bright_sector():
    p = small()
    g = grey(p.frames)
    assert g[:, ~p.mask].max() == 0  # nothing outside the sector without overlays
    assert 15 < g[:, p.mask].mean() < 120
    dp = p.geometry["pleura_depth"]
    assert band_mean(p, g.mean(axis=0), dp - 0.01, dp + 0.01) > max(140, 3 * g[:, p.mask].mean())  # bright pleura


def test_convex_fan_geometry():
    p = small(probe="convex")
    g = p.geometry
    assert g["apex"][1] < 0  # the apex lies above the image
    assert 15 < g["half_angle_deg"] < 40
    x0, y0, x1, y1 = p.box
    top_w = p.mask[y0 + 1].sum()
    widest = p.mask.sum(axis=1).max()
    assert top_w < 0.7 * widest  # a fan: narrow at the probe, wide at depth
    assert not p.mask[y0, x0] and not p.mask[y0, x1 - 1]  # top corners of the box are outside the fan
    # the top edge is an arc (the probe face): its middle lies lower than its ends
    ax, ay = g["apex"]
    r0, th = g["r0"], math.radians(g["half_angle_deg"])
    mid, end = int(ax), int(ax - 0.9 * r0 * math.sin(th))
    assert np.argmax(p.mask[:, mid]) > np.argmax(p.mask[:, end]) + 1


def test_linear_rectangle():
    p = small(probe="linear")
    x0, y0, x1, y1 = p.box
    assert p.mask[y0:y1, x0:x1].all() and p.mask.sum() == (x1 - x0) * (y1 - y0)


def test_deterministic_with_seed():
    a, b = small(label="pneumonia", seed=7), small(label="pneumonia", seed=7)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.finding_masks, b.finding_masks)
    c = small(label="pneumonia", seed=8)
    assert not np.array_equal(a.frames, c.frames)


def test_speckle_varies_slightly_between_frames():
    p = small(n_frames=3)
    g = grey(p.frames)
    a, b = g[0][p.mask], g[1][p.mask]
    assert not np.array_equal(a, b)
    assert np.corrcoef(a, b)[0, 1] > 0.6  # the same tissue, not fresh noise


def test_lung_slides_under_a_static_chest_wall():
    p = make_phantom(PhantomConfig(width=192, height=192, n_frames=16, seed=3))
    g = grey(p.frames)
    cx = (p.box[0] + p.box[2]) // 2
    top, bot = depth_rows(p, cx)
    dp = p.geometry["pleura_depth"]

    def corr(d0, d1):
        r0, r1 = int(top + d0 * (bot - top)), int(top + d1 * (bot - top))
        a, b = g[0, r0:r1, cx - 25:cx + 25].ravel(), g[-1, r0:r1, cx - 25:cx + 25].ravel()
        return np.corrcoef(a, b)[0, 1]

    wall = corr(0.3 * dp, 0.85 * dp)
    lung = corr(1.15 * dp, 1.8 * dp)
    assert wall > lung + 0.08, (wall, lung)


def test_regular_has_fading_a_lines():
    p = make_phantom(PhantomConfig(width=192, height=192, n_frames=2, seed=2))
    g = grey(p.frames).mean(axis=0)
    dp = p.geometry["pleura_depth"]
    pleura = band_mean(p, g, dp - 0.01, dp + 0.01)
    a1 = band_mean(p, g, 2 * dp - 0.01, 2 * dp + 0.01)
    between = (band_mean(p, g, 1.4 * dp, 1.6 * dp) + band_mean(p, g, 2.4 * dp, 2.6 * dp)) / 2
    assert pleura > a1 > between + 8  # an A-line at twice the pleural depth, dimmer than the pleura
    if 3 * dp < 0.93:
        a2 = band_mean(p, g, 3 * dp - 0.01, 3 * dp + 0.01)
        assert a2 < a1  # fading


def test_covid_b_lines_bright_to_the_bottom_and_a_lines_erased():
    kw = dict(width=192, height=192, n_frames=4, seed=4)
    reg, cov = make_phantom(PhantomConfig(label="regular", **kw)), make_phantom(PhantomConfig(label="covid", **kw))
    assert np.array_equal(reg.mask, cov.mask)  # same seed, same patient
    gr, gc = grey(reg.frames), grey(cov.frames)
    m = cov.finding_masks
    assert gc[m].mean() > gr[m].mean() + 50  # B-lines are much brighter than the lung they replace
    # no fading: the deep half of each B-line is about as bright as its upper half
    ys = np.nonzero(m[0])[0]
    mid = (ys.min() + ys.max()) // 2
    upper, lower = m[0].copy(), m[0].copy()
    upper[mid:] = False
    lower[:mid] = False
    assert gc[0][lower].mean() > 0.7 * gc[0][upper].mean()
    # A-lines erased: between the B-lines there is no bright band at twice the pleural depth
    dp = cov.geometry["pleura_depth"]
    cx = (cov.box[0] + cov.box[2]) // 2
    top, bot = depth_rows(cov, cx)
    cols = np.zeros(cov.mask.shape[1], bool)
    cols[cx - 30:cx + 30] = True
    cols &= ~m[0].any(axis=0)  # columns that no B-line crosses

    def a_line_contrast(g):
        def band(d0, d1):
            return g[:, int(round(top + d0 * (bot - top))):int(round(top + d1 * (bot - top))) + 1][..., cols].mean()
        return band(2 * dp - 0.01, 2 * dp + 0.01) - (band(1.4 * dp, 1.6 * dp) + band(2.4 * dp, 2.6 * dp)) / 2

    assert cols.sum() >= 3
    assert a_line_contrast(gr) > 8 and a_line_contrast(gc) < 4, (a_line_contrast(gr), a_line_contrast(gc))


def test_convex_b_lines_follow_rays():
    p = make_phantom(PhantomConfig(label="covid", width=256, height=256, n_frames=1, seed=5))
    m = p.finding_masks[0]
    g = p.geometry
    ax, ay = g["apex"]
    r0, r1, th = g["r0"], g["r1"], math.radians(g["half_angle_deg"])
    y_top = int(ay + r0 + (g["pleura_depth"] + 0.08) * (r1 - r0))
    y_bot = int(ay + r1 * math.cos(0.5 * th)) - 3

    def angles(y):
        xs = np.nonzero(m[y])[0]
        return np.degrees(np.arctan2(xs + 0.5 - ax, y + 0.5 - ay))

    a_top, a_bot = angles(y_top), angles(y_bot)
    # the B-lines occupy the same angles (rays from the apex) near the pleura and at the bottom
    assert abs(a_top.min() - a_bot.min()) < 2.5 and abs(a_top.max() - a_bot.max()) < 2.5
    assert len(a_bot) > len(a_top)  # so they widen in pixels with depth


def test_pneumonia_consolidation_differs_from_aerated_lung():
    kw = dict(width=192, height=192, n_frames=4, seed=6)
    reg, pn = make_phantom(PhantomConfig(label="regular", **kw)), make_phantom(PhantomConfig(label="pneumonia", **kw))
    gr, gp = grey(reg.frames), grey(pn.frames)
    m = pn.finding_masks
    inside = np.abs(gp[m] - gr[m]).mean()
    outside = np.abs(gp[:, pn.mask & ~m[0]] - gr[:, pn.mask & ~m[0]]).mean()
    assert inside > 10 and outside < 2, (inside, outside)
    # the consolidation (just under the pleura) is tissue-like: brighter than the aerated lung there
    dp = pn.geometry["pleura_depth"]
    cx = (pn.box[0] + pn.box[2]) // 2
    top, bot = depth_rows(pn, cx)
    sub = np.zeros((pn.mask.shape), bool)
    sub[int(top + (dp + 0.03) * (bot - top)):int(top + (dp + 0.12) * (bot - top))] = True
    sel = sub & m[0]
    assert sel.any() and gp[:, sel].mean() > gr[:, sel].mean() + 10


def test_pneumonia_effusion_is_dark():
    for seed in range(20):  # find a seed with an effusion (most have one)
        p = make_phantom(PhantomConfig(label="pneumonia", width=128, height=128, n_frames=1, seed=seed))
        deep = p.finding_masks[0].copy()
        deep[: p.box[1] + int(0.8 * (p.box[3] - p.box[1]))] = False
        if deep.sum() > 50:
            break
    else:
        pytest.fail("no effusion in 20 seeds")
    g = grey(p.frames)[0]
    assert g[deep].mean() < 15


def test_feature_frames_window():
    kw = dict(width=128, height=112, n_frames=8, seed=9)
    reg = make_phantom(PhantomConfig(label="regular", **kw))
    for label in ("covid", "pneumonia"):
        p = make_phantom(PhantomConfig(label=label, feature_frames=(2, 5), **kw))
        assert p.finding_frames.tolist() == [False, False, True, True, True, False, False, False]
        assert not p.finding_masks[~p.finding_frames].any()
        assert p.finding_masks[p.finding_frames].any(axis=(1, 2)).all()
        # outside the window the lung is healthy: exactly the same clip as the regular one
        assert np.array_equal(p.frames[~p.finding_frames], reg.frames[~p.finding_frames])
        assert not np.array_equal(p.frames[p.finding_frames], reg.frames[p.finding_frames])
    # a window past the end of the clip is clipped, not an error
    p = make_phantom(PhantomConfig(label="covid", feature_frames=(6, 99), **kw))
    assert p.finding_frames.tolist() == [False] * 6 + [True, True]


@pytest.mark.parametrize("probe", ["convex", "linear"])
def test_overlays_outside_the_sector(probe):
    p = small(overlays=True, probe=probe, label="covid")
    ov = p.overlay_mask
    assert ov is not None and ov.any()
    assert not (ov & p.mask).any()
    x0, y0, x1, y1 = p.box
    assert x0 >= 8 and y0 >= 8 and W - x1 >= 8 and H - y1 >= 4  # a dark screen margin around the sector
    outside = p.frames[:, ~p.mask]
    assert (outside == outside[0]).all()  # burnt-in: static over time
    assert outside.max() > 200  # text and scale are bright
    rgb = outside[0].astype(int)
    assert (np.abs(rgb[:, 0] - rgb[:, 2]) > 60).any()  # coloured elements (logo, settings, caliper)
    # the sector is rendered as without overlays: grey speckle, bright pleura
    assert 15 < grey(p.frames)[:, p.mask].mean() < 120
    # the text banner is above the sector, the depth scale right of it
    assert ov[:y0].any() and ov[:, x1:].any() and ov[:, :x0].any()


def test_small_and_odd_sizes_render():
    for w, h in ((32, 32), (101, 77)):
        for probe in ("convex", "linear"):
            p = make_phantom(PhantomConfig(width=w, height=h, n_frames=2, probe=probe, label="pneumonia"))
            assert p.frames.shape == (2, h, w, 3) and p.mask.sum() > 0.3 * w * h


def test_render_is_fast_enough_for_tests():
    # not a benchmark (see benchmarks/): only guards against an accidental slow path
    import time

    t = time.perf_counter()
    make_phantom(PhantomConfig(width=320, height=320, n_frames=10, label="pneumonia", overlays=True))
    assert time.perf_counter() - t < 5.0
