"""No file can crash, hang or exhaust the readers (issue 9): a corpus of bombs, truncations, header
lies, bad DICOMs and odd names (`pocovid.testing`), mutation fuzzing of every format, and the
real `pocovid analyze` over the corpus. Every failure is a one-line `MediaError` naming the file and
the reason; peak memory per file stays under 1.5 GB and no file takes a minute.

The readers run in a child process under an address-space limit, so that a regression cannot take
the machine down; the child measures each file's own peak memory (VmHWM reset between files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pocovid.media import MediaError, MediaLimits, display_path, open_media, read_frames, sample_indices
from pocovid.testing import write_bad_corpus

GB = 2**30
PEAK_LIMIT = 1.5 * GB
CHILD_AS = 4 * GB  # address space of the reader child: a bomb fails there, not on the machine
LINUX = sys.platform.startswith("linux")


def _child(args, as_limit=CHILD_AS, timeout=300) -> subprocess.CompletedProcess:
    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(args, capture_output=True, timeout=timeout, preexec_fn=limit if LINUX else None, env=env)


def _rows(r: subprocess.CompletedProcess) -> list[dict]:
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    return [json.loads(line) for line in r.stdout.decode().splitlines() if line.startswith("{")]


def _check_rows(rows: list[dict]) -> None:
    crashes = [r for r in rows if r["outcome"] == "crash"]
    assert not crashes, "\n".join(f"{r['path']}: {r['message']}" for r in crashes[:10])
    for r in rows:
        if r["outcome"] == "error":
            assert "\n" not in r["message"] and "\r" not in r["message"], r
            name = display_path(r["path"])
            assert r["message"].startswith(name + ": ") and len(r["message"]) > len(name) + 3, r
        assert r["seconds"] < 60, r
        if LINUX:
            assert r["peak_rss"] < PEAK_LIMIT, r


# ------------------------------------------------------------------------------------ the corpus

EXPECTED = {  # case -> "ok" or a fragment of the one-line reason
    "bomb_gif_screen": "16000x16000 pixels per frame, over the limit",
    "bomb_png_13000": "13000x13000 pixels per frame, over the limit",
    "bomb_rle_30000": "30000x30000 pixels per frame, over the limit",
    "bomb_native_lie": "over the limit",
    "bomb_avi_frames": "ok",  # 200,000,000 frames claimed, 4 there: the 4 are read
    "bomb_dicom_frames": "ok",  # 10^9 frames claimed, 2 there
    "trunc_dicom_95": "ok",  # the whole frames before the cut
    "trunc_dicom_jpeg_90": "ok",
    "trunc_dicom_header": "no pixel data",
    "trunc_mp4_half": "not a readable video",
    "trunc_mp4_head": "not a readable video",
    "trunc_png": "not a readable image",
    "dicm_zeros": "not a DICOM file",
    "dicm_at_start": "not a DICOM file",
    "dicm_ff": "not a DICOM file",
    "dicom_short_pixels": "no whole frame",
    "dicom_zero_rows": "no size",
    "text_as": "not a",
    "one_pixel": "ok",
    "one_pixel_gif": "ok",
    "one_pixel_dcm": "ok",
    "one_column": "ok",
    "empty": "empty file",
    "fifo": "not a regular file",
    "dev_zero": "not a regular file",
    "folder": "is a folder",
    "name_not_utf8": "ok",
    "name_newline": "ok",
    "name_unicode": "ok",
    "name_dash": "ok",
}


#: what `analyze` says, where it differs from the readers: a folder given to `analyze` stands for the
#: recordings under it (none in the corpus's: it adds nothing to the batch; given alone, it is one
#: error line, test_cli_analyze_of_a_folder_without_recordings)
CLI_EXPECTED = dict(EXPECTED, folder="ok")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    d = tmp_path_factory.mktemp("corpus")
    return d, write_bad_corpus(d)


def _case(key: str) -> str:
    return key if key in EXPECTED else key.rsplit("_", 1)[0] if key.rsplit("_", 1)[0] in EXPECTED else key


def test_every_corpus_file_reads_or_fails_in_one_line(tmp_path):
    """Each corpus file read the way `analyze` reads it (facts, region, every frame twice), in a
    child under a memory limit: the expected outcome, bounded memory and time."""
    code = ("import json, sys\nfrom pocovid.testing import write_bad_corpus, check_files, read_like_analyze\n"
            "files = write_bad_corpus(sys.argv[1])\n"
            "for key, row in zip(files, check_files(list(files.values()), read_like_analyze)):\n"
            "    print(json.dumps(dict(row, case=key)))\n")
    rows = _rows(_child([sys.executable, "-c", code, str(tmp_path / "c")]))
    _check_rows(rows)
    cases = {r["case"]: r for r in rows}
    assert set(EXPECTED) - {"fifo", "dev_zero"} <= {_case(k) for k in cases}
    for key, r in cases.items():
        want = EXPECTED[_case(key)] if _case(key) in EXPECTED else "ok"
        if want == "ok":
            assert r["outcome"] == "ok", r
        else:
            assert r["outcome"] == "error" and want in r["message"], r
    assert cases["bomb_avi_frames"]["frames"] == 4 and cases["bomb_dicom_frames"]["frames"] == 2
    assert 0 < cases["trunc_dicom_95"]["frames"] < 20 and 0 < cases["trunc_dicom_jpeg_90"]["frames"] < 20
    assert cases["big_h264_8k"]["outcome"] == "ok"  # legal 8K: read within the memory bound


# ------------------------------------------------------------------------------------ mutations


def test_mutations_of_every_format_never_crash(tmp_path):
    """250 mutations of each format's seed file (13 formats): errors only as one-line MediaErrors."""
    rows = _rows(_child([sys.executable, "-m", "pocovid.testing", "fuzz", str(tmp_path), "250", "0"]))
    assert len(rows) == 250 * 13
    _check_rows(rows)
    by_format = {}
    for r in rows:
        by_format.setdefault(r["format"], set()).add(r["outcome"])
    assert all(o == {"ok", "error"} for o in by_format.values()), by_format  # the mutations do bite


# ------------------------------------------------------------------------------------ the real CLI

_RUSAGE = ("import resource, subprocess, sys\n"
           "r = subprocess.run([sys.executable, '-m', 'pocovid.cli', 'analyze', *sys.argv[1:]])\n"
           "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
           "print('PEAK', peak, r.returncode, file=sys.stderr)\n")


def _analyze(files, out: Path, timeout=600):
    """`pocovid analyze FILES --model default` in a child; (exit code, stderr lines, peak RSS)."""
    args = [sys.executable, "-c", _RUSAGE, *[os.fsencode(f) for f in files], "--model", "default",
            "--out", str(out), "--quiet"]
    r = _child(args, as_limit=16 * GB, timeout=timeout)  # torch reserves address space freely
    lines = r.stderr.decode("utf-8", "backslashreplace").splitlines()
    peak = [ln for ln in lines if ln.startswith("PEAK ")]
    assert peak, lines[-20:]
    _, rss, rc = peak[-1].split()
    assert int(rc) == r.returncode or r.returncode == 0
    return int(rc), [ln for ln in lines if not ln.startswith("PEAK ")], int(rss)


def test_cli_analyze_over_the_corpus(corpus, tmp_path):
    d, files = corpus
    rc, lines, peak = _analyze(list(files.values()), tmp_path / "out")
    text = "\n".join(lines)
    assert rc in (0, 1), text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [ln for ln in lines if ln.startswith("error:")]
    failing = {k: p for k, p in files.items() if CLI_EXPECTED.get(_case(k), "ok") != "ok"}
    for key, p in failing.items():
        mine = [ln for ln in errors if ln.startswith(f"error: {display_path(p)}: ")]
        assert len(mine) == 1 and CLI_EXPECTED[_case(key)] in mine[0], (key, errors)
    assert len(errors) == len(failing), errors
    assert not [ln for ln in errors if display_path(files["folder"]) in ln], errors
    if LINUX:
        assert peak < PEAK_LIMIT, f"pocovid analyze peaked at {peak / GB:.2f} GB"


def test_cli_analyze_of_a_folder_without_recordings(corpus, tmp_path):
    """`analyze FOLDER` analyses the recordings under it; a folder with none is one error line
    naming it, exit 1, no traceback."""
    _, files = corpus
    rc, lines, _ = _analyze([files["folder"]], tmp_path / "out")
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert rc == 1 and "Traceback" not in "\n".join(lines), lines[-20:]
    assert errors == [f"error: {files['folder']}: no recordings found"], lines[-20:]


# ------------------------------------------------------------------------------------ limits, directly


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    from pocovid.phantom import make_phantom, write_video

    p = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(p, make_phantom(label="covid", width=64, height=48, n_frames=10, fps=10.0, seed=1).frames, 10.0)
    return p


@pytest.mark.parametrize("limits,reason", [
    (MediaLimits(max_frame_pixels=64 * 48 - 1), "64x48 pixels per frame, over the limit"),
    (MediaLimits(max_frames=9), "more than 9 frames"),
    (MediaLimits(max_duration_s=0.5), "over the limit of 0.5 s"),
])
def test_limits_refuse_before_decoding(small_clip, limits, reason):
    with pytest.raises(MediaError, match=reason) as e:
        read_frames(small_clip, limits=limits)
    assert str(e.value).startswith(f"{small_clip}: ") and "\n" not in str(e.value)
    assert len(read_frames(small_clip, limits=MediaLimits(max_frame_pixels=64 * 48, max_frames=10))) == 10


def test_limits_from_the_environment(monkeypatch, small_clip):
    monkeypatch.setenv("POCOVID_MAX_FRAMES", "5")
    assert MediaLimits.from_env() == MediaLimits(max_frames=5)
    with pytest.raises(MediaError, match="more than 5 frames"):
        open_media(small_clip)
    monkeypatch.setenv("POCOVID_MAX_FRAMES", "lots")
    with pytest.raises(ValueError, match="POCOVID_MAX_FRAMES"):
        MediaLimits.from_env()
    with pytest.raises(ValueError, match="positive"):
        MediaLimits(max_frames=0)


def test_sample_indices_never_builds_the_header_range():
    idx = sample_indices(200_000_000, 30.0, 3.0, 30)
    assert len(idx) == 30 and idx[0] == 0 and idx[-1] <= 200_000_000 - 1
    assert sample_indices(200_000_000, 30.0, None, 4) == [0, 66666666, 133333333, 199999999]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_and_devices_are_not_regular_files(tmp_path):
    os.mkfifo(fifo := tmp_path / "scan.mp4")
    with pytest.raises(MediaError, match="not a regular file"):
        open_media(fifo)  # returns at once: a FIFO is never opened
    if os.path.exists("/dev/zero"):
        with pytest.raises(MediaError, match="not a regular file"):
            open_media("/dev/zero")


def test_error_names_an_odd_file_on_one_line(tmp_path):
    p = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"bad\n\xff.png")))
    p.write_bytes(b"nope")
    with pytest.raises(MediaError) as e:
        open_media(p)
    msg = str(e.value)
    assert "\n" not in msg and "\\n" in msg and "\\xff" in msg and msg.endswith("(unknown or corrupt format)")
    msg.encode("utf-8")  # printable anywhere: no lone surrogates


def test_truncated_dicom_cine_keeps_the_frames_before_the_cut(tmp_path):
    from pocovid.phantom import make_phantom, write_dicom

    frames = make_phantom(label="covid", width=64, height=48, n_frames=20, fps=10.0, seed=2).frames
    for compressed in (False, True):
        whole = tmp_path / f"whole{int(compressed)}.dcm"
        write_dicom(whole, frames, 10.0, compressed=compressed)
        cut = tmp_path / f"cut{int(compressed)}.dcm"
        cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.95)])
        got = read_frames(cut)
        assert 15 <= len(got) < 20
        ref = read_frames(whole)
        for a, b in zip(got, ref):  # the same pixels as in the whole file
            assert a.index == b.index and np.array_equal(a.image, b.image)


def test_blend_takes_tiny_images():
    from pocovid.analysis.explain import blend

    for shape in [(1, 1), (1, 3), (3, 1), (0, 4)]:
        out = blend(np.zeros((*shape, 3), np.uint8), np.full(shape, 0.9, np.float32))
        assert out.shape == (*shape, 3) and out.dtype == np.uint8
