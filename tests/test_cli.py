"""The `pocovid` command itself: bad option values end as one line naming the option (exit 1, no
traceback, no unrelated hint), `train --config FILE` reaches the training config, help texts show
the config dataclasses' own defaults and name only commands that exist."""

import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pocovid.cli import app
from pocovid.training.config import ConfigError, TrainConfig

README = Path(__file__).resolve().parents[1] / "README.md"
WIDE = {"COLUMNS": "400"}  # one help row per option, nothing wrapped


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def assert_one_line_error(r, option: str):
    assert r.exit_code == 1, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and option in lines[0], lines[0]
    assert "--model" not in lines[0] and "Traceback" not in r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)


# ------------------------------------------------------------------------------ bad values

BAD = {
    "explainer": (["analyze", "x.mp4", "--explainer", "foo"], "--explainer"),
    "rate": (["analyze", "x.mp4", "--rate", "-1"], "--rate"),
    "key_frames": (["analyze", "x.mp4", "--key-frames", "-2"], "--key-frames"),
    "aggregation": (["evaluate", "DIR", "--out", "OUT", "--aggregation", "median"], "--aggregation"),
    "evaluate_rate": (["evaluate", "DIR", "--out", "OUT", "--rate", "-3"], "--rate"),
    "port": (["serve", "--port", "99999"], "--port"),
    "negative_port": (["serve", "--port", "-1"], "--port"),
    "workers": (["serve", "--workers", "0"], "--workers"),
    "epochs": (["train", "DIR", "--splits", "S", "--out", "OUT", "--epochs", "0"], "--epochs"),
    "train_class": (["train", "DIR", "--splits", "S", "--out", "OUT", "--classes", "flu"], "--classes"),
    "train_aggregation": (["train", "DIR", "--splits", "S", "--out", "OUT", "--aggregation", "median"],
                          "--aggregation"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_value_is_one_line_naming_the_option(case, tmp_path):
    args, option = BAD[case]
    args = [str(tmp_path / a) if a in ("DIR", "OUT", "S") else a for a in args]
    assert_one_line_error(cli(*args), option)


def test_real_command_prints_no_traceback(tmp_path):
    # the installed entry point, not the test runner: what a user sees
    for args in (["evaluate", tmp_path, "--out", tmp_path / "o", "--aggregation", "median"],
                 ["serve", "--port", "99999"]):
        r = subprocess.run([sys.executable, "-m", "pocovid.cli", *map(str, args)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.strip().count("\n") == 0 and args[-2] in r.stderr, r.stderr


# ------------------------------------------------------------------------------ train --config

def test_config_file_reaches_the_config(tmp_path):
    f = tmp_path / "train.toml"
    f.write_text('epochs = 7\nclasses = ["covid", "regular"]\nprobe = "all"\nrate_hz = 0\nlr = 1\n'
                 'label_smoothing = 0.0\nrefit = false\n[augment]\nvflip = true\ngamma = [0.5, 2]\n')
    cfg = TrainConfig.from_file(f)
    assert cfg == dataclasses.replace(
        TrainConfig(), epochs=7, classes=("covid", "regular"), probe=None, rate_hz=None, lr=1.0, label_smoothing=0.0,
        refit=False, augment=dataclasses.replace(TrainConfig().augment, vflip=True, gamma=(0.5, 2.0)))
    # a config written as TOML reads back equal; a model file's training_config too
    (g := tmp_path / "again.toml").write_text(cfg.to_toml())
    assert TrainConfig.from_file(g) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_train_dry_run_shows_file_then_options(tmp_path):
    f = tmp_path / "train.toml"
    f.write_text("epochs = 7\npatience = 2\n[augment]\nvflip = true\n")
    r = cli("train", tmp_path, "--splits", tmp_path / "s.json", "--out", tmp_path / "run", "--config", f,
            "--patience", "3", "--weight-decay", "0", "--dry-run")
    assert r.exit_code == 0, r.stderr
    (printed := tmp_path / "printed.toml").write_text(r.stdout)
    cfg = TrainConfig.from_file(printed)
    assert (cfg.epochs, cfg.patience, cfg.weight_decay, cfg.augment.vflip) == (7, 3, 0.0, True)
    assert cfg.lr == TrainConfig.lr  # untouched fields keep the dataclass default


def test_train_passes_the_config_to_train_run(tmp_path, monkeypatch):
    import pocovid.data
    import pocovid.training

    got = {}

    def fake_train_run(splits, out, cfg, **kw):
        got["cfg"] = cfg
        raise typer.Exit(0)

    monkeypatch.setattr(pocovid.training, "train_run", fake_train_run)
    monkeypatch.setattr(pocovid.data, "load_splits", lambda path: "splits")
    (f := tmp_path / "train.toml").write_text('backbone = "vgg16"\nsize = 96\n')
    r = cli("train", tmp_path, "--splits", "s.json", "--out", tmp_path / "run", "--config", f, "--no-crop")
    assert r.exit_code == 0, r.stderr
    assert got["cfg"] == dataclasses.replace(TrainConfig(), backbone="vgg16", size=96, crop=False)


@pytest.mark.parametrize("text,key,problem", [
    ("epoch = 3\n", "epoch", "unknown key"),
    ("[augment]\nflip = true\n", "augment.flip", "unknown key"),
    ('epochs = "ten"\n', "epochs", "must be an integer"),
    ("lr = true\n", "lr", "must be a number"),
    ('classes = ["covid", 3]\n', "classes", "must be a list of strings"),
    ("augment = 3\n", "augment", "must be a table"),
    ("epochs = 0\n", "epochs", "must be >= 1"),
    ('aggregation = "median"\n', "aggregation", "unknown method"),
])
def test_bad_config_file_is_one_line_naming_file_and_key(tmp_path, text, key, problem):
    f = tmp_path / "train.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_file(f)
    assert (e.value.key, e.value.source) == (key, f) and problem in e.value.problem
    r = cli("train", tmp_path, "--splits", tmp_path / "s.json", "--out", tmp_path / "run", "--config", f)
    assert_one_line_error(r, f"{f}: {key}: ")


def test_unreadable_config_file_is_one_line(tmp_path):
    (bad := tmp_path / "bad.toml").write_text("epochs = = 3\n")
    (other := tmp_path / "train.ini").write_text("")
    for f, why in ((bad, "not valid TOML"), (other, "unsupported config file type"), (tmp_path / "no.toml", "no such")):
        r = cli("train", tmp_path, "--splits", tmp_path / "s.json", "--out", tmp_path / "run", "--config", f)
        assert_one_line_error(r, str(f))
        assert why in r.stderr


# ------------------------------------------------------------------------------ help texts

def _train_fields():
    return {f.name: getattr(TrainConfig(), f.name) for f in dataclasses.fields(TrainConfig)} | {
        "vflip": TrainConfig().augment.vflip}


def _analysis_fields():
    from pocovid.analysis import AnalysisConfig

    return {f.name: getattr(AnalysisConfig(), f.name) for f in dataclasses.fields(AnalysisConfig)}


def _server_fields():
    pytest.importorskip("fastapi")
    from pocovid.server.config import ServerConfig

    return {f.name: getattr(ServerConfig(), f.name) for f in dataclasses.fields(ServerConfig)}


def _evaluate_defaults():
    from pocovid.evaluation import evaluate_folder

    return {k: p.default for k, p in inspect.signature(evaluate_folder).parameters.items()}


def _split_defaults():
    from pocovid.data import patient_folds

    return {k: p.default for k, p in inspect.signature(patient_folds).parameters.items()}


def _shown(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return ",".join(v) if isinstance(v, tuple) else str(v)


@pytest.mark.parametrize("command,owner", [("train", _train_fields), ("analyze", _analysis_fields),
                                           ("serve", _server_fields), ("evaluate", _evaluate_defaults),
                                           ("data split", _split_defaults)])
def test_help_shows_the_dataclass_defaults(command, owner):
    defaults = owner()
    cmd = typer.main.get_command(app)
    for word in command.split():
        cmd = cmd.commands[word]
    params = {p.opts[0]: p.name for p in cmd.params if p.opts}
    r = cli(*command.split(), "--help")
    assert r.exit_code == 0 and "{" not in "".join(ln for ln in r.stdout.splitlines() if "Usage:" not in ln)
    seen = {}
    for line in r.stdout.splitlines():
        words = line.strip("│ ").split()
        m = re.search(r"\(default '?([^\s:;()']+)'?[;)]", line)
        if words and words[0] in params and m:
            seen[params[words[0]]] = m.group(1)
    assert seen, r.stdout
    for name, text in seen.items():
        assert name in defaults, f"{command} --help shows a default for {name}, which its config lacks"
        assert text == _shown(defaults[name]), (command, name, text, defaults[name])
    if command == "train":  # every TrainConfig field with a default worth showing is reachable
        shown_or_none = set(seen) | {n for n, v in defaults.items() if v is None} | {"augment"}
        assert shown_or_none >= set(defaults), set(defaults) - shown_or_none


def _command_paths():
    root = typer.main.get_command(app)

    def walk(cmd, path):
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, (*path, name))

    return root, set(walk(root, ()))


def _names_a_command(words: list[str], root) -> bool:
    cmd = root
    for w in words:
        subs = getattr(cmd, "commands", None)
        if subs is None or w.startswith("-"):
            return True  # arguments and options of a command, or a group's --help
        if w not in subs:
            return False
        cmd = subs[w]
    return True


def test_help_and_readme_name_only_commands_that_exist():
    root, paths = _command_paths()
    texts = {}
    for path in sorted(paths):
        r = cli(*path, "--help")
        assert r.exit_code == 0, (path, r.stderr)
        texts[" ".join(path) or "pocovid"] = r.stdout
    refs = [(where, m.split()) for where, text in texts.items() for m in re.findall(r"`pocovid ([^`]*)`", text)]
    usage = README.read_text().split("## Usage", 1)[1].split("```", 2)[1]
    refs += [("README", line.split("#")[0].split()[1:]) for line in usage.splitlines()
             if line.startswith("pocovid ")]
    assert len(refs) > 10
    bad = [f"{where}: pocovid {' '.join(words)}" for where, words in refs if not _names_a_command(words, root)]
    assert not bad, bad


# ------------------------------------------------------------------------------ analyze end to end

def test_analyze_prints_one_line_per_file_and_lists_failures(model_file, tmp_path):
    import json

    from pocovid.phantom import write_phantom

    clip = tmp_path / "scan.mp4"
    write_phantom(clip, label="covid", n_frames=8, fps=10.0, width=240, height=200, seed=1)
    r = cli("analyze", clip, tmp_path / "missing.mp4", "--model", model_file, "--out", tmp_path / "out",
            "--quiet", "--key-frames", "1", "--rate", "0")
    assert r.exit_code == 1, r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith(str(clip))]
    assert "most likely COVID-19" in line and "uncertainty" in line, line
    assert "missing.mp4: no such file" in r.stderr and "Traceback" not in r.stderr
    r = cli("analyze", clip, "--model", model_file, "--out", tmp_path / "out", "--quiet", "--json", "--key-frames", "1")
    assert r.exit_code == 0, r.stderr
    assert [e["status"] for e in json.loads(r.stdout)] == ["ok"]  # a list, even for one file


def test_schema_command_prints_the_result_schema():
    import json

    from pocovid.analysis.result import result_schema

    r = CliRunner().invoke(app, ["schema"])
    assert r.exit_code == 0 and json.loads(r.stdout) == result_schema()


def test_help_keeps_square_brackets():
    """Rich reads `[word]` in a help text as markup and drops it (pip install 'pocovid[ray]' showed as
    'pocovid'): every bracketed word an option's help holds is in the rendered --help."""
    root, paths = _command_paths()
    checked = 0
    for path in sorted(paths):
        cmd = root
        for w in path:
            cmd = cmd.commands[w]
        texts = [p.help or "" for p in getattr(cmd, "params", [])] + [cmd.help or ""]
        words = {m.replace("\\", "") for t in texts for m in re.findall(r"\\?\[[a-z_]+\]", t)}
        if not words:
            continue
        r = cli(*path, "--help")
        assert r.exit_code == 0, r.output
        for w in words:
            assert w in r.stdout, (path, w)
            checked += 1
    assert checked >= 2  # the ray extra and the [augment] table at least
