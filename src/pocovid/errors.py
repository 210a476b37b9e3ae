"""Errors a user can act on. `str()` is always one line: what failed and why."""


class PocovidError(Exception):
    """Base for every error the CLI reports as one line, without a traceback."""


class ModelError(PocovidError):
    """A model cannot be built or loaded (unknown name, missing weights, bad model file)."""
