"""Grey frames straight from the decoder (`reader.frames(..., grey=True, rgb=...)`): a video's grey
frames come from its decoded luma plane, without the RGB conversion, and must give the model the
pixels the RGB path gives it (the RGB frame's BT.601 grey), but for +-1 grey level where FFmpeg's
RGB conversion rounds chroma; images, DICOM and other pixel formats give exactly that grey."""

from __future__ import annotations

import numpy as np
import pytest

from pocovid.media import MediaError, open_media
from pocovid.media.reader import LUMA_FORMATS, _luma_table, _rgb, _video_image, rgb_to_grey
from pocovid.models.preprocess import InputConfig
from pocovid.phantom import PhantomConfig, make_phantom, write_phantom, write_video
from pocovid.region import clip_region

W, H, T, FPS = 320, 240, 12, 15.0
CFG = InputConfig(size=96)


def both(path, indices=None):
    """(grey frames as the RGB path makes them, grey frames from `frames(grey=True)`)."""
    with open_media(path) as r:
        old = [rgb_to_grey(f.image) for f in r.frames(indices)]
        new = [f.image for f in r.frames(indices, grey=True)]
    assert len(old) == len(new) > 0
    for a, b in zip(old, new):
        assert b.ndim == 2 and b.dtype == np.uint8 and b.shape == a.shape
    return np.stack(old), np.stack(new)


def model_pixels(path, frames):
    region = clip_region(path)
    return np.stack([CFG.pixels(region.crop(f)) for f in frames]).astype(np.int16)


@pytest.fixture(scope="module")
def grey_clip():
    """A phantom clip turned grey: neutral chroma in every YUV file written from it."""
    p = make_phantom(PhantomConfig(label="covid", width=W, height=H, n_frames=T, fps=FPS, overlays=True, seed=3))
    return np.stack([rgb_to_grey(f) for f in p.frames])


ENCODED = [("mp4", {}), ("avi", {}), ("avi", {"codec": "mjpeg"}), ("mpeg", {}), ("webm", {}), ("wmv", {})]
IDS = ["h264", "mpeg4", "mjpeg", "mpeg2", "vp9", "wmv2"]


@pytest.mark.parametrize("ext,opts", ENCODED, ids=IDS)
def test_grey_video_frames_equal_the_rgb_paths_grey(tmp_path, grey_clip, ext, opts):
    """Grey ultrasound (U = V = 128): the luma table reproduces FFmpeg's conversion exactly, limited
    range (H.264, MPEG-2, ...) and full range (MJPEG's yuvj420p) alike."""
    path = tmp_path / f"grey.{ext}"
    write_video(path, grey_clip, FPS, **opts)
    old, new = both(path)
    assert np.array_equal(old, new)


@pytest.mark.parametrize("ext,opts", ENCODED, ids=IDS)
@pytest.mark.parametrize("seed", [5, 7])
def test_colour_video_model_pixels_within_one_grey_level(tmp_path, ext, opts, seed):
    """Phantoms with colour overlays and a scanner tint (chroma far from neutral, unlike real
    ultrasound): the model's pixels differ by at most a grey level but on a few, by no more than 3,
    and on average by well under one."""
    path = tmp_path / f"colour.{ext}"
    write_phantom(path, label="covid", width=W, height=H, n_frames=T, fps=FPS, seed=seed, overlays=True, **opts)
    old, new = both(path)
    d = model_pixels(path, new) - model_pixels(path, old)
    assert np.abs(d).max() <= 3
    assert (np.abs(d) > 1).mean() < 0.01
    assert np.abs(d).mean() < 0.7 and abs(d.mean()) < 0.7


@pytest.mark.parametrize("name,opts", [("gif", {}), ("png", {}), ("jpg", {}), ("dcm", {}),
                                       ("dcm", {"compressed": True}), ("dcm", {"monochrome": True})],
                         ids=["gif", "png", "jpg", "dicom", "dicom-jpeg", "dicom-mono"])
def test_images_dicom_and_palette_video_give_exactly_the_rgb_paths_grey(tmp_path, name, opts):
    path = tmp_path / f"x.{name}"
    write_phantom(path, label="regular", width=W, height=H, n_frames=6, fps=FPS, seed=2, overlays=True, **opts)
    old, new = both(path)
    assert np.array_equal(old, new)


def test_rgb_indices_come_rgb_from_the_same_pass(tmp_path):
    path = tmp_path / "c.mp4"
    write_phantom(path, label="covid", width=W, height=H, n_frames=T, fps=FPS, seed=5, overlays=True)
    idx = [0, 3, 4, 7, 11]
    with open_media(path) as r:
        rgb = {f.index: f for f in r.frames(idx)}
        got = list(r.frames(idx, grey=True, rgb={3, 11, 99}))
    assert [f.index for f in got] == idx
    for f in got:
        assert f.time_s == rgb[f.index].time_s
        if f.index in (3, 11):
            assert np.array_equal(f.image, rgb[f.index].image)  # the decoded RGB, untouched
        else:
            assert f.image.shape == (H, W)
    # the default stays RGB for every frame, and an image's `rgb` index too
    png = tmp_path / "c.png"
    write_phantom(png, label="covid", width=W, height=H, seed=5)
    with open_media(png) as r:
        assert next(r.frames()).image.shape == (H, W, 3)
        assert next(r.frames(grey=True, rgb=[0])).image.shape == (H, W, 3)
        assert next(r.frames(grey=True)).image.shape == (H, W)


FORMATS = [(f, None) for f in sorted(LUMA_FORMATS)] + [("yuv420p", "JPEG"), ("yuv444p", "JPEG")]


@pytest.mark.parametrize("fmt,rng", FORMATS)
@pytest.mark.parametrize("chroma", [(128, 128), (126, 131)], ids=["neutral", "tint"])
def test_every_luma_format_and_range(fmt, rng, chroma):
    """Formats the phantom writers do not make (4:2:2, 4:4:4, grey, full range flagged on yuv420p),
    every luma level, odd sizes, neutral chroma or a faint tint: the luma table gives the RGB
    path's grey exactly."""
    import av

    rng_ = np.random.default_rng(1)
    frame = av.VideoFrame(301, 37, fmt)
    for k, p in enumerate(frame.planes):
        a = np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)
        a[:] = rng_.integers(0, 256, a.shape, dtype=np.uint8) if k == 0 else chroma[k - 1]
    if rng:
        frame.color_range = getattr(av.video.reformatter.ColorRange, rng)
    assert _luma_table(frame) is not None
    assert np.array_equal(_video_image(frame, True), rgb_to_grey(_rgb(frame)))


@pytest.mark.parametrize("fmt", ["yuv420p10le", "rgb24", "nv12", "bgra"])
def test_other_pixel_formats_go_through_rgb(fmt):
    import av

    img = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=fmt)
    assert _luma_table(frame) is None
    assert np.array_equal(_video_image(frame, True), rgb_to_grey(_rgb(frame)))


def test_grey_frames_of_a_cut_or_broken_file(tmp_path):
    """The reader's guarantees hold for grey frames: a cut file gives the frames before the cut, a
    garbage one a one-line MediaError."""
    whole = tmp_path / "whole.mp4"
    write_phantom(whole, label="covid", width=W, height=H, n_frames=30, fps=FPS, seed=1)
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    try:
        with open_media(cut) as r:
            got = list(r.frames(grey=True))
        assert all(f.image.shape == (H, W) for f in got)
    except MediaError as e:  # a cut mp4 may lose its index: then it is one line
        assert "\n" not in str(e)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 5000)
    with pytest.raises(MediaError) as e:
        with open_media(bad) as r:
            list(r.frames(grey=True))
    assert "\n" not in str(e.value)


def test_frame_pass_inspects_rgb_frames_and_feeds_the_model_grey(tmp_path):
    """`stream_predict`: the inspected frames are the decoded RGB frames; the model's pixels are the
    RGB path's but for a grey level here and there."""
    from pocovid.inference import load, stream_predict

    path = tmp_path / "c.mp4"
    write_phantom(path, label="covid", width=W, height=H, n_frames=T, fps=FPS, seed=5, overlays=True)
    model = load("default")
    seen = []
    rec = stream_predict(path, model, keep_pixels=True, runtime="torch", n_inspect=3,
                         inspect=lambda f, px, region: seen.append((f.index, f.image.shape)) or f.index)
    assert [s[1] for s in seen] == [(H, W, 3)] * 3 and rec.inspected == [s[0] for s in seen]
    cfg = model.input_config
    region = rec.region
    with open_media(path) as r:
        old = np.stack([cfg.pixels(region.crop(f.image)) for f in r.frames()]).astype(np.int16)
    d = rec.pixels.astype(np.int16) - old
    assert np.abs(d).max() <= 3 and (np.abs(d) > 1).mean() < 0.01 and np.abs(d).mean() < 0.7
    for i in np.flatnonzero(np.isin(rec.index, [s[0] for s in seen])):  # inspected: the RGB path's own pixels
        assert np.array_equal(rec.pixels[i], old[rec.index[i]])


def test_odd_sized_grey_mjpeg(tmp_path, grey_clip):
    """An odd frame size takes another path through FFmpeg's RGB conversion: the table is made for it."""
    path = tmp_path / "odd.avi"
    write_video(path, grey_clip[:, :-1, :-3], FPS, codec="mjpeg")
    old, new = both(path)
    assert old.shape[1:] == (H - 1, W - 3) and np.array_equal(old, new)
