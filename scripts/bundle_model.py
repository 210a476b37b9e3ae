"""Turn a finished training run into the model shipped inside the package.

    python scripts/bundle_model.py runs/NAME [--out src/pocovid/assets/default_model.pt]
                                   [--exam-method auto|METHOD | --exam-method-by runs/NAME_lodo ...]
    python scripts/bundle_model.py --update src/pocovid/assets/default_model.pt --exam-method-by runs/NAME_lodo

`--exam-method-by` chooses the exam method by its out-of-fold exam log loss on cross-site runs of the
same settings (leave-one-dataset-out, leave-one-source-out: `exam_method_across_sites`) instead of
the patient folds; `--update` sets it in a model file already bundled (a method without fitted
parameters only: refitting one needs the file's training run).

Takes RUN/model.pt (trained with `pocovid train ... --final`), adds the review threshold chosen
from the run's out-of-fold predictions (RUN/cv/oof_members.npz) and the command that made it,
and writes it atomically together with a small JSON card (same name, .json) that the docs and the
web service show.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--out", type=Path, default=Path("src/pocovid/assets/default_model.pt"))
    ap.add_argument("--exam-method-by", type=Path, nargs="+", metavar="RUN",
                    help="choose the exam method on these cross-site runs' out-of-fold exams")
    ap.add_argument("--update", type=Path, metavar="MODEL",
                    help="set the exam method (--exam-method-by) of this bundled model file, nothing else")
    ap.add_argument("--command", default="", help="The training command, recorded in the model file.")
    ap.add_argument("--exam-method", help="choose the exam method again from the run's out-of-fold outputs "
                                          "(auto, or a method name); default: the run's choice")
    args = ap.parse_args(argv)
    if (args.run is None) == (args.update is None):
        ap.error("give a training run, or --update MODEL")
    if args.update and not args.exam_method_by:
        ap.error("--update needs --exam-method-by")
    across = None
    if args.exam_method_by:
        from pocovid.training.cv import exam_method_across_sites

        across = exam_method_across_sites(args.exam_method_by)
        print(f"exam method across sites: {across[0]} (mean out-of-fold exam log loss over "
              f"{', '.join(map(str, args.exam_method_by))}: "
              + ", ".join(f"{k} {v:.3f}" for k, v in across[1].items()) + ")")
    if args.update:
        return _update_exam(args.update, *across, runs=args.exam_method_by)

    from pocovid.analysis.uncertainty import uncertainty_threshold_from_oof
    from pocovid.files import write_json
    from pocovid.models import load_model, save_model

    model = load_model(args.run / "model.pt")
    meta = model.meta
    unc = uncertainty_threshold_from_oof(args.run / "cv" / "oof_members.npz")
    cv_metrics = json.loads((args.run / "cv" / "metrics.json").read_text())
    run_info = json.loads((args.run / "run.json").read_text())
    extra = dict(meta.get("extra") or {})
    extra["uncertainty"] = unc
    extra["training_command"] = args.command
    if args.exam_method or across:
        from pocovid.training.cv import exam_from_run

        extra["exam"] = exam_from_run(args.run, across[0] if across else args.exam_method)
        if across:
            extra["exam"].update(_across_record(*across, runs=args.exam_method_by))
        print(f"exam method: {extra['exam']['method']} (out-of-fold exam log loss "
              + ", ".join(f"{k} {v:.3f}" for k, v in extra["exam"]["oof_log_loss"].items()) + ")")
    extra["timings"] = run_info.get("timings")
    extra.setdefault("precision", run_info.get("precision"))  # what "auto" trained in (runs before it: absent)
    save_model(model, args.out, training_config=meta["training_config"], data_fingerprint=meta["data_fingerprint"],
               metrics=meta["metrics"], extra=extra)
    v = cv_metrics["video"]
    card = {
        "model": args.out.name,
        "backbone": meta["backbone"],
        "classes": meta["classes"],
        "n_heads": meta.get("n_heads"),
        "created": meta.get("created"),
        "training_command": args.command,
        "training_config": meta["training_config"],
        "training_precision": extra.get("precision"),
        "data": {"n_clips": extra.get("n_clips"), "n_frames": extra.get("n_frames"),
                 "fingerprint": meta["data_fingerprint"]},
        "cross_validation": {
            "video": {k: v[k] for k in ("n", "accuracy", "balanced_accuracy", "mcc")},
            "video_per_class": {c: {k: x.get(k) for k in ("sensitivity", "specificity", "precision", "f1", "auc")}
                                for c, x in v["per_class"].items()},
            "frame": {k: cv_metrics["frame"][k] for k in ("n", "accuracy", "balanced_accuracy", "mcc")},
            "video_folds_balanced_accuracy": cv_metrics.get("folds", {}).get("video", {}).get("balanced_accuracy"),
        },
        "uncertainty": unc,
        "exam": {k: (extra.get("exam") or {}).get(k) for k in ("method", "selected_by")},
    }
    write_json(args.out.with_suffix(".json"), card)  # atomic, like the model file
    size = args.out.stat().st_size / 1e6
    print(f"written: {args.out} ({size:.1f} MB) and {args.out.with_suffix('.json')}")
    print(f"review threshold: {unc['method']} >= {unc['threshold']:.4f} (flags {unc['flag_rate']:.0%} of CV clips; "
          f"accuracy all {unc['accuracy_all']:.3f}, unflagged {unc['accuracy_unflagged']:.3f})")
    return 0


def _across_record(method: str, losses: dict, runs) -> dict:
    return {"selected_by": "lowest out-of-fold exam log loss across sites (" + ", ".join(map(str, runs)) + ")",
            "cross_site_log_loss": losses}


def _update_exam(path: Path, method: str, losses: dict, runs) -> int:
    """Set the exam method of a bundled model file; its weights and everything else stay."""
    from pocovid.models import load_model, save_model

    if method.startswith("logistic"):
        print(f"error: {path}: {method} has parameters to fit on the model's training run: "
              "bundle from that run instead", file=sys.stderr)
        return 1
    model = load_model(path)
    meta = model.meta
    extra = dict(meta.get("extra") or {})
    extra["exam"] = {"method": method, **_across_record(method, losses, runs)}
    save_model(model, path, training_config=meta["training_config"], data_fingerprint=meta["data_fingerprint"],
               metrics=meta["metrics"], extra=extra)
    card_path = path.with_suffix(".json")
    if card_path.is_file():  # the card beside it says the same
        from pocovid.files import write_json

        card = json.loads(card_path.read_text())
        card["created"] = load_model(path).meta.get("created")
        card["exam"] = {k: extra["exam"][k] for k in ("method", "selected_by")}
        write_json(card_path, card)
    print(f"written: {path} (exam method {method})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
