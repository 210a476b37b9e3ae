"""Settings of the web service (what `pocovid serve` passes to `create_app`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_ENV = "POCOVID_API_TOKEN"
DATA_DIR_ENV = "POCOVID_DATA_DIR"
#: Host names the service always answers to (the Host header); `allowed_hosts` adds more.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
#: Addresses `pocovid serve` binds without a token (this machine only).
LOOPBACK_ADDRESSES = ("127.0.0.1", "localhost", "::1")
MIN_TOKEN_LENGTH = 16


def default_data_dir() -> Path:
    """$POCOVID_DATA_DIR, else $XDG_DATA_HOME/pocovid/server, else ~/.local/share/pocovid/server."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pocovid" / "server"


@dataclass
class ServerConfig:
    """data_dir:       the SQLite file, uploads and artifacts live here (created)
    model:             'default' (the bundled model) or a model file; loaded once, on first use
    workers:           analyses run at the same time (a bounded pool off the request path)
    max_upload_mb:     upload size limit, enforced while the body streams in (413 past it)
    token:             bearer token for deletion and the contributions admin endpoints (at least
                       MIN_TOKEN_LENGTH characters); None: those endpoints answer nobody
    allowed_hosts:     Host header values answered besides localhost, 127.0.0.1 and [::1] (the
                       name a reverse proxy passes on); anything else gets 400 (DNS rebinding)
    cors_origins:      origins allowed by CORS; empty (the default): CORS off
    overlay_video:     ask the analysis for the heatmap overlay video
    runtime:           what runs the frame pass (`pocovid.models.runtime.CHOICES`): 'auto' (the
                       fastest installed fp32 runtime), torch, onnx, openvino, or openvino-bf16 (by
                       name only: bfloat16 where the CPU has it; its result says so)
    max_attempts:      a job found running at start (the server was killed, or its analysis took it
                       down) is re-run until it has been started this many times, then marked failed
    job_memory_mb:     memory limit of one analysis (its own process, RLIMIT_DATA); past it the job
                       fails, the server goes on; 0: no limit
    min_free_mb:       uploads are refused (507) when the data folder's disk has less free space
                       than this plus the upload
    db_timeout_s:      how long a database call waits for a lock held by another connection before
                       the request gets 503
    """

    data_dir: Path = field(default_factory=default_data_dir)
    model: str = "default"
    workers: int = 1
    max_upload_mb: float = 200.0
    token: str | None = None
    allowed_hosts: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)
    overlay_video: bool = True
    runtime: str = "auto"
    max_attempts: int = 1
    job_memory_mb: float = 3072.0
    min_free_mb: float = 1024.0
    db_timeout_s: float = 5.0

    def __post_init__(self):
        self.data_dir = Path(self.data_dir)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if self.token is not None and not self.token.strip():
            self.token = None
        if self.token is not None and len(self.token.strip()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the API token must have at least {MIN_TOKEN_LENGTH} characters "
                             f"(got {len(self.token.strip())}); e.g. python -c 'import secrets; "
                             "print(secrets.token_urlsafe(24))'")
        if self.token is not None:
            self.token = self.token.strip()
        if "*" in self.cors_origins:
            raise ValueError("CORS origins must be named explicitly ('*' is not accepted)")
        if any(not h or "*" in h or "/" in h for h in self.allowed_hosts):
            raise ValueError(f"allowed hosts must be plain host names or addresses, got {self.allowed_hosts}")
        from pocovid.models.runtime import CHOICES

        if self.runtime not in CHOICES:
            raise ValueError(f"unknown runtime {self.runtime!r} (use {', '.join(CHOICES)})")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("job_memory_mb", "min_free_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.db_timeout_s > 0:
            raise ValueError(f"db_timeout_s must be > 0, got {self.db_timeout_s}")

    @property
    def hosts(self) -> list[str]:
        """Every Host header value answered (lower case; IPv6 addresses in brackets)."""
        extra = [f"[{h}]" if ":" in h and not h.startswith("[") else h for h in self.allowed_hosts]
        return sorted({h.lower() for h in (*LOOPBACK_HOSTS, *extra)})

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def min_free_bytes(self) -> int:
        return int(self.min_free_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, **kw) -> "ServerConfig":
        """Settings with the token taken from $POCOVID_API_TOKEN unless given."""
        kw.setdefault("token", os.environ.get(TOKEN_ENV) or None)
        return cls(**kw)
