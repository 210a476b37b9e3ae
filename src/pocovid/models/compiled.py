"""The frozen trunk compiled for inference: TorchScript trace + freeze (batch norm folded into the
convolutions) fed channels-last tensors, about 3x the frames/s of the eager trunk on a small CPU.

    trunk = compiled_trunk(model, 224)      # None: use the eager trunk
    out = model.infer(x, trunk=trunk)

Checked against the eager trunk once; cached per model (a service traces once for many requests).
POCOVID_EAGER=1 turns it off.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref

import torch

_TRACED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_TRACE_LOCK = threading.Lock()  # one tracing at a time (a service may analyse in several threads)


def _key(model, size: int):
    params = list(model.trunk.parameters())
    if not params:
        return None
    return (int(size), str(params[0].device), sum(p._version for p in params), params[0].data_ptr())


def compiled_trunk(model, size: int, build: bool = True):
    """The model's trunk compiled for `size` x `size` input, or None (eager) when tracing fails,
    does not match the eager trunk, POCOVID_EAGER=1, or `build` is False and none is cached yet
    (a single image is not worth a second of tracing)."""
    if os.environ.get("POCOVID_EAGER") == "1":
        return None
    key = _key(model, size)
    if key is None:
        return None
    with _TRACE_LOCK:
        hit = _TRACED.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        if not build:
            return None
        traced = _trace(model, size)
        _TRACED[model] = (key, traced)
    return traced


def _trace(model, size: int):
    device = next(model.trunk.parameters()).device
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            was = model.trunk.training
            model.trunk.eval()
            # check_trace off: it runs the trunk twice more and imports torch.distributed (~1.5 s in all);
            # the comparison below is the check
            t = torch.jit.freeze(torch.jit.trace(model.trunk, torch.zeros(1, 3, size, size, device=device),
                                                 check_trace=False))
            model.trunk.train(was)
            g = torch.Generator().manual_seed(0)
            probe = torch.randn(2, 3, size, size, generator=g).to(device)
            ref = model.trunk(probe)
            got = t(probe.contiguous(memory_format=torch.channels_last))
            if got.shape == ref.shape and torch.allclose(got, ref, atol=1e-3 * float(ref.abs().max()) + 1e-5):
                return t
    except Exception:  # tracing is an optimisation: the eager trunk always works
        pass
    return None
