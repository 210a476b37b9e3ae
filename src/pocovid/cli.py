"""The `pocovid` command. Each subcommand only parses arguments and calls the package API."""

from __future__ import annotations

import dataclasses
import string
import sys
from collections.abc import Callable, Mapping
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from pocovid import __version__
from pocovid.errors import PocovidError


class _OneLineErrors(TyperGroup):
    """Every `PocovidError` a command raises ends as one line on stderr and exit 1, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PocovidError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(help="pocovid: decision support for lung point-of-care ultrasound (research use, "
                       "not a diagnosis).", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False, cls=_OneLineErrors)
data_app = typer.Typer(help="Index a dataset, split it by patient, check a split.", no_args_is_help=True)
app.add_typer(data_app, name="data")
phantom_app = typer.Typer(help="Write synthetic lung-ultrasound clips and datasets (tests, demos).",
                          no_args_is_help=True)
app.add_typer(phantom_app, name="phantom")


def fail(msg: str, code: int = 1) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


# ------------------------------------------------------------------------------ defaults written once
# Options of settings that a config dataclass (or a function) owns default to None: "not given, use the
# owner's default". Their help shows that default as `{field}`, read from the owner when help is shown
# (TrainConfig brings in torch and MONAI: seconds that other commands need not wait for).


class _ShownDefault(string.Formatter):
    def format_field(self, value, format_spec):
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, (tuple, list)):
            return ",".join(map(str, value))
        return "none" if value is None else format(value, format_spec)


class _DefaultsInHelp(TyperCommand):
    defaults: Callable[[], Mapping] = staticmethod(dict)

    def format_help(self, ctx, formatter):
        values = self.defaults()
        for p in self.params:
            if p.help and "{" in p.help:
                p.help = _ShownDefault().vformat(p.help, (), values)
        return super().format_help(ctx, formatter)


def _defaults_from(defaults: Callable[[], Mapping]) -> type[TyperCommand]:
    """A command class whose option help fills `{name}` from `defaults()` (only when help is shown)."""
    return type("DefaultsInHelp", (_DefaultsInHelp,), {"defaults": staticmethod(defaults)})


def _fields(obj) -> dict:
    """The fields of a dataclass instance by name (nested ones stay objects: `{augment.vflip}`)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _given(ctx: typer.Context, config) -> dict:
    """The options given on the command line that are fields of the dataclass `config`."""
    names = {f.name for f in dataclasses.fields(config)}
    return {k: v for k, v in ctx.params.items() if k in names and v is not None and v != []}


def _option(ctx: typer.Context, name: str) -> str:
    """The command-line spelling of the parameter `name` ('--key-frames' for key_frames)."""
    return next((p.opts[0] for p in ctx.command.params if p.name == name), name)


def _culprit(ctx: typer.Context, given: dict, build: Callable[[dict], object], errors) -> str:
    """'--option: ' for the first given value that `build` refuses on its own, else ''."""
    for name, value in given.items():
        try:
            build({name: value})
        except errors:
            return f"{_option(ctx, name)}: "
    return ""


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        typer.echo(__version__)
        raise typer.Exit()


@app.command("info")
def info_cmd(files: Annotated[list[str], typer.Argument(help="Recordings (video, image, DICOM).")]):
    """Print fps, frame count and size of each recording."""
    from pocovid.media import probe

    failed = 0
    for f in files:
        try:
            i = probe(f)
            fps = f"{i.fps:.2f}" if i.fps else "-"
            typer.echo(f"{f}\t{i.kind}\t{i.format}\t{i.width}x{i.height}\t{i.n_frames} frames\t{fps} fps")
        except PocovidError as e:
            typer.echo(f"error: {e}", err=True)
            failed += 1
    if failed:
        raise typer.Exit(1)


@app.command("schema")
def schema_cmd(exam: bool = typer.Option(False, "--exam", help="The schema of exam.json (`pocovid exam`) instead.")):
    """Print the JSON Schema of result.json (what `analyze --json` and the service return)."""
    import json

    if exam:
        from pocovid.analysis.exam_result import exam_schema

        typer.echo(json.dumps(exam_schema(), indent=2))
        return
    from pocovid.analysis.result import result_schema

    typer.echo(json.dumps(result_schema(), indent=2))


# ------------------------------------------------------------------------------ data (index, split)

_PROBE_HELP = "Keep these probes: convex, linear, unknown (comma-separated). Default: all."
_CLASSES_HELP = "Keep these classes: covid, pneumonia, regular, viral, other (comma-separated). Default: all."


@data_app.command("index")
def data_index_cmd(
    folders: list[str] = typer.Argument(..., help="Dataset folder(s): the public POCUS layout, COVID-BLUES' "
                                        "layout or DIR/<class>/<files>; several are indexed as one."),
    out: str = typer.Option(None, "--out", "-o", help="Write the index as CSV to this file."),
    probe: str = typer.Option(None, "--probe", help=_PROBE_HELP),
    classes: str = typer.Option(None, "--classes", help=_CLASSES_HELP),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero if any file could not be indexed."),
    verify: bool = typer.Option(False, "--verify", help="Decode each file's first and middle frame (slower); "
                                "without it only headers are read, and a file whose frames do not decode "
                                "is indexed."),
):
    """Index a dataset folder: label, probe, patient and facts of every recording.

    Prints which check ran (headers only, or verified by decoding), counts per class x probe x kind,
    per dataset how many recordings carry each finding / severity, and lists files and folders that
    could not be read. Exits 0 when something was indexed (failures are listed), 1 when nothing was,
    or with --strict on any failure.
    """
    from pocovid.data import load_index, write_index
    from pocovid.files import path_text

    try:
        idx = load_index(list(folders), probes=probe, classes=classes, verify=verify)
    except PocovidError as e:
        fail(path_text(str(e)))
    typer.echo(idx.summary())
    if not idx.items:
        fail(f"{', '.join(path_text(f) for f in folders)}: nothing could be indexed"
             + (" (check --probe / --classes)" if probe or classes else ""))
    if out:
        write_index(idx, out)
        typer.echo(f"index written: {path_text(out)} ({len(idx.items)} rows)")
    n_bad = len(idx.failures) + len(idx.skipped)
    if strict and n_bad:
        fail(f"--strict: {n_bad} file(s) not indexed (listed above)")


def _split_defaults() -> dict:
    import inspect

    from pocovid.data import patient_folds

    return {k: p.default for k, p in inspect.signature(patient_folds).parameters.items()}


@data_app.command("split", cls=_defaults_from(_split_defaults))
def data_split_cmd(
    sources: list[str] = typer.Argument(..., help="Dataset folder(s), or index CSV(s) from `pocovid data index "
                                        "--out`; several are split together (grouped by patient within each)."),
    n_folds: int = typer.Option(None, "--folds", "-k", help="Number of folds, mode kfold (default {n_folds})."),
    mode: str = typer.Option(None, "--mode", help="kfold (patient-grouped, stratified by dataset and label), lodo "
                             "(leave one dataset out) or loso (leave one source out) (default {mode})."),
    seed: int = typer.Option(None, "--seed", help="Seed of the shuffles; the same seed gives the same folds "
                             "(default {seed})."),
    probe: str = typer.Option(None, "--probe", help=_PROBE_HELP),
    classes: str = typer.Option(None, "--classes", help=_CLASSES_HELP),
    out: str = typer.Option("splits.json", "--out", "-o", help="Split file to write (JSON, docs/splits.md)."),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero if any file could not be indexed."),
):
    """Split datasets into patient-grouped, class-stratified folds (or one fold per dataset / source)
    and write them as JSON."""
    from pocovid.data import load_index, patient_folds

    try:
        idx = load_index(list(sources), probes=probe, classes=classes)
        if idx.failures or idx.skipped:
            typer.echo(idx.summary())
            if strict:
                fail(f"--strict: {len(idx.failures) + len(idx.skipped)} file(s) not indexed (listed above)")
        elif idx.warnings:
            typer.echo(f"{len(idx.warnings)} warning(s) while indexing; `pocovid data index` lists them")
        given = {k: v for k, v in (("n_folds", n_folds), ("seed", seed), ("mode", mode)) if v is not None}
        splits = patient_folds(idx, **given)
        splits.save(out)
    except PocovidError as e:
        fail(str(e))
    n_pat = len({it.patient for it in splits.items()})
    typer.echo(f"{len(splits.items())} recordings, {n_pat} patients, {splits.n_folds} folds"
               + (f", seed {splits.seed}" if splits.mode == "kfold" else f" ({splits.mode})")
               + (f", datasets {','.join(splits.datasets())}" if len(splits.datasets()) > 1 else "")
               + (f", probe {','.join(splits.probes)}" if splits.probes else "")
               + f", classes {','.join(splits.classes)}")
    typer.echo(splits.table())
    typer.echo(f"split written: {out}")


@data_app.command("check-split")
def data_check_split_cmd(
    split_file: str = typer.Argument(..., help="Split file written by `pocovid data split`."),
    root: list[str] = typer.Option(None, "--root", help="Resolve paths against this folder instead of the "
                                   "recorded root; with several datasets, one --root per dataset."),
):
    """Check a split: no patient in two folds, no file twice, every file present."""
    from pocovid.data import check_split, load_splits

    try:
        splits = load_splits(split_file)
        if root and len(splits.datasets()) > 1:
            root = splits.match_roots(root)
        elif root:
            root = root[0]
        problems = check_split(splits, root=root or None)
    except PocovidError as e:
        fail(str(e))
    if problems:
        for p in problems[:50]:
            typer.echo(f"problem: {p}", err=True)
        if len(problems) > 50:
            typer.echo(f"problem: ... and {len(problems) - 50} more", err=True)
        fail(f"{split_file}: {len(problems)} problem(s)")
    n_pat = len({it.patient for it in splits.items()})
    where = (root if isinstance(root, str) else "; ".join(f"{k} = {v}" for k, v in (root or splits.roots).items())
             if root or len(splits.roots) > 1 else splits.root)
    typer.echo(f"OK: {split_file}: {len(splits.folds)} folds, {len(splits.items())} recordings, {n_pat} patients; "
               f"no patient in two folds, no file twice, all files present under {where}")
    typer.echo(splits.table())


@phantom_app.command("clip")
def phantom_clip_cmd(
    out: str = typer.Argument(..., help="File to write: .mp4 .avi .mov .mpeg .gif .png .jpg .dcm ..."),
    label: str = typer.Option("covid", "--label",
                              help="regular (A-lines), covid (B-lines), pneumonia (consolidation)."),
    probe: str = typer.Option("convex", "--probe", help="convex or linear."),
    frames: int = typer.Option(60, "--frames", help="Number of frames."),
    fps: float = typer.Option(20.0, "--fps", help="Frame rate."),
    size: str = typer.Option("480x400", "--size", help="WIDTHxHEIGHT of the screen."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Burn in scanner text, scale, logo."),
    seed: int = typer.Option(0, "--seed"),
):
    """Write one synthetic lung-ultrasound recording."""
    from pocovid.phantom import write_phantom

    try:
        w, h = (int(v) for v in size.lower().split("x"))
        write_phantom(out, label=label, probe=probe, n_frames=frames, fps=fps, width=w, height=h,
                      overlays=overlays, seed=seed)
    except ValueError as e:
        fail(str(e) if out in str(e) else f"{out}: {e}")
    typer.echo(f"written: {out} ({label}, {probe}, {frames} frames at {fps:g} fps, {size})")


@phantom_app.command("dataset")
def phantom_dataset_cmd(
    out: str = typer.Argument(..., help="Folder to write the dataset into."),
    patients: int = typer.Option(3, "--patients", help="Patients per class."),
    clips: int = typer.Option(2, "--clips", help="Clips per patient."),
    layout: str = typer.Option("public", "--layout", help="public (pocus_videos/..., metadata CSV) or folders."),
    seed: int = typer.Option(0, "--seed"),
):
    """Write a small synthetic dataset in the public POCUS layout (or DIR/<class>/<files>)."""
    from pocovid.phantom.dataset import write_demo_dataset

    try:
        root = write_demo_dataset(out, n_patients_per_class=patients, clips_per_patient=clips, layout=layout, seed=seed)
    except ValueError as e:
        fail(f"{out}: {e}")
    typer.echo(f"written: {root}")


def _train_defaults() -> dict:
    from pocovid.evaluation import AGGREGATION_METHODS
    from pocovid.training import TrainConfig

    return _fields(TrainConfig()) | {"methods": ", ".join(AGGREGATION_METHODS)}


@app.command("train", cls=_defaults_from(_train_defaults))
def train_cmd(
    ctx: typer.Context,
    folders: list[str] = typer.Argument(..., help="Dataset folder(s) the split file refers to (public layout, "
                                        "COVID-BLUES, DIR/<class>/): one per dataset of the split."),
    splits: str = typer.Option(..., "--splits", help="Split file from `pocovid data split`."),
    out: str = typer.Option(..., "--out", help="Run folder, e.g. runs/NAME (resumes if it exists)."),
    final: bool = typer.Option(False, "--final", help="Also train the model on all data: OUT/model.pt."),
    cv: bool = typer.Option(True, "--cv/--no-cv", help="Cross-validate over the folds (out-of-fold metrics)."),
    config: str = typer.Option(None, "--config", help="TOML file of training settings: any TrainConfig field, "
                               "\\[augment] for the augmentation's; the options below override it."),
    backbone: str = typer.Option(None, "--backbone",
                                 help="Backbone name (default {backbone}; an unknown name lists the known ones)."),
    classes: str = typer.Option(None, "--classes", help="Classes to learn, comma-separated (default {classes})."),
    probe: str = typer.Option(None, "--probe", help="Probe to train on: convex, linear, unknown or all "
                              "(default {probe})."),
    rate_hz: float = typer.Option(None, "--rate", help="Frames per second sampled from each clip, 0: every frame "
                                  "(default {rate_hz})."),
    max_frames: int = typer.Option(None, "--max-frames",
                                   help="At most this many frames per clip, evenly spread (default {max_frames})."),
    size: int = typer.Option(None, "--size", help="Input size in pixels (default: the backbone's)."),
    crop: bool = typer.Option(None, "--crop/--no-crop", help="Crop frames to the detected scan region "
                              "(default {crop})."),
    cut: int = typer.Option(None, "--cut", help="Backbone stages used (default: the backbone's own)."),
    n_frozen: int = typer.Option(None, "--freeze", help="Backbone stages frozen and cached (default: all used)."),
    adapter_channels: int = typer.Option(None, "--adapter-channels",
                                         help="Adapter width, 0: no adapter (default {adapter_channels})."),
    dropout: float = typer.Option(None, "--dropout", help="Dropout before each head (default {dropout})."),
    spatial_dropout: float = typer.Option(None, "--spatial-dropout",
                                          help="Spatial dropout in the adapter (default {spatial_dropout})."),
    n_heads: int = typer.Option(None, "--heads", help="Ensemble members sharing the frozen backbone "
                                "(default {n_heads})."),
    epochs: int = typer.Option(None, "--epochs", help="Maximum epochs, early stopping on held-out patients "
                               "(default {epochs})."),
    patience: int = typer.Option(None, "--patience",
                                 help="Epochs without improvement before early stopping (default {patience})."),
    lr: float = typer.Option(None, "--lr", help="Learning rate, AdamW (default {lr})."),
    weight_decay: float = typer.Option(None, "--weight-decay", help="AdamW weight decay (default {weight_decay})."),
    batch_size: int = typer.Option(None, "--batch-size", help="Frames per batch (default {batch_size})."),
    precision: str = typer.Option(None, "--precision", help="Arithmetic of head training: auto (bfloat16 where "
                                  "the CPU has it natively, AMX or AVX512-BF16, and only heads train; float32 "
                                  "elsewhere and with --freeze below the cut), float32 or bfloat16 (default "
                                  "{precision})."),
    label_smoothing: float = typer.Option(None, "--label-smoothing",
                                          help="Label smoothing of the loss (default {label_smoothing})."),
    val_fraction: float = typer.Option(None, "--val-fraction", help="Share of training patients held out for early "
                                       "stopping, 0: train all epochs (default {val_fraction})."),
    refit: bool = typer.Option(None, "--refit/--no-refit", help="Then retrain on all training patients for the "
                               "epochs early stopping chose (default {refit})."),
    n_aug: int = typer.Option(None, "--aug-copies",
                              help="Augmented copies of each frame cached for training (default {n_aug})."),
    vflip: bool = typer.Option(None, "--vflip/--no-vflip",
                               help="Also flip vertically when augmenting (default {augment.vflip})."),
    aggregation: str = typer.Option(None, "--aggregation",
                                    help="Frames -> clip in the metrics: {methods} (default {aggregation})."),
    findings: str = typer.Option(None, "--findings", help="Findings the heads also predict, comma-separated; none: "
                                 "no findings head (default {findings})."),
    severity_levels: int = typer.Option(None, "--severity-levels", help="Levels of the ordinal severity head, 0: "
                                        "none (default {severity_levels})."),
    findings_weight: float = typer.Option(None, "--findings-weight",
                                          help="Loss weight of the findings (default {findings_weight})."),
    severity_weight: float = typer.Option(None, "--severity-weight",
                                          help="Loss weight of the severity (default {severity_weight})."),
    weak_labels: str = typer.Option(None, "--weak-labels", help="Patient-level diagnoses as targets: abnormal_only, "
                                    "all or none (default {weak_labels})."),
    outside_classes: str = typer.Option(None, "--outside-classes", help="Recordings of other classes: targets "
                                        "(findings and severity only) or drop (default {outside_classes})."),
    exam_method: str = typer.Option(None, "--exam-method", help="Clips -> exam: auto, mean, max, noisy_or, logistic "
                                    "(default {exam_method})."),
    seed: int = typer.Option(None, "--seed", help="Seed of initialisation and augmentation (default {seed})."),
    weights: str = typer.Option(None, "--weights", help="Pretrained backbone weights (file or URL), e.g. for vgg16."),
    no_pretrained: bool = typer.Option(False, "--no-pretrained", help="Random backbone init (tests only)."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Print the training settings as TOML (a --config file) and exit."),
    cache: str = typer.Option(None, "--cache", help="Folder caching frames and trunk features, which runs on other "
                              "split files of the same data can share; without it, OUT/cache."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
):
    """Train and cross-validate a frame classifier; --final also trains the model to ship."""
    from pocovid.data import load_splits
    from pocovid.evaluation import format_summary
    from pocovid.training import TrainConfig, train_run
    from pocovid.training.config import ConfigError

    given = _given(ctx, TrainConfig)
    if vflip is not None:
        given["augment"] = {"vflip": vflip}
    try:
        cfg = TrainConfig.from_dict(given, base=TrainConfig.from_file(config) if config else None)
    except ConfigError as e:
        where = _option(ctx, e.key.rsplit(".", 1)[-1]) if e.source is None else None
        fail(f"{where}: {e.problem}" if where and where.startswith("--") else str(e))
    if dry_run:
        typer.echo(cfg.to_toml(), nl=False)
        return
    if not cv and not final:
        fail("nothing to do: --no-cv without --final")
    sp = load_splits(splits)
    root = folders[0] if len(folders) == 1 else sp.match_roots(folders)
    res = train_run(sp, out, cfg, final=final, cv=cv, root=root, progress=not quiet, weights=weights,
                    pretrained=not no_pretrained, cache_dir=cache)
    if res.metrics:
        typer.echo(format_summary(res.metrics))
        typer.echo(f"cross-validation results: {res.out_dir / 'cv'}")
    for f in res.frames.failures:
        typer.echo(f"  not used: {f}", err=True)
    if res.model_path:
        typer.echo(f"model written: {res.model_path}")
    t = res.timings
    typer.echo("time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in t.items() if k.endswith("_s"))
               + (f"; peak memory {t['peak_memory_gb']:.2f} GB" if t.get("peak_memory_gb") else ""))


def _evaluate_defaults() -> dict:
    import inspect

    from pocovid.evaluation import AGGREGATION_METHODS, evaluate_folder

    params = inspect.signature(evaluate_folder).parameters.items()
    return {k: p.default for k, p in params if p.default is not p.empty} | {"methods": ", ".join(AGGREGATION_METHODS)}


def _check_aggregation(value: str | None) -> str | None:
    from pocovid.evaluation import AGGREGATION_METHODS

    if value is not None and value not in AGGREGATION_METHODS:
        fail(f"--aggregation: unknown method {value!r} (known: {', '.join(AGGREGATION_METHODS)})")
    return value


@app.command("evaluate", cls=_defaults_from(_evaluate_defaults))
def evaluate_cmd(
    folders: list[str] = typer.Argument(..., help="Labelled folder(s) (public POCUS layout, COVID-BLUES, "
                                        "DIR/<class>/<files>); several are scored together."),
    model: str = typer.Option("default", "--model", help="Model file, or 'default' for the bundled model."),
    out: str = typer.Option(..., "--out", help="Folder for metrics.json, predictions.csv and plots."),
    probe: str = typer.Option(None, "--probe", help=_PROBE_HELP),
    classes: str = typer.Option(None, "--classes", help="Evaluate these of the model's classes only."),
    aggregation: str = typer.Option(None, "--aggregation", callback=_check_aggregation,
                                    help="Frames -> clip: {methods} (default {aggregation})."),
    rate_hz: float = typer.Option(None, "--rate", help="Frames per second sampled, 0: every frame "
                                  "(default: as trained)."),
    max_frames: int = typer.Option(None, "--max-frames",
                                   help="At most this many frames per clip (default: as trained)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Score a model on a labelled folder: frame and video metrics, predictions, plots."""
    from pocovid.evaluation import evaluate_folder, format_summary

    if rate_hz is not None and rate_hz < 0:
        fail(f"--rate: must be >= 0 (0: every frame), got {rate_hz}")
    if max_frames is not None and max_frames < 1:
        fail(f"--max-frames: must be >= 1, got {max_frames}")
    given = {k: v for k, v in (("aggregation", aggregation), ("rate_hz", rate_hz), ("max_frames", max_frames))
             if v is not None}
    m = evaluate_folder(model, folders[0] if len(folders) == 1 else list(folders), out, probes=probe, classes=classes,
                        progress=not quiet, **given)
    typer.echo(format_summary(m))
    if m["skipped"]:
        typer.echo(f"skipped {len(m['skipped'])} recording(s):")
        for s in m["skipped"]:
            typer.echo(f"  {s}")
    typer.echo(f"written: {out}/metrics.json, {out}/predictions.csv, plots")


def _adapt_defaults() -> dict:
    import inspect

    from pocovid.training.adapt import ADAPT_METHODS, LEVELS, adapt

    params = inspect.signature(adapt).parameters.items()
    return {k: p.default for k, p in params if p.default is not p.empty} | {
        "methods": ", ".join(ADAPT_METHODS), "levels": ", ".join(LEVELS)}


@app.command("adapt", cls=_defaults_from(_adapt_defaults))
def adapt_cmd(
    folders: list[str] = typer.Argument(..., help="The site's labelled folder(s) (any layout `pocovid data index` "
                                        "reads); several are used together."),
    model: str = typer.Option("default", "--model", help="Model file, or 'default' for the bundled model."),
    out: str = typer.Option(..., "--out", help="The adapted model file to write (never the input model)."),
    method: str = typer.Option(None, "--method", help="{methods} (default {method})."),
    level: str = typer.Option(None, "--level", help="Labels fitted per clip or per exam: {levels} (default {level}: "
                              "per exam where labels are the patient's)."),
    reg: float = typer.Option(None, "--reg", help="Pull toward no change (default: per method)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Recalibrate a model on a site's own labelled recordings; writes a new model file."""
    from pocovid.training.adapt import adapt

    given = {k: v for k, v in (("method", method), ("level", level), ("reg", reg)) if v is not None}
    r = adapt(model, folders[0] if len(folders) == 1 else list(folders), out, progress=not quiet, **given)
    a = r.adaptation
    typer.echo(f"adapted ({a['method']}, per {a['level']}) on {a['n_recordings']} recording(s) of "
               f"{a['n_patients']} patient(s): temperature {a['temperature']:.3f}, bias "
               + ", ".join(f"{c} {b:+.3f}" for c, b in zip(a["classes"], a["bias"]))
               + f"; NLL {a['nll_before']} -> {a['nll_after']}")
    if r.skipped:
        typer.echo(f"skipped {len(r.skipped)} recording(s):")
        for s in r.skipped:
            typer.echo(f"  {s}")
    typer.echo(f"model written: {r.model_path}")


# ------------------------------------------------------------------------------ web service

contributions_app = typer.Typer(help="Data contributions received by `pocovid serve`: list, export.",
                                no_args_is_help=True)
app.add_typer(contributions_app, name="contributions")

_DATA_DIR_HELP = "The service's data folder (default: $POCOVID_DATA_DIR or ~/.local/share/pocovid/server)."


def _server_missing(e: ImportError) -> None:
    fail(f"the web service needs the 'serve' extra: pip install 'pocovid[serve]' ({e})")


def _serve_defaults() -> dict:
    from pocovid.server.config import ServerConfig

    return _fields(ServerConfig())


def _check_port(value: int) -> int:
    if not 0 <= value <= 65535:
        fail(f"--port: must be 1..65535 (0: any free port), got {value}")
    return value


@app.command("serve", cls=_defaults_from(_serve_defaults))
def serve_cmd(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. Default: this machine only."),
    port: int = typer.Option(8000, "--port", callback=_check_port, help="TCP port (0: any free port)."),
    data_dir: str = typer.Option(None, "--data-dir", help=_DATA_DIR_HELP),
    model: str = typer.Option(None, "--model", help="Model file, or 'default' for the bundled model "
                              "(default '{model}')."),
    workers: int = typer.Option(None, "--workers", help="Analyses run at the same time (default {workers})."),
    max_upload_mb: float = typer.Option(None, "--max-upload-mb", help="Upload size limit in MB "
                                        "(default {max_upload_mb})."),
    cors_origins: Annotated[list[str] | None, typer.Option(
        "--cors-origin", help="Allow this origin by CORS (repeatable). Default: CORS off.")] = None,
    allowed_hosts: Annotated[list[str] | None, typer.Option(
        "--allowed-host", help="Also answer requests for this host name (the Host header; repeatable), e.g. "
        "the name a reverse proxy serves. Always answered: localhost, 127.0.0.1, [::1] and the --host "
        "address.")] = None,
    job_memory_mb: float = typer.Option(None, "--job-memory-mb", help="Memory limit of one analysis in MB, "
                                        "0: none (default {job_memory_mb})."),
    min_free_mb: float = typer.Option(None, "--min-free-mb", help="Refuse uploads (507) when the data folder's "
                                      "disk would keep less free space than this, in MB (default {min_free_mb})."),
    runtime: str = typer.Option(None, "--runtime", help="Where the analyses' model runs: auto (the fastest "
                                "installed, measured once on this machine), torch, onnx, openvino, or openvino-bf16 "
                                "(bfloat16 where the CPU has it; results a little off fp32, and they say so) "
                                "(default {runtime})."),
    threads: int = typer.Option(None, "--threads", help="Torch threads (default: CPU cores / workers)."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error."),
):
    """Run the web service: upload page at /, API under /api, API docs at /docs.

    Deletion and the contributions admin endpoints need the bearer token in $POCOVID_API_TOKEN (at
    least 16 characters); without one they answer nobody, and the service binds only to this
    machine's loopback address. See docs/server.md.
    """
    import logging
    import os

    try:
        import uvicorn

        from pocovid.server import ServerConfig, create_app
        from pocovid.server.config import LOOPBACK_ADDRESSES
    except ImportError as e:
        _server_missing(e)
    given = _given(ctx, ServerConfig)
    if host not in LOOPBACK_ADDRESSES and host not in ("0.0.0.0", "::"):  # a named address: its own Host
        given["allowed_hosts"] = [*given.get("allowed_hosts", []), host]
    try:
        cfg = ServerConfig.from_env(**given)
    except ValueError as e:
        fail(f"{_culprit(ctx, given, lambda kw: ServerConfig(**kw), ValueError)}{e}")
    if host not in LOOPBACK_ADDRESSES and cfg.token is None:
        fail(f"--host {host}: serving beyond this machine needs POCOVID_API_TOKEN (at least 16 characters) set "
             "in the environment; see docs/server.md")
    import torch

    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // cfg.workers))
    from pocovid.inference import model_path

    model_path(cfg.model)  # a missing model file: one line now, not at the first upload
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if host not in LOOPBACK_ADDRESSES:
        typer.echo(f"warning: serving on {host}: uploads and results are open to anyone who can reach the port; "
                   "put it behind a reverse proxy with TLS and authentication (docs/server.md)", err=True)
    typer.echo(f"pocovid: http://{host if ':' not in host else '[' + host + ']'}:{port}/  (data: {cfg.data_dir})")
    uvicorn.run(create_app(cfg), host=host, port=port, log_level=log_level.lower(), access_log=True,
                proxy_headers=False, server_header=False)


@contributions_app.command("export")
def contributions_export_cmd(
    out: str = typer.Argument(..., help="Folder to write (the public POCUS layout; created)."),
    data_dir: str = typer.Option(None, "--data-dir", help=_DATA_DIR_HELP),
):
    """Write accepted contributions in the public dataset's layout (pocus_videos|pocus_images/<probe>/,
    dataset_metadata.csv) so that `pocovid data index OUT` reads them."""
    from pocovid.server.config import default_data_dir
    from pocovid.server.contributions import export_contributions
    from pocovid.server.db import Database
    from pocovid.server.storage import Storage

    root = data_dir or default_data_dir()
    from pathlib import Path

    if not (Path(root) / Storage.DB_NAME).is_file():
        fail(f"{root}: no pocovid service data here (no {Storage.DB_NAME})")
    storage = Storage(root)
    db = Database(storage.db_path)
    try:
        res = export_contributions(db, storage, out)
    finally:
        db.close()
    for cid in res.missing:
        typer.echo(f"warning: contribution {cid}: its file is missing, not exported", err=True)
    typer.echo(f"{len(res.written)} accepted contribution(s) written to {out} (dataset_metadata.csv updated)")


@contributions_app.command("list")
def contributions_list_cmd(
    data_dir: str = typer.Option(None, "--data-dir", help=_DATA_DIR_HELP),
    status: str = typer.Option(None, "--status", help="pending, accepted or rejected (default: all)."),
):
    """List the contribution queue (id, status, diagnosis, probe, license, source)."""
    from pathlib import Path

    from pocovid.server.config import default_data_dir
    from pocovid.server.db import Database
    from pocovid.server.storage import Storage

    root = Path(data_dir or default_data_dir())
    if not (root / Storage.DB_NAME).is_file():
        fail(f"{root}: no pocovid service data here (no {Storage.DB_NAME})")
    if status not in (None, "pending", "accepted", "rejected"):
        fail(f"--status must be pending, accepted or rejected, not {status!r}")
    db = Database(root / Storage.DB_NAME)
    try:
        total, rows = db.list_contributions(status, 0, 100000)
    finally:
        db.close()
    from pocovid.server.contributions import printable

    for c in rows:  # stored text is shown escaped: a contributor's text must not drive the terminal
        typer.echo("\t".join(printable(c[k]) for k in ("id", "status", "diagnosis", "probe", "kind", "license",
                                                         "source")))
    typer.echo(f"{total} contribution(s)")


def _analysis_defaults() -> dict:
    from pocovid.analysis import AnalysisConfig

    return _fields(AnalysisConfig())


@app.command("analyze", cls=_defaults_from(_analysis_defaults))
def analyze_cmd(
    ctx: typer.Context,
    files: Annotated[list[str] | None, typer.Argument(
        help="Recordings (video, image or DICOM; cropped to the scan region) or folders of them (every "
             "recording inside, recursively, sorted; hidden files left out).")] = None,
    list_file: str = typer.Option(None, "--list", help="A CSV file with a 'path' column: these recordings too "
                                  "(relative paths are taken from the CSV's folder)."),
    model: str = typer.Option("default", "--model", help="Model file, or 'default' for the bundled model."),
    out: str = typer.Option("analysis", "--out", "-o",
                            help="Output folder: one sub-folder per file (DIR/<file stem>) and DIR/summary.csv."),
    resume: bool = typer.Option(False, "--resume/--no-resume", help="Skip recordings whose finished result is "
                                "in the output folder (same model, settings and result schema; the recording "
                                "unchanged); redo broken or outdated ones. Default: analyse everything again."),
    engine: str = typer.Option("local", "--engine", help="local (one recording after another, in this process) "
                               "or ray (one Ray task per recording: pip install 'pocovid\\[ray]')."),
    address: str = typer.Option(None, "--address", help="--engine ray: the Ray cluster to use (e.g. auto, "
                                "ray://HOST:10001); default: start Ray on this machine."),
    workers: int = typer.Option(None, "--workers", help="--engine ray: recordings analysed at once "
                                "(default: this machine's CPU cores, or the cluster's)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list to stdout and nothing else: each "
                                                       "file's result.json or its failure, in order."),
    rate_hz: float = typer.Option(None, "--rate", help="Frames per second analysed, 0: every frame "
                                  "(default: every frame)."),
    overlay_video: bool = typer.Option(None, "--overlay-video/--no-overlay-video",
                                       help="Also write overlay.mp4: the clip with heatmaps "
                                       "(default {overlay_video})."),
    key_frames: int = typer.Option(None, "--key-frames", help="Key moments to show, K (default {key_frames})."),
    explainer: str = typer.Option(None, "--explainer", help="cam (class activation map) or gradcam (MONAI "
                                  "Grad-CAM) (default {explainer})."),
    gradcam_layer: str = typer.Option(None, "--gradcam-layer",
                                      help="Grad-CAM target module, e.g. trunk.4 (default: each head's last map)."),
    crop: bool = typer.Option(None, "--crop/--no-crop", help="Crop to the detected scan region (default {crop})."),
    runtime: str = typer.Option(None, "--runtime", help="Where the model runs: torch, onnx (onnxruntime), openvino, "
                                "or auto: the fastest installed, measured once on this machine; a runtime not "
                                "installed falls back to torch (default {runtime}). openvino-bf16: OpenVINO in "
                                "bfloat16 where the CPU has it (AMX, AVX512-BF16; fp32 elsewhere), faster, results "
                                "a little off fp32 (model_info.precision: bf16); never chosen by auto."),
    graph: str = typer.Option(None, "--graph", help="An ONNX file of --model written by `pocovid export` (fp32, or "
                              "--int8) that the graph runtime runs instead of its own export: needs --runtime onnx "
                              "or openvino (auto: onnx, else openvino; not torch). Refused unless its metadata "
                              "names this model; the result records the file and its precision "
                              "(model_info.precision: fp32 / int8)."),
    full_screen: bool = typer.Option(None, "--full-screen/--scan-region-only",
                                     help="Key frames and videos show the whole screen, with any names and dates "
                                     "burnt into it; else the scan region only (default {full_screen})."),
    show_path: bool = typer.Option(None, "--show-path/--no-show-path",
                                   help="The result and report name each file by its whole path; else by its "
                                   "name only (default {show_path})."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress on stderr."),
):
    """Analyse recordings: clip diagnosis with probabilities and uncertainty, key moments with
    heatmaps, timeline, report.html (decision support for trained clinicians, not a diagnosis)."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning threads on shared CPUs
    import json
    from pathlib import Path

    from pocovid.analysis import AnalysisConfig, analyze_files
    from pocovid.analysis.analyze import resolve_model

    given = _given(ctx, AnalysisConfig)
    if given.get("rate_hz") == 0:
        given["rate_hz"] = None  # every frame
    cfg = dataclasses.replace(AnalysisConfig(), **given)
    if cfg.graph is not None and cfg.runtime == "torch":
        fail("--graph: an exported graph runs on --runtime onnx or openvino (or auto), not torch")
    try:
        cfg.check()
    except PocovidError as e:
        check_alone = lambda kw: dataclasses.replace(AnalysisConfig(), **kw).check()
        fail(f"{_culprit(ctx, given, check_alone, PocovidError)}{e}")
    try:  # on a graph runtime, the model's cached graph when there is one (no PyTorch), Ray's workers too
        m, _ = resolve_model(model, cfg)
    except PocovidError as e:
        hint = " (pass --model FILE: a model written by `pocovid train --final`)" if model == "default" else ""
        fail(f"{e}{hint}")
    if cfg.graph is not None:  # an export of this model, readable by an installed graph runtime
        from pocovid.models.runtime import graph_runtime_name, read_graph_file

        try:
            graph_runtime_name(cfg.runtime)
            read_graph_file(cfg.graph, m)
        except PocovidError as e:
            fail(f"--graph: {e}")
    if engine not in ("local", "ray"):
        fail(f"--engine: use local or ray, not {engine!r}")
    if (address or workers is not None) and engine != "ray":
        fail("--address and --workers are for --engine ray")
    if workers is not None and workers < 1:
        fail(f"--workers: must be >= 1, got {workers}")
    from pocovid.analysis.inputs import collect_recordings

    if not files and not list_file:
        fail("give recordings, folders of recordings, or --list FILE.csv")
    inputs = collect_recordings(files or [], list_file, exclude=[out])
    if not quiet and inputs.skipped:
        typer.echo(f"{len(inputs.skipped)} file(s) in the folders are not recordings, left out:", err=True)
        for line in inputs.skipped[:10]:
            typer.echo(f"  {line}", err=True)
        if len(inputs.skipped) > 10:
            typer.echo(f"  ... and {len(inputs.skipped) - 10} more", err=True)
    if not inputs.paths:
        fail(f"{', '.join(files or [list_file])}: no recordings found")
    if not quiet:
        typer.echo(f"pocovid {__version__}: decision support for trained clinicians, not a diagnosis", err=True)
    batch = analyze_files(inputs.paths, m, out, cfg, resume=resume, engine=engine, address=address,
                          workers=workers, events=None if quiet else _BatchEvents())
    if json_out:  # every file's result or failure, in input order
        typer.echo(json.dumps(batch.to_json(), indent=2))
    else:
        for entry in batch.entries:
            if entry.ok:  # named as given here (the result names the file only, unless --show-path)
                typer.echo(_analysis_line(entry.result, entry.folder, entry.file))
        if batch.results:
            typer.echo("Decision support for trained clinicians, not a diagnosis: read the report "
                       "(probabilities, uncertainty, key moments).")
        typer.echo(f"summary: {batch.summary or Path(out) / 'summary.csv'}")
    for f in batch.failures:
        typer.echo(f"error: {f}", err=True)
    if batch.skipped:
        typer.echo(f"{len(batch.skipped)} of {len(batch.entries)} recording(s) skipped: finished results kept "
                   "(--resume)", err=True)
    if batch.failures:
        typer.echo(f"{len(batch.failures)} of {len(batch.entries)} file(s) failed", err=True)
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    model: str = typer.Argument(..., help="'default' (the bundled model) or a model file."),
    out: str = typer.Argument(..., help="The file to write, e.g. model.onnx."),
    fmt: str = typer.Option("onnx", "--format", help="onnx: the whole per-frame network (every head, CAMs, "
                            "pooled features) with its metadata inside; runs with onnxruntime alone."),
    int8: bool = typer.Option(False, "--int8", help="Quantise to int8 (static post-training quantisation: "
                              "smaller and less exact, faster only on some CPUs; docs/export.md gives the "
                              "measured cost)."),
    calibration: list[str] = typer.Option(None, "--calibration", help="--int8: recordings, or folders of them, "
                                          "whose frames set the int8 ranges; repeat for several. Use the site's "
                                          "own recordings (default: the two demo clips, where `pocovid demo` "
                                          "finds them on this machine)."),
):
    """Write a model as an ONNX file (every head, metadata inside) for ONNX Runtime, OpenVINO, ..."""
    from pocovid.inference import export_model

    if fmt != "onnx":
        fail(f"--format: only onnx is supported, not {fmt!r}")
    if calibration and not int8:
        fail("--calibration is for --int8")
    files = None
    if int8:
        from pocovid.analysis.inputs import collect_recordings, demo_recordings

        if calibration:
            files = collect_recordings(calibration).paths
            if not files:
                fail(f"{', '.join(calibration)}: no recordings found")
        else:
            try:
                files = [row["path"] for row in demo_recordings()]
            except PocovidError as e:
                fail(f"--int8 needs --calibration RECORDINGS (real recordings of the site); no demo clips either: {e}")
            typer.echo("calibrating int8 on the two demo clips; pass --calibration with the site's own recordings "
                       "for ranges that fit them", err=True)
    path = export_model(model, out, int8=int8, calibration=files)
    typer.echo(f"written: {path} ({'int8' if int8 else 'fp32'} ONNX, {path.stat().st_size / 1e6:.1f} MB)")


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("demo/analysis", "--out", "-o", help="Output folder (one sub-folder per clip)."),
    data: str = typer.Option(None, "--data", help="Where the two clips are: a POCUS dataset folder (the clips at "
                             "pocus_videos/convex/) or a folder holding the files. Default: $POCOVID_DEMO_DATA, "
                             "then the download cache (~/.cache/pocovid/demo)."),
    download: bool = typer.Option(True, "--download/--no-download", help="Download clips found nowhere else "
                                  "(1.8 MB, github.com/jannisborn/covid19_ultrasound) into the cache."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress on stderr."),
):
    """Analyse two real lung-ultrasound clips of the public POCUS dataset (CC BY 4.0, see
    assets/demo/ATTRIBUTION.md) with the bundled model. The clips are not shipped: they are found
    on this machine (--data) or downloaded once and checked (SHA-256). The bundled model saw both
    clips in training: this shows how pocovid works, not how accurate it is. Without the clips, a
    synthetic phantom clip is analysed instead (and said so)."""
    import os
    from pathlib import Path

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning threads on shared CPUs
    from pocovid.analysis import analyze_files
    from pocovid.analysis.demo import DATA_ENV, find_demo_clips

    search = find_demo_clips(data, download, log=lambda line: typer.echo(line, err=True))
    if search.found:
        n = len(search.found)
        typer.echo(f"pocovid {__version__} demo: {n} real clip{'s' if n > 1 else ''} (Vieira, Pazeli Júnior, "
                   "Bastos, The Ultrasound Journal 12, 30 (2020), doi 10.1186/s13089-020-00177-4, CC BY 4.0; "
                   "via the POCUS dataset of Born et al.) analysed with the bundled model.")
        typer.echo("NOTE: the bundled model saw these clips in training, so its answers here show how pocovid "
                   "works, not how accurate it is (docs/model_card.md has the out-of-fold figures).")
        for _, path, where in search.found:
            typer.echo(f"  {path} ({where})")
        for c in search.missing:
            typer.echo(f"  {c.name}: not found (left out)")
        paths = [path for _, path, _ in search.found]
        labels = [f"the dataset's label: {c.label} ({c.finding})" for c, _, _ in search.found]
    else:
        why = ("the download failed" if search.download_failed else "downloads are off (--no-download)"
               if not download else "nothing to download")
        typer.echo(f"The demo clips were not found ({'; '.join(c.name for c in search.missing)}) in "
                   f"{', '.join(search.looked_in)}, and {why}: give a POCUS dataset folder or a folder holding them "
                   f"with --data DIR or {DATA_ENV}=DIR, "
                   "or run `pocovid demo` online to download them (1.8 MB).")
        from pocovid.phantom import write_phantom

        phantom = Path(out) / "synthetic_input" / "synthetic_phantom_covid.mp4"
        write_phantom(phantom, label="covid", probe="convex", n_frames=60, fps=20, width=640, height=480,
                      overlays=True, seed=0)
        typer.echo("NOTE: analysing a SYNTHETIC phantom clip instead (generated by pocovid, B-line-like "
                   f"patterns; no patient, not a real recording): {phantom}. It shows how pocovid works; "
                   "the model's answer on it means nothing clinically.")
        paths, labels = [phantom], ["synthetic phantom clip (generated, label covid-like)"]
    batch = analyze_files(paths, "default", out, events=None if quiet else _BatchEvents())
    for label, entry in zip(labels, batch.entries):
        if entry.ok:
            typer.echo(f"  {label}")
            typer.echo(_analysis_line(entry.result, entry.folder))
    for f in batch.failures:
        typer.echo(f"error: {f}", err=True)
    if batch.failures:
        raise typer.Exit(1)


class _BatchEvents:
    """Progress of `analyze` on stderr: each recording as it starts, its share done (per frame
    batch: a line at each further 10%, or after 10 s without one), skipped and finished ones."""

    QUIET_S = 10.0

    def __init__(self):
        self.shown: dict[int, tuple[int, float]] = {}  # recording -> (tenths shown, when)
        self.finished = 0

    def __call__(self, ev) -> None:
        import time

        head = f"[{ev.i + 1}/{ev.n}] {ev.file}"
        now = time.monotonic()
        tenths, last = self.shown.get(ev.i, (0, now))
        if ev.stage == "start":
            self.shown[ev.i] = (0, now)
            typer.echo(head, err=True)
        elif ev.stage == "skipped":
            self.finished += 1
            typer.echo(f"{head}: skipped, finished result in {ev.note}", err=True)
        elif ev.stage == "redo":
            typer.echo(f"{head}: earlier result outdated ({ev.note}), analysed again", err=True)
        elif ev.stage in ("done", "failed"):
            self.finished += 1
            typer.echo(f"{head}: {ev.stage} ({self.finished} of {ev.n} finished)", err=True)
        elif int(10 * ev.fraction) > tenths or now - last >= self.QUIET_S:
            self.shown[ev.i] = (max(tenths, int(10 * ev.fraction)), now)
            typer.echo(f"{head}: {int(100 * ev.fraction)}% ({ev.stage})", err=True)


def _exam_defaults() -> dict:
    from pocovid.analysis.bedside import ExamConfig

    return _fields(ExamConfig())


@app.command("exam", cls=_defaults_from(_exam_defaults))
def exam_cmd(
    inputs: Annotated[list[str], typer.Argument(
        help="One patient's recordings, or a folder of them (a COVID-BLUES folder: pick one with --patient).")],
    zones: str = typer.Option(None, "--zones", help="The zone of each recording, in order, comma-separated "
                              "(R1..R3, L1..L3; '-': none). Default: from the file names (patient_<ID>_L1.mp4)."),
    zones_csv: str = typer.Option(None, "--zones-csv", help="A CSV with columns file,zone (files it does not name: "
                                  "zone from the name)."),
    patient: str = typer.Option(None, "--patient", help="Only the recordings named patient_<ID>_... of this patient."),
    model: str = typer.Option("default", "--model", help="Model file, or 'default' for the bundled model."),
    out: str = typer.Option("exam", "--out", "-o", help="Output folder: exam.json, exam.html, one sub-folder per "
                            "recording, summary.csv."),
    json_out: bool = typer.Option(False, "--json", help="Print exam.json to stdout and nothing else."),
    rate_hz: float = typer.Option(None, "--rate", help="Frames per second analysed, 0: every frame "
                                  "(default: every frame)."),
    review_below: float = typer.Option(None, "--review-below", help="Review recommended when the exam's most "
                                       "likely diagnosis is below this probability (default {review_below})."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress on stderr."),
):
    """Analyse all of a patient's lung zones at once: per zone findings, severity and key frame, the
    LUS score, the exam's diagnosis; exam.html (decision support for trained clinicians, not a diagnosis)."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning threads on shared CPUs
    from pocovid.analysis import AnalysisConfig
    from pocovid.analysis.analyze import resolve_model
    from pocovid.analysis.bedside import ExamConfig, analyze_exam
    from pocovid.analysis.exam_report import summary_lines
    from pocovid.analysis.zones import assign_zones, exam_files

    cfg = ExamConfig(analysis=AnalysisConfig(rate_hz=rate_hz or None))
    if review_below is not None:
        cfg.review_below = review_below
    try:
        cfg.check()
    except PocovidError as e:
        fail(f"{'--review-below: ' if 'review_below' in str(e) else '--rate: ' if rate_hz else ''}{e}")
    files = exam_files(inputs, patient)
    assign_zones(files, zones, zones_csv)  # bad zones: one line before anything is loaded or written
    try:
        m, _ = resolve_model(model)
    except PocovidError as e:
        hint = " (pass --model FILE: a model written by `pocovid train --final`)" if model == "default" else ""
        fail(f"{e}{hint}")
    if not quiet:
        typer.echo(f"pocovid {__version__}: decision support for trained clinicians, not a diagnosis", err=True)
    exam = analyze_exam(files, m, out, cfg, zones=zones, zones_csv=zones_csv,
                        progress=None if quiet else _file_progress)
    if json_out:
        typer.echo(exam.model_dump_json(indent=2))
    else:
        for line in summary_lines(exam):
            typer.echo(line)
        from pathlib import Path

        typer.echo(f"report: {Path(out) / (exam.report or 'exam.json')}")
    for f in exam.failures:
        typer.echo(f"error: {f}", err=True)
    if exam.failures:
        typer.echo(f"{len(exam.failures)} of {len(files)} recording(s) failed", err=True)
        raise typer.Exit(1)


def _file_progress(i: int, n: int, path: str) -> None:
    if path:
        typer.echo(f"[{i + 1}/{n}] {path}", err=True)


def _analysis_line(r, folder, name: str | None = None) -> str:
    """One line for an `AnalysisResult`: the diagnosis (or why none), probabilities, uncertainty;
    the file as `name` (e.g. the path given), else as the result names it."""
    from pathlib import Path

    from pocovid.files import path_text

    file = path_text(name) if name else r.file
    where = f" -> {Path(folder) / r.report}" if r.report and folder else ""
    if r.out_of_distribution:  # no label, no probabilities: they are not a diagnosis here
        return (f"{file}: OUTSIDE WHAT THE MODEL WAS TRAINED ON (e.g. a linear probe, another organ, not lung "
                "ultrasound): no diagnosis (" + "; ".join(r.ood.reasons) + ")" + where)
    from pocovid.analysis.display import clinical_name

    p, u = r.prediction, r.uncertainty  # the clinician's words (healthy, not regular); result.json keeps the keys
    probs = ", ".join(f"{clinical_name(c)} {v:.2f}" for c, v in sorted(p.probabilities.items(), key=lambda kv: -kv[1]))
    flags = " REVIEW RECOMMENDED (" + "; ".join(r.review_reasons) + ")" if r.review_recommended else ""
    return (f"{file}: most likely {clinical_name(p.label)} [{probs}] uncertainty {u.score:.3f} ({u.method}, "
            f"review threshold {u.threshold:.3f}){flags}{where}")


def main() -> None:
    import atexit
    import gc

    # Registered first, so it runs last at exit: the interpreter's final collection then skips the
    # million objects of torch & co. (exit 0.47 -> 0.14 s after `analyze`); nothing is left unflushed.
    atexit.register(gc.freeze)
    try:
        app()  # a PocovidError ends as one line: _OneLineErrors
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
