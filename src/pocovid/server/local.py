"""Running `pocovid serve` as a real process on this machine (loopback only): for tests, benchmarks
and scripts that need a server over a socket rather than in-process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from pocovid.errors import PocovidError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir, model, port: int | None = None, *extra: str, env: dict | None = None,
                 timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """`pocovid serve` on 127.0.0.1; returns (process, base URL) once /api/health answers.
    Raises PocovidError with the server's last output if it exits or does not come up in time."""
    import httpx

    port = port or free_port()
    cmd = [sys.executable, "-m", "pocovid.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data_dir), "--model", str(model), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise PocovidError(f"the server exited: {proc.stdout.read().decode(errors='replace')[-2000:]}")
        try:
            if httpx.get(base + "/api/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise PocovidError(f"the server did not start in {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Ask for a clean shutdown (Ctrl-C), then kill after 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
