"""Choosing the uncertainty figure and the review threshold from out-of-fold predictions.

    python benchmarks/uncertainty.py RUN [--flag-rate 0.25] [--method member_std]

RUN is a `pocovid train` run folder (reads RUN/cv/oof_members.npz: every ensemble member's
out-of-fold probabilities) or that .npz file. For every method of `pocovid.analysis.uncertainty`
it computes the clip-level score of every out-of-fold clip, the threshold that flags the
`--flag-rate` most uncertain clips, and prints the accuracy on all clips, on the unflagged and on
the flagged clips, the fraction flagged, and the area under the risk-coverage curve (AURC, lower
is better; "oracle" is the best possible for this error count). The line for `--method` (default:
the method analyze uses) is what `uncertainty_threshold_from_oof` returns for the model file.
Pure numpy: seconds.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from pocovid.analysis.uncertainty import (DEFAULT_FLAG_RATE, DEFAULT_METHOD, METHODS, choose_threshold, load_oof,
                                          oof_clip_table, selective_figures, uncertainty_threshold_from_oof)


def _aurc(correct: np.ndarray, scores: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    return float((np.cumsum(~correct[order]) / np.arange(1, len(order) + 1)).mean())


def oracle_aurc(correct: np.ndarray) -> float:
    order = np.argsort(~correct, kind="stable")  # all correct clips first
    risk = np.cumsum(~correct[order]) / np.arange(1, len(order) + 1)
    return float(risk.mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run folder or oof_members.npz")
    ap.add_argument("--flag-rate", type=float, default=DEFAULT_FLAG_RATE)
    ap.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS)
    a = ap.parse_args(argv)
    oof = load_oof(a.run)
    n_frames, n_members, n_classes = oof["members"].shape
    print(f"{oof['file']}: {n_frames} frames, {len(np.unique(oof['clip_of']))} clips, {n_members} members, "
          f"classes {', '.join(map(str, oof['classes']))}")
    print(f"rule: flag the {a.flag_rate:.0%} most uncertain clips (threshold = {1 - a.flag_rate:.0%} quantile of the "
          f"out-of-fold clip scores)")
    print(f"{'method':12s} {'threshold':>10s} {'flagged':>8s} {'acc all':>8s} {'unflagged':>10s} {'flagged':>8s} "
          f"{'AURC':>7s}")
    for m in METHODS:
        t = oof_clip_table(oof, m)
        thr = choose_threshold(t["score"], a.flag_rate)
        f = selective_figures(t["correct"], t["score"], thr)
        print(f"{m:12s} {thr:10.4f} {f['flag_rate']:8.1%} {f['accuracy_all']:8.1%} {f['accuracy_unflagged']:10.1%} "
              f"{f['accuracy_flagged']:8.1%} {f['aurc']:7.4f}")
    print(f"{'oracle':12s} {'':10s} {'':8s} {'':8s} {'':10s} {'':8s} {oracle_aurc(t['correct']):7.4f}")
    # is the chosen method's lead real? paired bootstrap over clips of the AURC difference
    rng = np.random.default_rng(0)
    base = oof_clip_table(oof, a.method)
    print(f"\npaired bootstrap over clips (1000 resamples): share where {a.method} has the lower AURC")
    for m in METHODS:
        if m == a.method:
            continue
        other = oof_clip_table(oof, m)
        wins = 0
        for _ in range(1000):
            i = rng.integers(0, len(base["correct"]), len(base["correct"]))
            wins += _aurc(base["correct"][i], base["score"][i]) < _aurc(other["correct"][i], other["score"][i])
        print(f"  vs {m:11s} {wins / 1000:.0%}")
    # the flag rates the threshold gives at other targets, for the chosen method
    t = oof_clip_table(oof, a.method)
    print(f"\n{a.method} at other flag rates:")
    for r in (0.1, 0.2, 0.3, 0.4):
        thr = choose_threshold(t["score"], r)
        f = selective_figures(t["correct"], t["score"], thr)
        print(f"  target {r:.0%}: threshold {thr:.4f}, flagged {f['flag_rate']:.1%}, accuracy unflagged "
              f"{f['accuracy_unflagged']:.1%} (all {f['accuracy_all']:.1%})")
    chosen = uncertainty_threshold_from_oof(a.run, a.method, a.flag_rate)
    print("\nfor the model file: extra['uncertainty'] = " + json.dumps(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
