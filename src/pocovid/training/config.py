"""Training configuration: plain data, saved with every run and model file.

Defaults are written once, here. `TrainConfig.from_dict` (a model file's `training_config`, command-
line options) and `TrainConfig.from_file` (TOML, or YAML when PyYAML is installed) take any field,
check its type and value, and name the key (and the file) of a bad one in a one-line `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pocovid.data.findings import FINDING_NAMES
from pocovid.data.labels import CLASSES, PROBES, parse_classes, parse_probes
from pocovid.errors import PocovidError
from pocovid.evaluation.metrics import AGGREGATION_METHODS
from pocovid.models import list_models
from pocovid.models.exam import EXAM_METHODS
from pocovid.training.augment import AugmentConfig
from pocovid.training.fit import PRECISIONS
from pocovid.training.supervision import OUTSIDE_CLASSES, WEAK_LABEL_RULES


class ConfigError(PocovidError):
    """A bad configuration value. `key` names the field ('augment.vflip' for a nested one), `problem`
    says what is wrong with it, `source` is the file it came from (None: not from a file)."""

    def __init__(self, key: str, problem: str, source: str | os.PathLike | None = None):
        self.key, self.problem, self.source = key, problem, source
        super().__init__((f"{source}: " if source else "") + f"{key}: {problem}")


@dataclass
class TrainConfig:
    backbone: str = "efficientnet_lite0"
    classes: tuple[str, ...] = ("covid", "pneumonia", "regular")
    probe: str | None = "convex"  # None ('all' in a file or option): every probe
    # frames: sampled per clip, cropped to the scan region, grey, resized to the backbone's size
    rate_hz: float | None = 3.0  # None (0 in a file or option): every frame
    max_frames: int = 30
    crop: bool = True
    size: int | None = None  # None: the backbone's input size
    # backbone: stages [0, cut) used; [0, n_frozen) frozen and cached once per frame and augmentation
    cut: int | None = None  # None: the backbone's default
    n_frozen: int | None = None  # None: = cut (only the adapter and head train)
    adapter_channels: int | None = 128  # None or 0: no adapter
    dropout: float = 0.3
    spatial_dropout: float = 0.2
    # optimisation
    n_heads: int = 5  # ensemble members sharing the frozen trunk (uncertainty from their disagreement)
    epochs: int = 30  # at most; early stopping on an inner validation split of patients
    patience: int = 6
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    # head training arithmetic: auto = bfloat16 where the CPU has it natively (AMX or AVX512-BF16:
    # ~2x faster there, emulated and slower elsewhere), float32 otherwise and whenever backbone stages
    # train (`n_frozen` < `cut`: bfloat16 depthwise convolutions train slower); predictions are float32
    precision: str = "auto"
    label_smoothing: float = 0.1
    val_fraction: float = 0.2  # share of training patients held out for early stopping
    refit: bool = True  # then retrain on all training patients for the epochs early stopping chose
    n_aug: int = 5  # cached augmented copies per frame (plus the clean one)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    aggregation: str = "mean"  # frame probabilities -> clip
    # multi-task heads (docs/model_card.md#multi-task-heads): on the same pooled features as the diagnosis
    findings: tuple[str, ...] = FINDING_NAMES  # () : no findings head; one with no yes or no no is dropped
    severity_levels: int = 4  # ordinal severity head, Soldati 0-3; 0: none (also when no severity is known)
    findings_weight: float = 1.0  # loss weight of the findings' BCE (diagnosis: 1)
    severity_weight: float = 1.0  # loss weight of the ordinal severity loss
    # patient-level labels -> diagnosis targets: none, abnormal_only, all. none: better on every
    # diagnosis row but specificity, both datasets, patient and source folds (docs/model_card.md)
    weak_labels: str = "none"
    outside_classes: str = "targets"  # recordings of other classes: targets (findings/severity only), drop
    # clips -> exam: auto (best out-of-fold log loss), mean, max, noisy_or, logistic, logistic_signs
    exam_method: str = "auto"
    seed: int = 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        d["findings"] = list(self.findings)
        d["augment"]["gamma"] = list(self.augment.gamma)
        return d

    def to_toml(self) -> str:
        """The config as a TOML file that `from_file` reads back to an equal config."""
        def line(key: str, v) -> str:
            v = _NONE_IN_FILE.get(key, v) if v is None else v
            return "" if v is None else f"{key.rsplit('.', 1)[-1]} = {json.dumps(v)}\n"

        d = self.to_dict()
        aug = d.pop("augment")
        return ("".join(line(k, v) for k, v in d.items()) + "\n[augment]\n"
                + "".join(line(f"augment.{k}", v) for k, v in aug.items()))

    @classmethod
    def from_dict(cls, d: Mapping, *, base: TrainConfig | None = None,
                  source: str | os.PathLike | None = None) -> TrainConfig:
        """`base` (default: the defaults) with the fields in `d` replaced, checked (`check`).

        Every key must be a field; every value of its field's type: an int for a float, a list (or a
        comma-separated string) for `classes`, a table for `augment` (its own fields, the rest kept).
        `probe` 'all' means every probe and `rate_hz` 0 every frame. Raises `ConfigError` naming the
        key and `source` (the file the values came from)."""
        try:
            cfg = _replace_checked(base or cls(), d, "")
            cfg.check()
        except ConfigError as e:
            raise ConfigError(e.key, e.problem, source) from None
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, base: TrainConfig | None = None) -> TrainConfig:
        """A config from a TOML file (`.toml`), or YAML (`.yaml`/`.yml`) when PyYAML is installed:
        top-level keys are the fields, `[augment]` the augmentation's. See `from_dict`."""
        return cls.from_dict(read_config_file(path), base=base, source=path)

    def check(self) -> None:
        """Raise `ConfigError` naming the first field whose value cannot train."""
        _must(self.backbone in list_models(), "backbone", f"unknown backbone {self.backbone!r} "
              f"(known: {', '.join(list_models())})")
        unknown = [c for c in self.classes if c not in CLASSES]
        _must(not unknown, "classes",
              f"unknown class(es) {', '.join(map(repr, unknown))} (known: {', '.join(CLASSES)})")
        _must(len(set(self.classes)) >= 2, "classes", f"at least two classes are needed, got {list(self.classes)}")
        _must(self.probe is None or self.probe in PROBES, "probe",
              f"unknown probe {self.probe!r} (known: {', '.join(PROBES)}, or all)")
        _must(self.rate_hz is None or self.rate_hz > 0, "rate_hz", f"must be > 0 (0: every frame), got {self.rate_hz}")
        for name, low in (("max_frames", 1), ("size", 16), ("cut", 1), ("n_frozen", 0), ("adapter_channels", 0),
                          ("n_heads", 1), ("epochs", 1), ("patience", 1), ("batch_size", 1), ("n_aug", 0)):
            v = getattr(self, name)
            _must(v is None or v >= low, name, f"must be >= {low}, got {v}")
        for name in ("dropout", "spatial_dropout", "label_smoothing", "val_fraction"):
            v = getattr(self, name)
            _must(0 <= v < 1, name, f"must be in [0, 1), got {v}")
        bad = [f for f in self.findings if f not in FINDING_NAMES]
        _must(not bad and len(set(self.findings)) == len(self.findings), "findings",
              f"unknown or repeated finding(s) {bad or list(self.findings)} (known: {', '.join(FINDING_NAMES)})")
        _must(self.severity_levels == 0 or self.severity_levels >= 2, "severity_levels",
              f"must be 0 (no head) or >= 2, got {self.severity_levels}")
        for name in ("findings_weight", "severity_weight"):
            _must(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        for name, known in (("weak_labels", WEAK_LABEL_RULES), ("outside_classes", OUTSIDE_CLASSES),
                            ("exam_method", ("auto", *EXAM_METHODS)), ("precision", PRECISIONS)):
            _must(getattr(self, name) in known, name,
                  f"unknown value {getattr(self, name)!r} (known: {', '.join(known)})")
        _must(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _must(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _must(self.aggregation in AGGREGATION_METHODS, "aggregation",
              f"unknown method {self.aggregation!r} (known: {', '.join(AGGREGATION_METHODS)})")
        a = self.augment
        for name in ("rotate_deg", "shift", "scale", "gain", "speckle", "sector_jitter_px"):
            _must(getattr(a, name) >= 0, f"augment.{name}", f"must be >= 0, got {getattr(a, name)}")
        _must(0 <= a.blur_prob <= 1, "augment.blur_prob", f"must be in [0, 1], got {a.blur_prob}")
        _must(0 < a.gamma[0] <= a.gamma[1], "augment.gamma", f"must be [low, high] with 0 < low <= high, "
              f"got {list(a.gamma)}")

    def frames_key(self) -> dict:
        """What decides the frames extracted: runs that agree on it share the frame cache."""
        # the backbone decides the default input size
        return {k: getattr(self, k) for k in ("classes", "probe", "rate_hz", "max_frames", "crop", "size", "backbone")}

    def trunk_key(self) -> dict:
        """What decides the cached trunk features."""
        return self.frames_key() | {"cut": self.cut, "n_frozen": self.n_frozen,
                                    "n_aug": self.n_aug, "augment": self.to_dict()["augment"], "seed": self.seed}


def read_config_file(path: str | os.PathLike) -> dict:
    """The mapping in a TOML file (or a YAML one when PyYAML is installed); one-line `PocovidError`
    when it cannot be read or parsed."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise PocovidError(f"{path}: unsupported config file type {suffix or '(none)'!r} (use .toml"
                           + (" or .yaml)" if _yaml() else ")"))
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PocovidError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PocovidError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    if suffix == ".toml":
        tomllib = _toml()
        if tomllib is None:
            raise PocovidError(f"{path}: TOML needs Python 3.11+ (tomllib) or the tomli package")
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise PocovidError(f"{path}: not valid TOML ({e})") from None
    else:
        yaml = _yaml()
        if yaml is None:
            raise PocovidError(f"{path}: YAML needs PyYAML, which is not installed (use a .toml file)")
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PocovidError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        d = {} if d is None else d
    if not isinstance(d, dict):
        raise PocovidError(f"{path}: expected a mapping of config keys, got {type(d).__name__}")
    return d


def _toml():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            return None
    return tomllib


def _yaml():
    try:
        import yaml
    except ImportError:
        return None
    return yaml


def _must(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


_NONE_IN_FILE = {"probe": "all", "rate_hz": 0, "adapter_channels": 0}  # TOML has no null
_SPECIAL = {  # a field's value in a file or option -> the field's value
    "probe": lambda v: None if isinstance(v, str) and v.strip().lower() == "all" else v,
    "rate_hz": lambda v: None if v == 0 and not isinstance(v, bool) else v,
    "adapter_channels": lambda v: None if v == 0 and not isinstance(v, bool) else v,
    "findings": lambda v: () if isinstance(v, str) and v.strip().lower() in ("none", "") else v,
}
_PARSED = {  # names normalised (synonyms, case) once their type is right
    "classes": lambda v: tuple(parse_classes(list(v)) or ()),
    "probe": lambda v: v if v is None else (parse_probes(v) or [v])[0],
}


def _replace_checked(obj, d: Mapping, prefix: str):
    """`obj` (a dataclass) with the fields in `d` replaced, each converted to its field's type."""
    if not isinstance(d, Mapping):
        raise ConfigError(prefix.rstrip(".") or "config", f"must be a table of fields, got {_shown(d)}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in d.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(full, f"unknown key ({type(obj).__name__} fields: {', '.join(names)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            changes[key] = _replace_checked(getattr(obj, key), value, full + ".")
            continue
        value = _SPECIAL.get(full, lambda v: v)(value)
        value = _convert(value, tp, full)
        if full in _PARSED:
            try:
                value = _PARSED[full](value)
            except PocovidError as e:
                raise ConfigError(full, str(e)) from None
        changes[key] = value
    return dataclasses.replace(obj, **changes)


def _convert(value, tp, key: str):
    """`value` as type `tp` (str, bool, int, float, their Optional, tuple[X, ...], tuple[X, Y])."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        if isinstance(value, str) and args[-1] is Ellipsis:
            value = [v.strip() for v in value.split(",") if v.strip()]
        fixed = args[-1] is not Ellipsis
        want = f"a list of {len(args)} values" if fixed else f"a list of {_type_name(args[0], plural=True)}"
        if not isinstance(value, (list, tuple)) or (fixed and len(value) != len(args)):
            raise ConfigError(key, f"must be {want}, got {_shown(value)}")
        try:
            return tuple(_convert(v, args[i] if fixed else args[0], key) for i, v in enumerate(value))
        except ConfigError:
            raise ConfigError(key, f"must be {want}, got {_shown(value)}") from None
    ok = (isinstance(value, tp) and not (isinstance(value, bool) and tp is not bool)
          or tp is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok or (tp is float and not math.isfinite(value)):
        raise ConfigError(key, f"must be {_type_name(tp)}, got {_shown(value)}")
    return float(value) if tp is float else value


def _type_name(tp, plural: bool = False) -> str:
    if plural:
        return {str: "strings", bool: "booleans", int: "integers", float: "numbers"}.get(tp, tp.__name__)
    return {str: "a string", bool: "true or false", int: "an integer", float: "a number"}.get(tp, tp.__name__)


def _shown(v) -> str:
    return f"{v!r} ({type(v).__name__})"


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
