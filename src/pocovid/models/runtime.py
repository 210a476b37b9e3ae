"""Where the frame pass runs: PyTorch, ONNX Runtime or OpenVINO, behind one small object.

    engine = get_runtime(model, "auto")       # or "torch", "onnx", "openvino"
    out = engine.infer(model.input_tensor(pixels), cams=True)   # FrameOutput, as model.infer gives

Every runtime has `FrameClassifier.infer`'s contract, so nothing downstream knows which ran:
- torch:    the model itself, on the compiled trunk (models/compiled.py) when there is one
- onnx:     onnxruntime on the model's exported graph (models/export.py)
- openvino: OpenVINO on the same graph, fp32 (f32 inference precision: no bf16 on CPUs that have it)
- openvino-bf16: the same in bfloat16 where the CPU multiplies it in hardware (AMX, AVX512-BF16), fp32
            elsewhere; asked for by name only, never by `auto`: results then differ a little from
            fp32 (docs/export.md), and most clinic laptops have no bfloat16 arithmetic

The graph runtimes run one frame per call on as many parallel streams as torch has threads (each
stream one thread): on a small CPU shared with other work that is up to twice the frames/s of one
call of many frames on all threads, which waits at every layer for its slowest thread. The exported
graph is kept in the user cache (`graphs/`, keyed by the model's fingerprint, the torch version and
pocovid's model code) and OpenVINO's compiled model beside it (`openvino/`), so only the first
process exports (a second or more); later ones read the file.

`auto` is the fastest runtime installed, measured once on this machine for this model (every head
and CAMs, a few batches) and remembered in the user cache (`runtimes.json` in `cache_dir()`),
keyed by the model's fingerprint, the runtimes' versions and the thread count. A runtime that is
not installed (or fails to build) falls back to torch with a one-line notice, never an error.
Each runtime is built once per model and kept while the model lives (a batch or a service builds
it once). The runtimes use as many threads as torch (`torch.get_num_threads()`).

    engine = graph_runtime(model, "onnx", "model-int8.onnx")   # a `pocovid export` file instead (analyze --graph)

`graph_runtime` runs a graph file written by `pocovid export` (fp32 or int8) instead of the
runtime's own export, after `read_graph_file` checked that it is an export of this very model (the
model fingerprint in its metadata); a missing or failing runtime is then an error, not torch.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pocovid import __version__
from pocovid.errors import ModelError
from pocovid.files import path_text, write_bytes, write_json
from pocovid.models.graph_model import GraphModel, remember_model_file
from pocovid.models.onnx_format import (INPUT, INSTALL_HINT, ONNX_FORMAT, ONNX_FORMAT_VERSION, OPSET, PRECISIONS,
                                        output_names)
from pocovid.models.outputs import FrameOutput

RUNTIMES = ("torch", "onnx", "openvino")  # `auto` chooses among these: every one fp32
#: runtimes in a reduced precision, asked for by name only: name -> (runtime, precision)
REDUCED = {"openvino-bf16": ("openvino", "bf16")}
CHOICES = ("auto", *RUNTIMES, *REDUCED)
MODULES = {"onnx": "onnxruntime", "openvino": "openvino"}
INSTALL = {"onnx": INSTALL_HINT, "openvino": "pip install 'pocovid[openvino]'"}
CACHE_FILE = "runtimes.json"
GRAPHS, OPENVINO_CACHE = "graphs", "openvino"  # cache_dir() folders: exported graphs, OpenVINO's compiled models
KEEP_GRAPHS = 8  # exported graphs kept in the cache (the newest; one per model and pocovid code)
MEASURE_BATCH, MEASURE_REPEATS = 8, 3
#: how `choose_runtime` measured: a cached choice measured another way is measured again
MEASURE_SCHEME = 2  # 2: graph runtimes on parallel single-thread streams

log = logging.getLogger("pocovid")
_BUILT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {name: (key, runtime)}
_LOCK = threading.Lock()
_NOTICED: set[str] = set()
_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> (weights key, hash)


def cache_dir() -> Path:
    """pocovid's cache folder: $POCOVID_CACHE_DIR, else $XDG_CACHE_HOME/pocovid, else ~/.cache/pocovid."""
    if os.environ.get("POCOVID_CACHE_DIR"):
        return Path(os.environ["POCOVID_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pocovid"


def _notice(text: str) -> None:
    """One line on stderr (through logging: a service's log gets it), once per process."""
    if text not in _NOTICED:
        _NOTICED.add(text)
        log.warning("pocovid: %s", text)


def torch_version() -> str:
    """PyTorch's version, without importing it when it is not imported yet (~1 s)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    import importlib.metadata

    return importlib.metadata.version("torch")


def threads() -> int:
    """Threads the runtimes use: torch's (`torch.set_num_threads` honoured) once torch is imported;
    without it what torch would take: $OMP_NUM_THREADS (Ray sets it for its workers), else this
    process's CPUs."""
    if "torch" in sys.modules:
        return max(1, sys.modules["torch"].get_num_threads())
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        n = 0
    if n < 1:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n)


def base_runtime(name: str) -> str:
    """The runtime a choice runs on: "openvino" for "openvino-bf16", else `name` itself."""
    return REDUCED[name][0] if name in REDUCED else name


def runtime_precision(name: str) -> str:
    """The precision the frame pass of runtime `name` (not "auto": every candidate is fp32) has on
    this CPU: bf16 for "openvino-bf16" where OpenVINO has bfloat16 arithmetic here, else fp32."""
    if name not in REDUCED:
        return "fp32"
    return REDUCED[name][1] if _openvino_has_bf16() else "fp32"


@functools.cache
def _openvino_has_bf16() -> bool:
    """OpenVINO's CPU plugin runs bfloat16 natively here (asked once per process: a new `Core` each)."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # not installed, or no CPU plugin: it falls back to torch, fp32
        return False


def runtime_version(name: str) -> str | None:
    """The installed version of a runtime, None when it cannot be imported."""
    name = base_runtime(name)
    try:
        if name == "torch":
            return torch_version()
        if name in MODULES and importlib.util.find_spec("onnx") is None:
            return None  # the exporter needs it (found, not imported: importing onnx takes ~0.5 s)
        if name == "onnx":
            import onnxruntime
            return onnxruntime.__version__
        if name == "openvino":
            import openvino
            return openvino.__version__
    except Exception:  # an import that fails in any way: the runtime is not there
        return None
    raise ModelError(f"unknown runtime {name!r} (use {', '.join(CHOICES)})")


def installed_version(name: str) -> str | None:
    """The version a runtime's package declares, without importing it (~0.2 s each for onnxruntime
    and openvino): what the cached `auto` choice is keyed by. None when it is not installed."""
    import importlib.metadata

    if name == "torch":
        return torch_version()
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec(MODULES[name]) is None:
        return None  # the exporter needs onnx (see runtime_version)
    try:
        return importlib.metadata.version(MODULES[name])
    except importlib.metadata.PackageNotFoundError:
        return None


def available_runtimes() -> list[str]:
    """The runtimes installed here, torch first."""
    return [n for n in RUNTIMES if runtime_version(n) is not None]


# ------------------------------------------------------------------------------------ the runtimes


class TorchRuntime:
    """The model itself (`FrameClassifier.infer`), on its compiled trunk when there is one."""

    name = "torch"
    precision = "fp32"
    graph = None  # `GraphFile`: the exported file a graph runtime runs (`graph_runtime`); None: its own

    def __init__(self, model, build: bool = True) -> None:
        from pocovid.models.compiled import compiled_trunk

        if isinstance(model, GraphModel):
            raise ModelError("this model runs from its exported graph only (no weights loaded): use runtime "
                             "onnx or openvino, or load the model file")
        self.model = model
        self.trunk = compiled_trunk(model, model.input_config.size, build)

    def infer(self, x, cams: bool = True, finding_cams: bool = False) -> FrameOutput:
        if isinstance(x, np.ndarray):
            import torch

            x = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        return self.model.infer(x, cams=cams, trunk=self.trunk, finding_cams=finding_cams)


M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters


def set_malloc_options(options: dict[int, int]) -> None:
    """glibc only, once per process for the same `options`: `mallopt(param, value)` for each. Any of
    them turns glibc's dynamic thresholds off. Another C library keeps its own ways."""
    key = tuple(sorted(options.items()))
    if key in _MALLOC_SET or not sys.platform.startswith("linux"):
        return
    _MALLOC_SET.add(key)
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        for param, value in options.items():
            libc.mallopt(param, value)
    except (OSError, AttributeError):
        pass


_MALLOC_SET: set[tuple] = set()


def _map_large_blocks() -> None:
    """Blocks of 128 KiB and more (glibc's starting threshold) are always mmap'ed and go back to the
    system when freed. Its dynamic threshold rises to the largest block freed (a decoded 800x600
    frame: 1.4 MB; a batch of input: 19 MB), after which those land in the heaps of the threads'
    arenas, which keep them: peak memory of `analyze` on an 800x600 clip on openvino 0.59 -> 0.47 GB.
    Not for torch: its activations, allocated afresh at every layer, would then be mapped and faulted
    in at every layer (the torch frame pass ran 1.7x slower)."""
    set_malloc_options({M_MMAP_THRESHOLD: 128 * 1024})


class _GraphRuntime:
    """A runtime on the exported graph: the graph's named outputs -> `FrameOutput`. Frames run one
    per call on `streams` parallel single-thread streams (see the module docstring)."""

    name = ""
    precision = "fp32"  # an exported file's own (`graph_runtime`): fp32 or int8
    graph = None  # `GraphFile`: the exported file it runs (`graph_runtime`); None: the model's own graph

    def __init__(self, model) -> None:
        self.names = output_names(model)
        self.streams = threads()

    def _run_frames(self, frames: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Every output of each (1, 3, S, S) frame, in order."""
        raise NotImplementedError

    def infer(self, x, cams: bool = True, finding_cams: bool = False) -> FrameOutput:
        x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)  # a torch tensor, or numpy
        x = np.ascontiguousarray(x, np.float32)
        parts = self._run_frames([x[i:i + 1] for i in range(len(x))])
        got = {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(self.names)}
        out = {f.name: got.get(f.name) for f in fields(FrameOutput)}
        out["cams"] = out["cams"] if cams else None
        out["finding_cams"] = out["finding_cams"] if finding_cams else None
        return FrameOutput(**out)


class OnnxRuntime(_GraphRuntime):
    """onnxruntime (CPU) on the exported graph (`path`: an exported file instead, e.g. an int8 one).
    One session, one thread a call, called from `streams` threads at once (a session runs
    concurrent calls); the threads belong to a pool joined before `infer` returns."""

    name = "onnx"

    def __init__(self, model, path: str | os.PathLike | None = None) -> None:
        import onnxruntime as ort

        super().__init__(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        graph = _graph(model, path)
        self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.names, {INPUT: x})

    def _run_frames(self, frames):
        if self.streams == 1 or len(frames) == 1:
            return [self._run(f) for f in frames]
        with ThreadPoolExecutor(max_workers=self.streams, thread_name_prefix="pocovid-onnx") as pool:
            return list(pool.map(self._run, frames))


class OpenVinoRuntime(_GraphRuntime):
    """OpenVINO (CPU) on the exported graph: `streams` inference streams of one thread each, fed
    through an asynchronous queue of two requests a stream (OpenVINO's own threads). `precision`
    "fp32" (what `auto` measures) or "bf16": OpenVINO's bfloat16 inference where this CPU has it,
    else fp32 with a notice; `self.precision` says which ran."""

    name = "openvino"

    def __init__(self, model, path: str | os.PathLike | None = None, precision: str = "fp32") -> None:
        import openvino as ov

        if precision not in ("fp32", "bf16"):
            raise ModelError(f"OpenVINO precision fp32 or bf16, not {precision!r}")
        super().__init__(model)
        graph = _graph(model, path)
        # no pinning: OpenVINO pins its threads to the first cores on Linux, so two processes (Ray
        # workers, a server beside a batch) each on one stream share one core (half the frames/s each)
        hint = {"fp32": "f32", "bf16": "bf16"}[precision]
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "THROUGHPUT",
                  "NUM_STREAMS": self.streams, "INFERENCE_NUM_THREADS": self.streams, "ENABLE_CPU_PINNING": False}
        core = ov.Core()
        try:  # the compiled model cached beside the graph: a later process imports it (~0.05 s, not ~0.3 s)
            core.set_property({"CACHE_DIR": str(cache_dir() / OPENVINO_CACHE)})
            self.compiled = core.compile_model(graph if isinstance(graph, str) else core.read_model(graph),
                                               "CPU", config)
        except Exception:  # e.g. an unwritable cache: compile in memory
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(graph), "CPU", config)
        self.n_outputs = len(self.compiled.outputs)
        got = str(self.compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
        self.precision = "bf16" if "bf16" in got or "bfloat16" in got else "fp32"
        if precision == "bf16" and self.precision != "bf16":  # a CPU without bfloat16 arithmetic
            _notice("OpenVINO has no bfloat16 on this CPU; runtime openvino-bf16 runs fp32")
        # two requests a stream: the next frame is waiting when a stream finishes (~10 % more frames/s)
        self.queue = ov.AsyncInferQueue(self.compiled, 2 * self.streams)
        self._lock = threading.Lock()  # one queue, not to be shared by threads at once

    def _run_frames(self, frames):
        results: list = [None] * len(frames)

        def done(request, k):  # copies: the request reuses its buffers
            results[k] = [np.array(request.get_output_tensor(i).data) for i in range(self.n_outputs)]

        with self._lock:
            self.queue.set_callback(done)
            for k, f in enumerate(frames):
                self.queue.start_async({0: f}, k)
            self.queue.wait_all()
        if any(r is None for r in results):
            raise ModelError("OpenVINO returned no output for a frame")
        return results


def _openvino_bf16(model, path: str | os.PathLike | None = None) -> OpenVinoRuntime:
    return OpenVinoRuntime(model, path, precision="bf16")


_KINDS = {"onnx": OnnxRuntime, "openvino": OpenVinoRuntime, "openvino-bf16": _openvino_bf16}


# ------------------------------------------------------------------------------------ the graph, cached

_CODE_HASH: list[str] = []


def _code_hash() -> str:
    """A hash of the models package's source (what the exported graph is traced from): a changed
    `infer` is exported again although the weights are the same."""
    if not _CODE_HASH:
        h = hashlib.sha256()
        for p in sorted(Path(__file__).parent.glob("*.py")):
            h.update(p.name.encode())
            h.update(p.read_bytes())
        _CODE_HASH.append(h.hexdigest()[:12])
    return _CODE_HASH[0]


def _graph(model, path) -> str | bytes:
    """The graph a runtime reads: the file `path`, else the model's cached graph (or its bytes)."""
    graph = graph_source(model) if path is None else path
    return graph if isinstance(graph, bytes) else str(graph)


def graph_path(model) -> Path:
    """Where `model`'s exported fp32 graph is cached: keyed by the model's fingerprint and by what
    the export depends on (torch, pocovid and its model code, the opset)."""
    return graph_path_of(model_fingerprint(model))


def graph_path_of(fingerprint: str) -> Path:
    """`graph_path` of the model with this fingerprint (`model_fingerprint`)."""
    key = hashlib.sha256(f"{torch_version()}|{__version__}|{OPSET}|{_code_hash()}".encode()).hexdigest()[:12]
    return cache_dir() / GRAPHS / f"{fingerprint}-{key}.onnx"


def graph_source(model) -> Path | bytes:
    """`model`'s fp32 ONNX graph (no metadata) for the graph runtimes: the cached file (exported and
    written there when missing; the oldest graphs beyond KEEP_GRAPHS are removed), or the bytes
    when the cache cannot be written."""
    path = graph_path(model)
    if path.is_file():
        return path
    if isinstance(model, GraphModel):  # its cached graph went meanwhile
        raise ModelError(f"{path_text(path)}: the model's cached graph is gone (the cache was cleared); run again")
    from pocovid.models.export import onnx_bytes

    data = onnx_bytes(model, metadata=False)
    try:
        write_bytes(path, data)
    except OSError as e:
        _notice(f"cannot write the runtime cache ({e}); the model is exported again next time")
        return data
    graphs = sorted(path.parent.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in graphs[KEEP_GRAPHS:]:
        old.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------ a graph file given


@dataclass(frozen=True)
class GraphFile:
    """A `pocovid export` file checked against the model it is to run for (`read_graph_file`)."""

    path: str  # as given
    name: str  # its file name (what a result records)
    sha256: str  # of the file's bytes (what `--resume` compares)
    precision: str  # fp32 or int8, from its metadata
    meta: dict  # its metadata, decoded (models/export.py)


_GRAPH_FILES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {file key: GraphFile}


def _graph_metadata(path: str) -> dict:
    """The metadata_props of the ONNX file `path`, decoded: with onnxruntime, else with onnx."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        pass
    else:
        from pocovid.models.onnx_format import read_onnx_metadata

        return read_onnx_metadata(path)
    try:
        import onnx
    except ImportError:
        raise ModelError(f"{path_text(path)}: reading an ONNX graph needs onnxruntime or onnx ({INSTALL_HINT})") \
            from None
    out = {}
    for p in onnx.load(path, load_external_data=False).metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    return out


def read_graph_file(path: str | os.PathLike, model) -> GraphFile:
    """The exported graph `path` (`pocovid export`, fp32 or int8), checked to be an export of
    `model`: its metadata's `format` is pocovid's and its `model_fingerprint` is `model`'s, and it
    has every output the model's frame pass reads. Raises ModelError, one line naming the file and
    why (missing, unreadable, not ONNX, not a pocovid export, another model). Read once per model
    and file (its size and modification time)."""
    where = path_text(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise ModelError(f"{where}: cannot read the graph file ({e.strerror or type(e).__name__})") from None
    if not os.path.isfile(path):
        raise ModelError(f"{where}: not a graph file (a folder or a device)")
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, _weights_key(model))
    with _LOCK:
        hit = _GRAPH_FILES.get(model, {}).get(key)
    if hit is not None:
        return hit
    try:  # streamed: any file may be given, and only its hash is kept
        with open(path, "rb") as f:
            sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise ModelError(f"{where}: cannot read the graph file ({e.strerror or type(e).__name__})") from None
    try:
        meta = _graph_metadata(str(path))
    except ModelError:
        raise
    except Exception as e:  # onnxruntime / onnx refuse it: not an ONNX graph (or a damaged one)
        reason = " ".join(str(e).split())[:160]
        raise ModelError(f"{where}: not a readable ONNX graph ({type(e).__name__}: {reason})") from None
    if meta.get("format") != ONNX_FORMAT:
        raise ModelError(f"{where}: not a pocovid export (its metadata has no format {ONNX_FORMAT!r}; write the file "
                         "with `pocovid export`)")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > ONNX_FORMAT_VERSION:
        raise ModelError(f"{where}: pocovid export format version {version!r}, this pocovid reads up to "
                         f"{ONNX_FORMAT_VERSION}")
    theirs, ours = meta.get("model_fingerprint"), model_fingerprint(model)
    if not theirs:
        raise ModelError(f"{where}: its metadata does not identify the model it was exported from (no "
                         "model_fingerprint: written by an older pocovid); export the model again with "
                         "`pocovid export`")
    if theirs != ours:
        raise ModelError(f"{where}: an export of another model (model fingerprint {theirs} in the file, {ours} of "
                         "the model in use); export this model with `pocovid export`, or pass the model it "
                         "was exported from")
    precision = meta.get("precision")
    if precision not in PRECISIONS:
        raise ModelError(f"{where}: unknown precision {precision!r} in its metadata (pocovid writes "
                         f"{' or '.join(PRECISIONS)})")
    missing = [n for n in output_names(model) if n not in (meta.get("outputs") or {})]
    if missing:
        raise ModelError(f"{where}: the graph lacks output(s) {', '.join(missing)}; export the model again")
    graph = GraphFile(path=str(path), name=path_text(Path(path).name), sha256=sha256,
                      precision=precision, meta=meta)
    with _LOCK:
        _GRAPH_FILES.setdefault(model, {})[key] = graph
    return graph


def graph_runtime_name(name: str = "auto") -> str:
    """The runtime that runs a given graph file: `name` (onnx or openvino), or for "auto" onnx
    (the runtime its int8 ranges were calibrated with), else openvino, whichever is installed.
    Raises ModelError for torch and when that runtime is not installed: no fallback (the file
    was asked for)."""
    if name not in CHOICES:
        raise ModelError(f"unknown runtime {name!r} (use {', '.join(CHOICES)})")
    if name == "torch":
        raise ModelError("an exported graph runs on runtime onnx or openvino, not torch")
    if name in REDUCED:  # the file's own precision (fp32 or int8) is what runs
        raise ModelError(f"an exported graph runs at its own precision, on runtime onnx or openvino, not {name}")
    if name == "auto":
        got = [n for n in ("onnx", "openvino") if importlib.util.find_spec(MODULES[n]) is not None]
        if not got:
            raise ModelError(f"an exported graph runs on onnx or openvino, neither is installed ({INSTALL_HINT})")
        return got[0]
    if importlib.util.find_spec(MODULES[name]) is None:
        raise ModelError(f"runtime {name} is not installed ({INSTALL[name]}): it is needed to run the given graph")
    return name


def graph_runtime(model, name: str, path: str | os.PathLike):
    """Runtime `name` (onnx, openvino, or auto: `graph_runtime_name`) on the exported graph file
    `path` of `model` (checked: `read_graph_file`) instead of its own graph; the runtime's
    `precision` and `graph` say what it runs. Built once per model, runtime and file. Raises
    ModelError (one line) when the file is not this model's, or the runtime is missing or cannot
    load it: the file was asked for, so nothing falls back to torch."""
    name = graph_runtime_name(name)
    graph = read_graph_file(path, model)
    slot = f"{name}:{os.path.realpath(graph.path)}:{graph.sha256}"
    rt = _built_slot(model, slot)
    if rt is None:
        try:
            rt = _KINDS[name](model, graph.path)
        except Exception as e:
            reason = " ".join(str(e).split())[:200]
            raise ModelError(f"{path_text(graph.path)}: runtime {name} cannot load the graph "
                             f"({type(e).__name__}: {reason})") from None
        rt.precision, rt.graph = graph.precision, graph
        with _LOCK:
            _BUILT.setdefault(model, {})[slot] = (_weights_key(model), rt)
    _map_large_blocks()
    return rt


def _built_slot(model, slot: str):
    key = _weights_key(model)
    with _LOCK:
        hit = _BUILT.get(model, {}).get(slot)
    return hit[1] if hit is not None and hit[0] == key else None


# ------------------------------------------------------------------------------------ choosing one


def _weights_key(model):
    if isinstance(model, GraphModel):  # fixed weights: those of its graph
        return (int(model.input_config.size), model.fingerprint)
    params = list(model.parameters())
    return (int(model.input_config.size), sum(p._version for p in params), params[0].data_ptr())


def _built(model, name: str, build: bool):
    """The runtime `name` of `model`, built once while its weights stay the same (None when not
    built yet and `build` is False)."""
    key = _weights_key(model)
    with _LOCK:
        held = _BUILT.setdefault(model, {})
        hit = held.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        if not build:
            return None
        try:
            rt = _KINDS[name](model)
        except Exception:
            cached = graph_path(model)
            if not cached.is_file():
                raise
            cached.unlink(missing_ok=True)  # a damaged cached graph: export it again, once
            rt = _KINDS[name](model)
        held[name] = (key, rt)
    remember_model_file(model)  # the next process on this model file may run from the graph, without torch
    return rt


def get_runtime(model, name="torch", build: bool = True):
    """A runtime for `model` (see the module docstring). `build` False: build nothing costly (a
    single image is not worth exporting for; the eager torch model runs it) unless the runtime is
    ready from an earlier call. A runtime that is missing or fails falls back to torch with a notice.
    `name` may be a runtime object already (e.g. `OnnxRuntime(model, "model-int8.onnx")`): returned as is."""
    if not isinstance(name, str):
        return name
    if isinstance(model, GraphModel):  # its graph is there to read, and it has no torch
        build = True
    name = runtime_name(model, name, build)
    if name == "torch":
        return TorchRuntime(model, build)
    if runtime_version(name) is None:
        _notice(f"runtime {name} is not installed ({INSTALL[base_runtime(name)]}); running on torch")
        return TorchRuntime(model, build)
    try:
        rt = _built(model, name, build)
    except Exception as e:  # a runtime that cannot take this model: torch always can
        reason = " ".join(str(e).split())[:200]
        if isinstance(model, GraphModel):  # no torch to fall back on
            raise ModelError(f"runtime {name} failed to load the model's cached graph ({type(e).__name__}: "
                             f"{reason})") from None
        _notice(f"runtime {name} failed to load the model ({type(e).__name__}: {reason}); running on torch")
        return TorchRuntime(model, build)
    if rt is None:
        return TorchRuntime(model, build)
    _map_large_blocks()  # a frame pass on a graph runtime follows (not while `auto` measures)
    return rt


def runtime_name(model, name: str = "auto", build: bool = True) -> str:
    """`name`, with "auto" resolved: the fastest runtime measured here (`choose_runtime`; measuring
    happens once per machine and model, when `build`), else torch."""
    if name not in CHOICES:
        raise ModelError(f"unknown runtime {name!r} (use {', '.join(CHOICES)})")
    if name != "auto":
        return name
    return choose_runtime(model) if build else _cached_choice(model) or "torch"


def model_fingerprint(model) -> str:
    """A hash of the model's architecture, input and weights (what the measured speed depends on)."""
    if isinstance(model, GraphModel):  # the fingerprint its graph was cached under
        return model.fingerprint
    key = _weights_key(model)
    hit = _FINGERPRINTS.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    h = hashlib.sha256(json.dumps([model.architecture(), model.input_config.to_dict()], sort_keys=True).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(v.detach().cpu().numpy()).tobytes())
    _FINGERPRINTS[model] = (key, h.hexdigest()[:16])
    return _FINGERPRINTS[model][1]


def _cache_key(model) -> str:
    return _cache_key_of(model_fingerprint(model))


def _cache_key_of(fingerprint: str) -> str:
    versions = ",".join(f"{n}={v}" for n in RUNTIMES if (v := installed_version(n)) is not None)
    return (f"{fingerprint}|{versions}|threads={threads()}|pocovid={__version__}"
            f"|scheme={MEASURE_SCHEME}")


def _read_cache() -> dict:
    try:
        data = json.loads((cache_dir() / CACHE_FILE).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _cached_choice(model) -> str | None:
    return cached_choice_of(model_fingerprint(model))


def cached_choice_of(fingerprint: str) -> str | None:
    """The runtime `auto` measured fastest here for the model with this fingerprint, None when not
    measured yet (or that runtime is gone)."""
    hit = _read_cache().get(_cache_key_of(fingerprint))
    name = hit.get("runtime") if isinstance(hit, dict) else None
    return name if name in RUNTIMES and installed_version(name) is not None else None


def measure(engine, model, batch: int = MEASURE_BATCH, repeats: int = MEASURE_REPEATS) -> float:
    """Frames per second of `engine` on `model`'s input (every head and CAMs): best of `repeats`
    batches after a warm-up."""
    size = model.input_config.size
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    engine.infer(x, cams=True)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.infer(x, cams=True)
        best = min(best, time.perf_counter() - t0)
    return batch / best


def choose_runtime(model, remeasure: bool = False) -> str:
    """The fastest installed runtime for `model` on this machine: measured once, then read from the
    cache (`remeasure`: measure again)."""
    if not remeasure and (hit := _cached_choice(model)) is not None:
        return hit  # before `available_runtimes`, which imports every runtime (~0.2 s each)
    names = available_runtimes()
    if names == ["torch"]:
        return "torch"
    key = _cache_key(model)
    fps = {}
    for name in names:
        try:
            engine = TorchRuntime(model) if name == "torch" else _built(model, name, True)
            fps[name] = round(measure(engine, model), 2)
        except Exception as e:  # not usable here: not a candidate
            _notice(f"runtime {name} failed to load the model ({type(e).__name__}); not used")
    best = max(fps, key=fps.get)
    cache = _read_cache()
    cache[key] = {"runtime": best, "frames_per_s": fps, "batch": MEASURE_BATCH,
                  "measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "load_average": [round(v, 2) for v in os.getloadavg()]}
    try:
        write_json(cache_dir() / CACHE_FILE, cache)
    except OSError as e:  # an unwritable cache: measured again next time, still works
        _notice(f"cannot write the runtime cache ({e}); the choice is not remembered")
    return best
