"""Training and inference speed: VGG-16 (the paper's backbone) vs the default efficientnet_lite0.

    python benchmarks/speed_models.py [--quick] [--threads 2] [--models vgg16,efficientnet_lite0]

Same random 224x224 input for both, each at its default cut (vgg16: the 5 conv blocks;
efficientnet_lite0: stem + stages 1-5) with the adapter + pooled linear head. Prints:
  (a) full fine-tune   training images/s, forward + backward + SGD step through every layer
  (b) pocovid way      trunk caching images/s (one no-grad pass, done once per frame) and
                       training images/s of the trainable part on cached trunk features
  inference            frames/s, batch 32, no_grad, eval mode
Random weights (no download): speed does not depend on the values.
OMP_WAIT_POLICY defaults to PASSIVE here: with OpenMP's default spinning, two threads on a 2-core
machine that is also running something else can be several times slower.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pocovid.models import create_model  # noqa: E402


def _rate(step, n_items: int, min_time: float, max_iter: int) -> float:
    """Items/s of `step()` (one untimed warm-up call, then until min_time or max_iter)."""
    step()
    done, t0 = 0, time.perf_counter()
    while True:
        step()
        done += 1
        el = time.perf_counter() - t0
        if el >= min_time or done >= max_iter:
            return done * n_items / el


def bench(name: str, train_batch: int, infer_batch: int, min_time: float, max_iter: int, size: int = 224) -> dict:
    torch.manual_seed(0)
    x_train = torch.randn(train_batch, 3, size, size)
    y_train = torch.randint(0, 3, (train_batch,))
    x_infer = torch.randn(infer_batch, 3, size, size)
    out = {}

    # (a) full fine-tune: nothing frozen
    full = create_model(name, pretrained=False, n_frozen=0).train()
    opt = torch.optim.SGD(full.trainable_parameters(), lr=1e-3, momentum=0.9)

    def full_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(full(x_train), y_train).backward()
        opt.step()

    out["params_total"] = sum(p.numel() for p in full.parameters())
    out["full_trainable"] = sum(p.numel() for p in full.trainable_parameters())
    out["full_train"] = _rate(full_step, train_batch, min_time, max_iter)
    full = opt = None  # free the memory (full_step is not called again)

    # (b) pocovid: frozen trunk cached once, then train the trainable part on the cache
    model = create_model(name, pretrained=False)  # default cut and n_frozen
    model.eval()
    with torch.no_grad():
        out["cache"] = _rate(lambda: model.forward_trunk(x_infer), infer_batch, min_time, max_iter)
        h = model.forward_trunk(x_infer)
    model.train()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)
    y = torch.randint(0, 3, (infer_batch,))

    def cached_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model.forward_from_trunk(h), y).backward()
        opt.step()

    out["trunk_shape"] = tuple(h.shape[1:])
    out["cached_trainable"] = sum(p.numel() for p in model.trainable_parameters())
    out["cached_train"] = _rate(cached_step, infer_batch, min_time, max_iter * 10)

    # inference
    model.eval()
    with torch.no_grad():
        out["infer"] = _rate(lambda: model(x_infer), infer_batch, min_time, max_iter)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller training batch, shorter timing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="vgg16,efficientnet_lite0")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_batch, infer_batch = (8, 32) if args.quick else (16, 32)
    min_time, max_iter = (1.0, 2) if args.quick else (4.0, 4)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}, load average {load:.1f} on {os.cpu_count()} cores"
          f"{' (shared: figures are lower bounds)' if load > 0.5 else ''}")
    print(f"input 224x224, training batch {train_batch}, inference batch {infer_batch}, random weights")
    results = {}
    t0 = time.perf_counter()
    for name in args.models.split(","):
        r = bench(name, train_batch, infer_batch, min_time, max_iter)
        results[name] = r
        print(f"\n{name}: {r['params_total'] / 1e6:.2f} M parameters at the default cut, "
              f"trunk output {r['trunk_shape']}")
        print(f"  (a) full fine-tune        {r['full_train']:8.1f} train img/s  "
              f"({r['full_trainable'] / 1e6:.2f} M trainable)")
        print(f"  (b) trunk caching (once)  {r['cache']:8.1f} img/s")
        print(f"      train on cached trunk {r['cached_train']:8.1f} train img/s  "
              f"({r['cached_trainable'] / 1e3:.0f} k trainable)")
        print(f"  inference (batch {infer_batch})     {r['infer']:8.1f} frames/s")
    if {"vgg16", "efficientnet_lite0"} <= results.keys():
        v, e = results["vgg16"], results["efficientnet_lite0"]
        print("\nefficientnet_lite0 / vgg16: "
              f"full fine-tune x{e['full_train'] / v['full_train']:.1f}, "
              f"trunk caching x{e['cache'] / v['cache']:.1f}, "
              f"cached training x{e['cached_train'] / v['cached_train']:.1f}, "
              f"inference x{e['infer'] / v['infer']:.1f}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
