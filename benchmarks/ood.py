"""The out-of-distribution guard of `pocovid analyze`: what it catches, what it wrongly flags.

    python benchmarks/ood.py [--model default|FILE] [--real ../shared/data/pocus] [--run RUN]

Every input goes through `analyze_recording` (the real path: scan region, image cues, the
model's feature density), sampled at 3 Hz, at most 16 frames, no report.

Non-lung inputs (should be flagged): generated blank / uniform noise / gaussian noise / text
screenshots (light and dark) / a cardiac-like fan with large dark chambers / an abdominal-like
homogeneous texture with a vessel, as images and (some) as short videos; the photographs
scikit-image ships (astronaut, chelsea, coffee, camera, rocket, ...).
Lung inputs (should not be flagged): phantom lung clips (reported apart: a model trained on real
recordings may rightly call synthetic images unusual), and with --real every real recording.

The feature density. A model file from `pocovid train --final` carries the density of its own
training frames; those are these very real recordings, so with --real the real-data figure is
measured honestly: the recordings are split into patient-grouped folds, and each held-out fold is
checked against a density fitted on the OTHER folds' frames (3 Hz, <= 30 frames per recording, the
training probe and classes, as training samples them). The non-lung and phantom inputs use the
density of all real frames (or the model's own when there is no --real).
Trunk features of the real frames are computed once (about a minute on 2 cores) or read from a
`pocovid train` run's cache with --run RUN (the frames-*.npz and trunk-*.npy it wrote).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import glob  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from pocovid import testing  # noqa: E402
from pocovid.analysis import AnalysisConfig, analyze_recording  # noqa: E402
from pocovid.analysis.result import AnalysisResult  # noqa: E402
from pocovid.models import fit_feature_density  # noqa: E402

CFG = AnalysisConfig(rate_hz=3.0, max_frames=16, report=False, key_frames=0)


def load_model(spec: str | None):
    from pocovid.inference import DEFAULT_MODEL_FILE, load

    if spec:
        return load(spec), spec
    if DEFAULT_MODEL_FILE.is_file():
        return load("default"), "default (bundled)"
    from pocovid.testing import quick_phantom_model

    return quick_phantom_model(size=224, n_heads=2, steps=40), "stand-in: phantom-trained efficientnet_lite0 at 224 px"


def with_density(model, density: dict | None):
    m = copy.copy(model)  # shares the weights; only the metadata differs
    m.meta = dict(model.meta or {})
    m.meta["extra"] = dict((model.meta or {}).get("extra") or {})
    if density is not None:
        m.meta["extra"]["feature_density"] = density
    return m


def real_training_frames(root: Path, model, run: str | None):
    """Pooled trunk features (N, K) of the real training frames, their recording paths (relative
    to root) and fold, and the dataset index with patient folds."""
    from pocovid.data import index_dataset, patient_folds
    from pocovid.errors import PocovidError
    from pocovid.inference import predict_recording

    cfg = getattr(model, "training_config", None) or {}
    probe = cfg.get("probe", "convex")
    classes = list(model.classes)
    idx = index_dataset(root)
    splits = patient_folds(idx.filter([probe] if probe else None, classes), n_folds=5, seed=0)
    fold_of = {it.path: k for k, f in enumerate(splits.folds) for it in f}
    if run:
        from pocovid.training.frames import FrameSet

        fs = FrameSet.load(glob.glob(str(Path(run) / "cache" / "frames-*.npz"))[0])
        tr = np.load(glob.glob(str(Path(run) / "cache" / "trunk-*.npy"))[0], mmap_mode="r")
        pooled = np.stack([np.asarray(tr[0, i], np.float32).mean((1, 2)) for i in range(tr.shape[1])])
        paths = np.array([fs.clips[c]["path"] for c in fs.clip_of])
        return pooled, paths, np.array([fold_of.get(p, -1) for p in paths]), idx, fold_of
    feats, paths = [], []
    for it in splits.items():
        try:  # the frames as training sampled them (model.input_config), the trunk's pooled features
            rec = predict_recording(model, idx.abspath(it.path))
        except PocovidError:
            continue
        feats.append(np.asarray(rec.outputs.pooled, np.float32))
        paths += [it.path] * len(rec)
    paths = np.array(paths)
    return np.concatenate(feats), paths, np.array([fold_of.get(p, -1) for p in paths]), idx, fold_of


def non_lung_inputs(tmp: Path) -> dict[str, Path]:
    from pocovid.phantom import write_image, write_video

    tmp.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, img in (testing.generated_inputs() | testing.natural_images()).items():
        p = tmp / f"{name}.png"
        write_image(p, img)
        out[name] = p
    rng = np.random.default_rng(1)
    vids = {"blank_video": np.zeros((20, 480, 640, 3), np.uint8),
            "noise_video": rng.integers(0, 256, (20, 480, 640, 1), dtype=np.uint8).repeat(3, 3),
            "cardiac_like_video": np.stack([testing.cardiac_like(seed=s) for s in range(12)]),
            "abdominal_like_video": np.stack([testing.abdominal_like(seed=s) for s in range(12)])}
    for name, v in vids.items():
        p = tmp / f"{name}.mp4"
        write_video(p, v, 10.0)
        out[name] = p
    return out


def phantom_inputs(tmp: Path) -> dict[str, Path]:
    from pocovid.phantom import write_phantom

    tmp.mkdir(parents=True, exist_ok=True)
    out = {}
    for label in ("covid", "pneumonia", "regular"):
        for probe in ("convex", "linear"):
            p = tmp / f"phantom_{label}_{probe}.mp4"
            write_phantom(p, label=label, probe=probe, n_frames=30, fps=15, width=480, height=400, overlays=True,
                          seed=3)
            out[p.stem] = p
    return out


def run(model, inputs: dict[str, Path], out: Path, show: bool = True) -> dict[str, AnalysisResult]:
    res = {}
    for name, p in inputs.items():
        r = analyze_recording(p, model, out / name, CFG)
        res[name] = r
        if show:
            c = r.ood.cues
            ratio = c.get("density_ratio")
            print(f"  {name:28s} {'OOD' if r.out_of_distribution else 'ok ':3s}  d2/q999 "
                  f"{'-' if ratio is None else f'{ratio:6.2f}'}  colour {c['colour_share']:.3f}  corr "
                  f"{c['spatial_correlation']:.2f}  bright {c['bright_share']:.2f}  "
                  f"{'; '.join(r.ood.reasons or r.ood.weak_cues)[:110]}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--real", default=None, help="real data root (the public POCUS layout)")
    ap.add_argument("--run", default=None,
                    help="a `pocovid train` run whose cache holds the real frames' trunk features")
    ap.add_argument("--list-real", action="store_true", help="print every real recording's line, not only flagged ones")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    model, desc = load_model(a.model)
    print(f"model: {desc}")
    tmp = Path(tempfile.mkdtemp(prefix="pocovid-ood-"))
    density_all = None
    if a.real:
        pooled, paths, folds, idx, fold_of = real_training_frames(Path(a.real), model, a.run)
        density_all = fit_feature_density(pooled)
        print(f"real training frames: {len(pooled)} from {len(set(paths))} recordings; density q999 "
              f"{density_all['d2_train']['q999']:.0f} (in-sample)")
    elif not (model.meta or {}).get("extra", {}).get("feature_density"):
        print("note: the model carries no feature density and no --real was given: the density cue is off")
    m_all = with_density(model, density_all)

    print("\nnon-lung inputs (should be flagged):")
    bad = run(m_all, non_lung_inputs(tmp / "in"), tmp / "out")
    caught = sum(r.out_of_distribution for r in bad.values())
    print("\nphantom lung clips (synthetic):")
    ph = run(m_all, phantom_inputs(tmp / "in"), tmp / "out")
    ph_flag = sum(r.out_of_distribution for r in ph.values())

    real_flag, real_n, by_probe = 0, 0, {}
    if a.real:
        print("\nreal recordings, each checked against a density fitted on the other patient folds"
              + ("" if a.list_real else " (flagged ones listed)") + ":")
        dens = {k: fit_feature_density(pooled[folds != k]) for k in sorted(set(folds[folds >= 0]))}
        from pocovid.errors import PocovidError

        for it in idx.items:
            k = fold_of.get(it.path)
            # recordings the model never trains on (other probes, classes) meet the whole density
            m = with_density(model, dens[k] if k is not None else density_all)
            try:
                r = analyze_recording(idx.abspath(it), m, tmp / "real" / Path(it.path).stem, CFG)
            except PocovidError as e:
                print(f"  unreadable: {e}")
                continue
            real_n += 1
            real_flag += r.out_of_distribution
            by_probe.setdefault(it.probe, []).append(r.out_of_distribution)
            if r.out_of_distribution or a.list_real:
                c = r.ood.cues
                print(f"  {it.path:60s} {'OOD' if r.out_of_distribution else 'ok'} d2/q999 "
                      f"{c.get('density_ratio') or 0:.2f} {'; '.join(r.ood.reasons)[:100]}")
    print("\nsummary")
    missed = [k for k, r in bad.items() if not r.out_of_distribution]
    print(f"  non-lung inputs caught:          {caught}/{len(bad)} ({caught / len(bad):.0%})"
          + ("" if not missed else "; missed: " + ", ".join(missed)))
    print(f"  phantom lung clips flagged:      {ph_flag}/{len(ph)}")
    if a.real:
        print(f"  real recordings wrongly flagged: {real_flag}/{real_n} ({real_flag / max(real_n, 1):.1%}; "
              "target <= 5%): "
              + ", ".join(f"{pr} probe {sum(v)}/{len(v)}" for pr, v in sorted(by_probe.items()))
              + f" (the model trains on {(model.training_config or {}).get('probe', '?')} recordings only)")
    print(f"  ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
