"""Settings of the web service (what `pocovid serve` passes to `create_app`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_ENV = "POCOVID_API_TOKEN"
DATA_DIR_ENV = "POCOVID_DATA_DIR"


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
    token:             bearer token for deletion and the contributions admin endpoints; None:
                       those endpoints answer loopback clients only (see docs/server.md)
    cors_origins:      origins allowed by CORS; empty (the default): CORS off
    overlay_video:     ask the analysis for the heatmap overlay video
    max_attempts:      a job cut off by a stop is re-run on start until it has been started this
                       many times, then marked failed
    """

    data_dir: Path = field(default_factory=default_data_dir)
    model: str = "default"
    workers: int = 1
    max_upload_mb: float = 200.0
    token: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    overlay_video: bool = True
    max_attempts: int = 2

    def __post_init__(self):
        self.data_dir = Path(self.data_dir)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if self.token is not None and not self.token.strip():
            self.token = None
        if "*" in self.cors_origins:
            raise ValueError("CORS origins must be named explicitly ('*' is not accepted)")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, **kw) -> "ServerConfig":
        """Settings with the token taken from $POCOVID_API_TOKEN unless given."""
        kw.setdefault("token", os.environ.get(TOKEN_ENV) or None)
        return cls(**kw)
