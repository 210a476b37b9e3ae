"""`analyze_files(..., engine="ray")`: one Ray task per recording.

    start_ray(workers=2)        # or let analyze_files start a local Ray (all cores, or `workers`)
    analyze_files(paths, model, "out", engine="ray")

The model is put into Ray's object store once; each worker process deserialises it on its first
task and keeps it (`_MODELS`), so a worker loads the model once however many recordings it takes.
A model run from its cached graph (`GraphModel`: a graph runtime, no PyTorch in the caller) travels
as its description and its graph's bytes, with `auto` resolved to the runtime it stands for: a
worker writes the graph into its own cache when it is not there (a cluster node) and never imports
PyTorch either (~1 s and ~0.2 GB less per worker).
A task analyses its recording into a temporary folder on its own machine and returns the files
(result.json and the rest) as bytes; the caller writes them into the output folder exactly as the
local loop does (a fresh hidden folder renamed into place), so the outputs are the same and a
cluster needs no shared output folder. The recordings are read by path: on a cluster every node
must see them at the same path (a shared filesystem; absolute paths), and have pocovid installed.
At most `2 x CPUs` tasks are in flight (Ray's `ray.wait` pattern for bounded pending tasks), so
results wait in the object store only briefly. Ray is an optional dependency: `pip install
'pocovid[ray]'`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pocovid.analysis.analyze import AnalysisConfig, analyze_recording
from pocovid.analysis.result import AnalysisResult
from pocovid.errors import PocovidError
from pocovid.files import write_bytes

_MODELS: dict[str, object] = {}  # per worker process: object id -> the model (loaded on its first task)


def _model_in_worker(holder: list):
    """The model of `holder` ([ObjectRef], nested so that Ray hands the reference, not the value),
    deserialised once per worker process."""
    import ray

    key = holder[0].hex()
    if key not in _MODELS:
        _MODELS.clear()  # a new batch's model: the old one goes
        value = ray.get(holder[0])
        _MODELS[key] = _graph_model_here(*value) if isinstance(value, tuple) else value
    return _MODELS[key]


def _graph_model_here(model, graph: bytes):
    """A shipped `GraphModel` whose graph is in this process's cache (written there when missing,
    as the runtimes read it: `runtime.graph_path_of`)."""
    from pocovid.models.runtime import graph_path_of

    path = graph_path_of(model.fingerprint)
    if not path.is_file():
        write_bytes(path, graph)  # atomic: workers of one node may race to write the same file
    return dataclasses.replace(model, graph=path)


def _shipped(model, cfg: AnalysisConfig) -> tuple[object, AnalysisConfig]:
    """What goes to the object store for `model`, and the tasks' configuration."""
    from pocovid.models.graph_model import GraphModel

    if not isinstance(model, GraphModel):
        return model, cfg
    from pocovid.models.runtime import cached_choice_of

    if cfg.runtime == "auto":  # a worker may have measured nothing: the choice made here stands
        cfg = dataclasses.replace(cfg, runtime=cached_choice_of(model.fingerprint) or "auto")
    return (model, model.graph.read_bytes()), cfg


def analyze_task(holder: list, path: str, cfg: AnalysisConfig) -> tuple:
    """One recording, in a Ray worker: ("ok", {file name: bytes}) or ("failed", reason)."""
    from pocovid.analysis.batch import failure_reason

    model = _model_in_worker(holder)
    tmp = Path(tempfile.mkdtemp(prefix="pocovid-ray-"))
    try:
        analyze_recording(path, model, tmp, cfg)
        return "ok", {p.name: p.read_bytes() for p in tmp.iterdir() if p.is_file()}
    except Exception as e:  # one bad file never stops the batch
        return "failed", failure_reason(path, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _quiet_token_default(record: logging.LogRecord) -> bool:
    """Drop Ray's note, at every local start, that it protects the local cluster with a token (its
    default, which pocovid keeps): the user asked for nothing, and the line reads as a problem."""
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def start_ray(address: str | None = None, workers: int | None = None) -> bool:
    """Connect to Ray (a cluster at `address`, or a local Ray on `workers` CPUs); True when this
    call started it (and so shuts it down)."""
    try:
        import ray
    except ImportError:
        raise PocovidError("the ray engine needs Ray: pip install 'pocovid[ray]'") from None
    if ray.is_initialized():
        return False
    if not address:
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_quiet_token_default)
    kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **kw)
    else:
        ray.init(num_cpus=workers or os.cpu_count() or 1, **kw)
    return True


def analyze_with_ray(todo, model, out_dir: Path, cfg: AnalysisConfig, report: Callable, n: int, *,
                     address: str | None = None, workers: int | None = None) -> Iterator[tuple[int, tuple]]:
    """(index, outcome) per recording of `todo` [(index, path)] as Ray finishes them: ("ok",
    AnalysisResult, hidden folder in `out_dir` holding its files) or ("failed", reason)."""
    import ray

    from pocovid.analysis.batch import BatchProgress

    started = start_ray(address, workers)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        in_flight = max(1, 2 * min(cpus, workers or cpus))
        # a crashed worker retries once (a lost node); a recording that fails raises nothing
        task = ray.remote(num_cpus=1, max_retries=1)(analyze_task)
        value, cfg = _shipped(model, cfg)
        holder = [ray.put(value)]
        waiting = list(todo)[::-1]
        pending: dict = {}
        while waiting or pending:
            while waiting and len(pending) < in_flight:
                i, p = waiting.pop()
                pending[task.remote(holder, str(p), cfg)] = (i, p)
                report(BatchProgress(i, n, str(p), "start"))
            done, _ = ray.wait(list(pending), num_returns=1)
            i, p = pending.pop(done[0])
            yield i, _outcome(done[0], p, out_dir)
    finally:
        if started:
            ray.shutdown()


def _outcome(ref, path, out_dir: Path) -> tuple:
    import ray

    try:
        got = ray.get(ref)
    except Exception as e:  # the worker died (memory, a crash in a decoder): this recording fails alone
        reason = " ".join(str(e).split())[:200]
        return "failed", f"{path}: the analysis's Ray worker failed ({type(e).__name__}: {reason})"
    if got[0] == "failed":
        return got
    files = got[1]
    tmp = Path(tempfile.mkdtemp(prefix=".pocovid-", dir=out_dir))
    for name, data in files.items():
        write_bytes(tmp / Path(name).name, data)
    return "ok", AnalysisResult.model_validate_json(files["result.json"]), tmp
