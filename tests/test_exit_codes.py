"""Exit codes are part of the interface: a hospital pipeline that checks them must never see a
crash. `pocovid analyze` used to abort with 134 at interpreter exit (a background thread still
alive) although its outputs were written; these run the real CLI in fresh processes."""

import os
import subprocess
import sys
from collections import Counter

import pytest

from pocovid.phantom import write_phantom

RUNS = 8  # was 20; fewer runs to keep the suite within its 10-minute budget


def _analyze(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pocovid.cli", "analyze", *map(str, args), "--quiet"],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_analyze_exits_0_on_an_image_and_1_on_a_missing_file_every_time(tmp_path):
    image = tmp_path / "lung.png"
    write_phantom(image, label="covid", seed=1)
    ok = Counter(_analyze(image, "--out", tmp_path / f"o{i}").returncode for i in range(RUNS))
    missing = Counter(_analyze(tmp_path / "nope.mp4", "--out", tmp_path / "m").returncode for _ in range(RUNS))
    assert ok == Counter({0: RUNS}), ok
    assert missing == Counter({1: RUNS}), missing
    assert (tmp_path / "o0" / "lung" / "result.json").is_file()


def test_a_bad_file_in_a_batch_exits_1_with_one_line(tmp_path):
    write_phantom(tmp_path / "good.png", label="regular", seed=2)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    r = _analyze(tmp_path / "good.png", tmp_path / "bad.mp4", "--out", tmp_path / "o")
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "bad.mp4" in errors[0] and "Traceback" not in r.stderr
    assert (tmp_path / "o" / "good" / "result.json").is_file()


def test_no_daemon_thread_is_left_running_when_a_batch_ends(tmp_path):
    """The abort above came from a daemon thread (matplotlib's import) still running when a batch's
    last file failed at once; the interpreter killed it mid-import. Checked at exit, whatever the
    timing: every thread pocovid started is finished or is one the interpreter waits for."""
    write_phantom(tmp_path / "good.png", label="regular", seed=2)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    code = ("import atexit, sys, threading\n"
            "atexit.register(lambda: print('DAEMONS', [t.name for t in threading.enumerate() if t.daemon "
            "and t.is_alive()], file=sys.stderr))\n"
            f"sys.argv = ['pocovid', 'analyze', {str(tmp_path / 'good.png')!r}, {str(tmp_path / 'bad.mp4')!r}, "
            f"'--out', {str(tmp_path / 'o')!r}, '--quiet']\n"
            "from pocovid.cli import main\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 1, r.stderr
    assert "DAEMONS []" in r.stderr, r.stderr
