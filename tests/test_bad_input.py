"""Bad input never crashes: one line naming the file and the reason, non-zero exit for a single
file, and in `data index` the rest is indexed and the failures listed."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from pocovid.media import MediaError, open_media, read_frames
from pocovid.phantom import make_phantom, write_dicom, write_video

POCOVID = [sys.executable, "-m", "pocovid.cli"]


def run(*args, cwd=None):
    return subprocess.run([*POCOVID, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def frames():
    return make_phantom(label="covid", width=96, height=96, n_frames=6, seed=3).frames


def _bad_files(d: Path, frames) -> dict[str, Path]:
    """Every kind of broken input the brief names, each with the reason we expect to see."""
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    (p := d / "empty.mp4").write_bytes(b"")
    files["empty"] = p
    good = d / "whole.mp4"
    write_video(good, frames, 10)
    (p := d / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    files["truncated"] = p
    good.unlink()
    (p := d / "notes.mp4").write_text("these are my notes, not a video\n" * 20)
    files["text"] = p
    (p := d / "clip.xyz").write_bytes(b"\x00" * 100)
    files["unknown"] = p
    ds = pydicom.dcmread(_dicom(d / "tmp.dcm", frames))
    del ds.PixelData
    ds.save_as(p := d / "nopixels.dcm")
    (d / "tmp.dcm").unlink()
    files["dicom_no_pixels"] = p
    return files


def _dicom(path, frames):
    write_dicom(path, frames, 10)
    return path


EXPECTED = {
    "empty": "empty file",
    "truncated": "not a readable video",
    "text": "not a readable video",
    "unknown": "unsupported file type",
    "dicom_no_pixels": "no pixel data",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_single_bad_file_one_line_error_nonzero_exit(tmp_path, frames, case):
    path = _bad_files(tmp_path, frames)[case]
    r = run("info", path)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(path) in lines[0] and EXPECTED[case] in lines[0]
    assert "Traceback" not in r.stderr


def test_truncated_video_gives_error_or_the_frames_before_the_cut(tmp_path, frames):
    # An mp4 cut after its index still plays up to the cut: that is kept, never an exception.
    good = tmp_path / "whole.avi"
    write_video(good, frames, 10)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.6)])
    try:
        got = read_frames(cut)
    except MediaError as e:
        assert str(cut) in str(e) and "\n" not in str(e)
    else:
        assert 0 < len(got) < len(frames)


def test_unreadable_permissions(tmp_path, frames, monkeypatch):
    path = tmp_path / "locked.mp4"
    write_video(path, frames, 10)
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads anything: pretend the permission check fails, as it would for a user
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == path else real(p, m))
    with pytest.raises(MediaError, match="permission denied") as e:
        open_media(path)
    assert str(path) in str(e.value)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(MediaError, match="is a folder"):
        open_media(tmp_path)
    r = run("info", tmp_path / "nope.mp4")
    assert r.returncode == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("mode", ["I;16", "L", "RGBA", "LA", "P"])
def test_unusual_image_modes_read_as_rgb8(tmp_path, mode):
    a = (np.linspace(0, 1, 64 * 48).reshape(48, 64))
    if mode == "I;16":
        im = Image.fromarray((a * 65535).astype(np.uint16))
    else:
        im = Image.fromarray((a * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    im.save(path)
    (f,) = read_frames(path)
    assert f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8
    assert f.image.max() > 200 and f.image.min() < 30  # the full range survives, 16-bit included


def test_one_frame_gif_is_a_clip_of_one(tmp_path, frames):
    path = tmp_path / "one.gif"
    write_video(path, frames[:1], 10)
    assert len(read_frames(path)) == 1


def test_index_goes_on_and_lists_failures(tmp_path, frames):
    root = tmp_path / "ds"
    (root / "covid").mkdir(parents=True)
    write_video(root / "covid" / "Cov_good.mp4", frames, 10)
    bad = _bad_files(root / "covid", frames)
    r = run("data", "index", root, "--out", tmp_path / "index.csv")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "Traceback" not in out
    for case, path in bad.items():
        assert path.name in out, f"{case} not listed"
    rows = (tmp_path / "index.csv").read_text().splitlines()
    assert len(rows) == 2 and "Cov_good.mp4" in rows[1]  # header + the one good clip
    strict = run("data", "index", root, "--strict")
    assert strict.returncode != 0


def test_folder_with_no_media(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.txt").write_text("nothing here")
    r = run("data", "index", tmp_path / "empty")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "empty" in r.stderr and "Traceback" not in r.stderr
