"""Reading every supported recording format, on files the phantom writers made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pocovid.media import MediaError, open_media, probe, read_frames, sample_frames
from pocovid.phantom import PhantomConfig, make_phantom, write_dicom, write_image, write_phantom, write_video

W, H, T, FPS = 160, 128, 8, 15.0


@pytest.fixture(scope="module")
def clip():
    """A small covid clip with screen overlays (colour text, grey bar) to write in every format."""
    return make_phantom(PhantomConfig(label="covid", width=W, height=H, n_frames=T, fps=FPS, overlays=True, seed=3))


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def check_clip(path: Path, ref: np.ndarray, fps: float, max_mad: float, fps_tol: float = 0.01):
    info = probe(path)
    assert info.kind == "video"
    assert (info.n_frames, info.width, info.height) == (len(ref), ref.shape[2], ref.shape[1])
    assert info.fps == pytest.approx(fps, abs=fps_tol)
    frames = read_frames(path)
    assert [f.index for f in frames] == list(range(len(ref)))
    times = np.array([f.time_s for f in frames])
    assert times[0] == pytest.approx(0.0, abs=1e-6)
    assert (np.diff(times) > 0).all()
    assert times == pytest.approx(np.arange(len(ref)) / fps, abs=0.6 / fps)
    for f, r in zip(frames, ref):
        assert f.image.shape == r.shape and f.image.dtype == np.uint8
    err = np.mean([mad(f.image, r) for f, r in zip(frames, ref)])
    assert err <= max_mad, err
    return info, frames


# --------------------------------------------------------------------------------------------- video

VIDEO_CASES = [  # extension, writer options, FFmpeg codec expected in the file, container
    ("mp4", {}, "h264", "mov,mp4,m4a,3gp,3g2,mj2"),
    ("m4v", {}, "h264", "mov,mp4,m4a,3gp,3g2,mj2"),
    ("mov", {}, "h264", "mov,mp4,m4a,3gp,3g2,mj2"),
    ("avi", {}, "mpeg4", "avi"),
    ("avi", {"codec": "mjpeg"}, "mjpeg", "avi"),
    ("mpeg", {}, "mpeg2video", "mpeg"),
    ("mpg", {}, "mpeg2video", "mpeg"),
    ("mkv", {}, "h264", "matroska,webm"),
    ("webm", {}, "vp9", "matroska,webm"),
    ("wmv", {}, "wmv2", "asf"),
]


@pytest.mark.parametrize("ext,opts,codec,container", VIDEO_CASES, ids=[f"{c[0]}-{c[2]}" for c in VIDEO_CASES])
def test_video_round_trip(tmp_path, clip, ext, opts, codec, container):
    import av

    path = tmp_path / f"clip.{ext}"
    write_video(path, clip.frames, FPS, **opts)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert c.format.name == container and s.codec_context.name == codec
        if codec == "h264":
            assert s.codec_context.pix_fmt == "yuv420p"
    info, _ = check_clip(path, clip.frames, FPS, max_mad=6.0)
    assert info.format == ext


def test_gif_round_trip(tmp_path, clip):
    path = tmp_path / "clip.gif"
    write_video(path, clip.frames, FPS)
    # GIF delays are whole 1/100 s: 15 fps is stored as 7, 6, 7, ... centiseconds
    check_clip(path, clip.frames, FPS, max_mad=3.0, fps_tol=0.5)


def test_grey_gif_is_lossless(tmp_path, clip):
    grey = clip.frames.mean(axis=-1).astype(np.uint8)
    path = tmp_path / "grey.gif"
    write_video(path, grey, 10.0)
    _, frames = check_clip(path, np.repeat(grey[..., None], 3, axis=-1), 10.0, max_mad=0.0)


def test_one_frame_gif(tmp_path):
    p = write_phantom(tmp_path / "one.gif", n_frames=1, width=96, height=80, label="pneumonia")
    info = probe(tmp_path / "one.gif")
    assert info.n_frames == 1 and (info.width, info.height) == (96, 80)
    frames = read_frames(tmp_path / "one.gif")
    assert len(frames) == 1 and frames[0].time_s == 0.0
    assert mad(frames[0].image, p.frames[0]) < 3.0


def test_sample_frames_at_a_lower_rate(tmp_path, clip):
    path = tmp_path / "clip.mp4"
    write_video(path, clip.frames, FPS)
    got = sample_frames(path, rate_hz=5.0)  # every third frame of a 15 fps clip
    assert [f.index for f in got] == [0, 3, 6]
    assert [f.time_s for f in got] == pytest.approx([0.0, 0.2, 0.4], abs=1e-3)
    every = read_frames(path)
    for f in got:
        assert np.array_equal(f.image, every[f.index].image)
    assert [f.index for f in sample_frames(path, max_frames=3)] == [0, 4, 7]
    assert [f.index for f in read_frames(path, indices=[5, 1])] == [1, 5]


def test_video_odd_size_and_bad_extension_are_refused(tmp_path, clip):
    odd = clip.frames[:, :, :-1]
    with pytest.raises(ValueError, match="even width and height"):
        write_video(tmp_path / "odd.mp4", odd, FPS)
    assert not (tmp_path / "odd.mp4").exists()
    write_video(tmp_path / "odd.avi", odd, FPS, codec="mjpeg")  # MJPEG takes odd sizes
    assert probe(tmp_path / "odd.avi").width == W - 1
    with pytest.raises(ValueError):
        write_video(tmp_path / "clip.xyz", clip.frames, FPS)


def test_class_difference_survives_h264(tmp_path):
    kw = dict(width=W, height=H, n_frames=4, seed=5)
    reg = write_phantom(tmp_path / "reg.mp4", label="regular", **kw)
    cov = write_phantom(tmp_path / "cov.mp4", label="covid", **kw)
    gr = np.stack([f.image for f in read_frames(tmp_path / "reg.mp4")]).mean(axis=-1)
    gc = np.stack([f.image for f in read_frames(tmp_path / "cov.mp4")]).mean(axis=-1)
    m = cov.finding_masks
    assert gc[m].mean() > gr[m].mean() + 40
    assert np.array_equal(reg.mask, cov.mask)


# --------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("name,lossless", [("f.png", True), ("f.bmp", True), ("f.tif", True), ("f.tiff", True),
                                           ("f.jpg", False), ("f.JPG", False), ("f.JPEG", False)])
def test_image_rgb_round_trip(tmp_path, clip, name, lossless):
    write_image(tmp_path / name, clip.frames[0])
    info = probe(tmp_path / name)
    assert (info.kind, info.n_frames, info.fps, info.width, info.height) == ("image", 1, None, W, H)
    frames = read_frames(tmp_path / name)
    assert len(frames) == 1 and frames[0].time_s == 0.0 and frames[0].image.shape == (H, W, 3)
    err = mad(frames[0].image, clip.frames[0])
    assert err == 0.0 if lossless else err < 3.0
    assert sample_frames(tmp_path / name, rate_hz=5)[0].index == 0


def test_png_grey_8_and_16_bit_and_rgba(tmp_path, clip):
    grey = clip.frames[0].mean(axis=-1).astype(np.uint8)
    write_image(tmp_path / "g8.png", grey)
    img = read_frames(tmp_path / "g8.png")[0].image
    assert np.array_equal(img, np.repeat(grey[..., None], 3, axis=-1))

    g16 = grey.astype(np.uint16) * 257 + 3  # 16-bit data: the reader stretches its own range to 8 bits
    write_image(tmp_path / "g16.png", g16)
    from PIL import Image

    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # really 16-bit on disk
    img = read_frames(tmp_path / "g16.png")[0].image
    lo, hi = float(g16.min()), float(g16.max())
    expect = (g16 - lo) * (255.0 / (hi - lo))
    assert np.abs(img[..., 0].astype(float) - expect).max() <= 1.0
    assert probe(tmp_path / "g16.png").width == W

    rgba = np.dstack([clip.frames[0], np.full((H, W), 128, np.uint8)])
    write_image(tmp_path / "rgba.png", rgba)
    assert np.array_equal(read_frames(tmp_path / "rgba.png")[0].image, clip.frames[0])
    with pytest.raises(ValueError):
        write_image(tmp_path / "rgba.jpg", rgba)


def test_write_phantom_image_writes_the_first_frame(tmp_path):
    p = write_phantom(tmp_path / "still.png", label="pneumonia", width=96, height=96, n_frames=5)
    assert p.frames.shape == (1, 96, 96, 3) and p.finding_masks.shape == (1, 96, 96)
    full = make_phantom(PhantomConfig(label="pneumonia", width=96, height=96, n_frames=5))
    assert np.array_equal(read_frames(tmp_path / "still.png")[0].image, full.frames[0])


# --------------------------------------------------------------------------------------------- DICOM


def test_dicom_multiframe_uncompressed(tmp_path, clip):
    import pydicom

    path = tmp_path / "cine.dcm"
    write_dicom(path, clip.frames, FPS)
    assert path.read_bytes()[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1"
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
    assert (ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated) == ("US", "RGB", 3, 8)
    assert int(ds.NumberOfFrames) == T and int(ds.CineRate) == 15
    assert float(ds.FrameTime) == pytest.approx(1000 / 15, rel=1e-4)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "StudyDate", "ReferringPhysicianName",
               "AccessionNumber", "StudyInstanceUID"):
        assert str(ds.get(kw, "")), kw
    assert str(ds.PatientName) == "PHANTOM^TEST" and ds.PatientID == "PH0001"
    _, frames = check_clip(path, clip.frames, FPS, max_mad=0.0)
    assert frames[-1].time_s == pytest.approx((T - 1) / FPS)


def test_dicom_multiframe_jpeg_baseline(tmp_path, clip):
    import pydicom

    path = tmp_path / "cine_jpeg.dcm"
    write_dicom(path, clip.frames, FPS, compressed=True)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.PhotometricInterpretation == "YBR_FULL_422" and ds.LossyImageCompression == "01"
    assert path.stat().st_size < clip.frames.nbytes / 3
    check_clip(path, clip.frames, FPS, max_mad=4.0)


@pytest.mark.parametrize("compressed", [False, True])
def test_dicom_monochrome(tmp_path, clip, compressed):
    import pydicom

    path = tmp_path / "mono.dcm"
    write_dicom(path, clip.frames, 25.0, monochrome=True, compressed=compressed)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
    luma = clip.frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    ref = np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    _, frames = check_clip(path, ref, 25.0, max_mad=3.0 if compressed else 0.0)
    assert all((f.image[..., 0] == f.image[..., 2]).all() for f in frames)


@pytest.mark.parametrize("compressed", [False, True])
def test_dicom_single_frame(tmp_path, compressed):
    import pydicom

    path = tmp_path / "still.dcm"
    p = write_phantom(path, n_frames=1, width=W, height=H, label="pneumonia", compressed=compressed)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1" and "NumberOfFrames" not in ds
    info = probe(path)
    got = (info.kind, info.format, info.n_frames, info.fps, info.width, info.height)
    assert got == ("image", "dicom", 1, None, W, H)
    frames = read_frames(path)
    assert len(frames) == 1 and frames[0].time_s == 0.0
    assert mad(frames[0].image, p.frames[0]) <= (3.0 if compressed else 0.0)


def test_dicom_tags_regions_and_no_extension(tmp_path, clip):
    import pydicom

    path = tmp_path / "IM000001"  # scanners often write DICOM without an extension
    write_dicom(path, clip.frames[:3], 30.0, patient_name="DOE^JOHN", patient_id="X42",
                region_box=clip.box, InstitutionName="St Elsewhere", PatientBirthDate=None)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert (str(ds.PatientName), ds.PatientID, ds.InstitutionName) == ("DOE^JOHN", "X42", "St Elsewhere")
    assert "PatientBirthDate" not in ds
    reg = ds.SequenceOfUltrasoundRegions[0]
    x0, y0, x1, y1 = clip.box
    assert (reg.RegionLocationMinX0, reg.RegionLocationMinY0, reg.RegionLocationMaxX1, reg.RegionLocationMaxY1) == (
        x0, y0, x1 - 1, y1 - 1)
    info = probe(path)
    assert (info.format, info.n_frames, info.fps) == ("dicom", 3, 30.0)
    with pytest.raises(ValueError, match="keyword"):
        write_dicom(tmp_path / "bad.dcm", clip.frames[:2], 15.0, NotADicomKeyword=1)


def test_write_phantom_dicom_marks_burnt_in_text(tmp_path):
    import pydicom

    write_phantom(tmp_path / "ov.dcm", overlays=True, width=128, height=112, n_frames=2)
    write_phantom(tmp_path / "plain.dcm", overlays=False, width=128, height=112, n_frames=2)
    assert pydicom.dcmread(tmp_path / "ov.dcm", stop_before_pixels=True).BurnedInAnnotation == "YES"
    assert pydicom.dcmread(tmp_path / "plain.dcm", stop_before_pixels=True).BurnedInAnnotation == "NO"


# --------------------------------------------------------------------------------------------- errors


def test_write_phantom_refuses_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="unsupported extension"):
        write_phantom(tmp_path / "clip.xyz")


def test_truncated_and_garbage_files_give_one_line_errors(tmp_path, clip):
    path = tmp_path / "clip.mp4"
    write_video(path, clip.frames, FPS)
    (tmp_path / "garbage.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(MediaError) as e:
        open_media(tmp_path / "garbage.mp4")
    assert "\n" not in str(e.value) and str(tmp_path / "garbage.mp4") in str(e.value)
    dcm = tmp_path / "cine.dcm"
    write_dicom(dcm, clip.frames[:2], FPS)
    (tmp_path / "cut.dcm").write_bytes(dcm.read_bytes()[:2000])  # header intact, pixels cut off
    with pytest.raises(MediaError) as e:
        read_frames(tmp_path / "cut.dcm")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name,opts", [("h264.mp4", {}), ("gop12.mpg", {"codec": "mpeg2video"}),
                                       ("mjpeg.avi", {}), ("anim.gif", {}), ("still.png", {}),
                                       ("cine.dcm", {})])
def test_frames_at_gives_the_frames_that_decoding_from_the_start_gives(tmp_path, name, opts):
    """Key frames are fetched by their times (a video seeks to the key frame before each): the same
    images, indices and times as the sequential decode, whichever frames are asked for."""
    path = tmp_path / name
    write_phantom(path, label="covid", n_frames=40, fps=10.0, width=160, height=120, seed=3, **opts)
    with open_media(path) as r:
        every = {f.index: f for f in r.frames()}
    rng = np.random.default_rng(0)
    for want in ([0], [len(every) - 1], sorted(rng.choice(len(every), min(3, len(every)), replace=False)),
                 [1, 13, 14, 38] if len(every) > 38 else [0]):
        with open_media(path) as r:
            got = list(r.frames_at({int(i): every[int(i)].time_s for i in want}))
        assert [g.index for g in got] == [int(i) for i in want]
        for g in got:
            assert g.time_s == every[g.index].time_s and np.array_equal(g.image, every[g.index].image)
            assert g.image.ndim == 3  # RGB, as a key frame is shown
