"""The bedside exam: all of a patient's lung zones analysed at once, `analyze_exam`.

    from pocovid.analysis.bedside import ExamConfig, analyze_exam
    exam = analyze_exam(["p10_R1.mp4", ...], "default", "out/exam")         # ExamResult
    exam = analyze_exam(files, model, "out", zones=["R1", "R2", "-"])       # zones in file order
    exam.lus.score, exam.verdict.label, exam.to_json()

Each recording goes through the one-recording analysis (`analyze_files`: its own folder with
result.json, key frames and report.html; a file that fails is listed, the rest are done), then:
- per zone (BLUE points, `zones.BLUE_ZONES`): severity 0-3, the worst of its counted clips; the
  findings, each the highest over those clips; the key frame of the clip that gave the severity;
- the LUS score: the sum of the zone severities, out of 3 x 6 = 18, naming missing zones;
- the exam's diagnosis: every counted clip combined by the exam method the model file carries
  (`model.meta["extra"]["exam"]`, `pocovid.models.exam.exam_probabilities`; "mean" when the file
  names none), its uncertainty, and the zones that drive it (each zone replaced by the mean of the
  other clips: how much the diagnosis's probability drops, same rule).
Withheld clips (out of distribution) count toward nothing: no verdict when every clip is withheld.
Writes `out_dir/exam.json` (the declared `ExamResult`) and `out_dir/exam.html`.

The conclusion is its own step: `exam_clip` (a recording's result, or its failure, as the exam sees it)
and `conclude_exam` (clips -> ExamResult, writing nothing); the web service (`pocovid.server.exams`)
concludes its exams with them from results it stored.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocovid import __version__
from pocovid.analysis.analyze import AnalysisConfig, resolve_model
from pocovid.analysis.batch import BatchEntry, analyze_files
from pocovid.analysis.exam_report import write_exam_html
from pocovid.analysis.exam_result import Driver, ExamClip, ExamResult, ExamVerdict, LusScore, ZoneResult
from pocovid.analysis.report import NOTICE
from pocovid.analysis.result import AnalysisResult, ModelSummary
from pocovid.analysis.zones import BLUE_ZONES, ZoneOf, assign_zones, unmatched_csv_rows
from pocovid.errors import PocovidError
from pocovid.files import path_text, write_text
from pocovid.models import model_summary
from pocovid.models import exam as exam_model
from pocovid.models.exam import exam_method_of, exam_probabilities, exam_uncertainty, lus_score

SEVERITY_MAX = 3  # Soldati levels 0-3
DRIVER_MIN = 0.01  # a zone drives the diagnosis when it raises its probability by at least 1 percentage point
LUS_RULE = ("sum over the zones of each zone's severity 0-3 (several clips in a zone: the worst); "
            "withheld and failed clips are left out")


@dataclass
class ExamConfig:
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)  # how each recording is analysed
    review_below: float = 0.6  # review recommended when the exam's most likely diagnosis is below this (a plain
    #                            rule, not fitted on data)
    report: bool = True  # write exam.html

    def check(self) -> None:
        self.analysis.check()
        if not 0 < self.review_below <= 1:
            raise PocovidError(f"review_below must be in (0, 1], got {self.review_below}")


def analyze_exam(files, model, out_dir: str | os.PathLike, config: ExamConfig | None = None, *, zones=None,
                 zones_csv: str | os.PathLike | None = None,
                 progress: Callable[[int, int, str], None] | None = None) -> ExamResult:
    """Analyse one patient's recordings as one exam and write `out_dir/exam.json`, `out_dir/exam.html`
    and each recording's folder (`analyze_files`). `zones`: one zone per file in order ('-' or None:
    unassigned), else `zones_csv` (columns file,zone), else the file names. Raises `PocovidError`
    (one line) for bad zones; a recording that cannot be analysed is listed in `failures`."""
    t0 = time.perf_counter()
    cfg = config or ExamConfig()
    cfg.check()
    files = [Path(f) for f in files]
    if not files:
        raise PocovidError("no recordings given")
    assigned = assign_zones(files, zones, zones_csv)
    notes = [f"the zones CSV names {path_text(Path(n).name)!r}, which is not among the recordings"
             for n in unmatched_csv_rows(files, zones_csv)]
    model, model_name = resolve_model(model)
    out_dir = Path(out_dir)
    batch = analyze_files(files, model, out_dir, cfg.analysis, progress=progress)
    clips = [_clip(a, e, out_dir) for a, e in zip(assigned, batch.entries)]
    pids = sorted({a.patient for a in assigned if a.patient})
    exam = conclude_exam(clips, model, model_name, cfg, patient=pids[0] if len(pids) == 1 else None, notes=notes)
    if cfg.report:
        exam.report = "exam.html"
        write_exam_html(out_dir / exam.report, exam)
    exam.timings = {"total_s": round(time.perf_counter() - t0, 3)}
    write_text(out_dir / "exam.json", exam.model_dump_json(indent=2))
    return exam


def conclude_exam(clips: list[ExamClip], model, model_name: str, config: ExamConfig | None = None, *,
                  patient: str | None = None, notes=()) -> ExamResult:
    """The exam from its clips (`exam_clip`, one per recording): the zones, the LUS score, the verdict
    and why to review. Writes nothing (`analyze_exam` and the service write exam.json, exam.html)."""
    cfg = config or ExamConfig()
    zone_rows = [_zone(z, clips) for z in BLUE_ZONES]
    has_severity = bool(getattr(model, "severity_levels", 0))
    lus = lus_of(zone_rows, has_severity, clips)
    verdict, no_verdict = verdict_of(clips, model)
    exam = ExamResult(
        patient=patient, protocol_zones=list(BLUE_ZONES), model=path_text(model_name),
        model_info=ModelSummary(**model_summary(model)), pocovid_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), notice=NOTICE, clips=clips,
        zones=zone_rows, unassigned=[c.file for c in clips if c.zone is None], lus=lus, verdict=verdict,
        no_verdict=no_verdict, review_recommended=False, review_reasons=[],
        failures=[c.error for c in clips if c.error], notes=list(notes))
    exam.review_reasons = review_reasons(exam, cfg.review_below)
    exam.review_recommended = bool(exam.review_reasons)
    return exam


def _clip(a: ZoneOf, e: BatchEntry, out_dir: Path) -> ExamClip:
    """One recording's summary for the exam: base names and paths relative to the exam folder only."""
    r = e.result
    if not isinstance(r, AnalysisResult):
        reason = r.reason  # the error names the file by its base name
        for folder in {a.path.parent, a.path.parent.resolve()}:
            if str(folder) not in ("", "."):
                reason = reason.replace(path_text(folder) + os.sep, "")
        return exam_clip(a, reason)
    return exam_clip(a, r, e.folder.relative_to(out_dir).as_posix() if e.folder else None)


def exam_clip(a: ZoneOf, r: AnalysisResult | str, rel: str | None = None) -> ExamClip:
    """One recording's summary for the exam, from its analysis result (in the folder `rel`, relative to
    the exam folder) or, when it failed, the one-line reason (named by the file's base name if it is not)."""
    name = path_text(a.path.name)
    base = dict(file=name, zone=a.zone, zone_source=a.source)
    if not isinstance(r, AnalysisResult):
        return ExamClip(**base, status="failed", error=r if r.startswith(name) else f"{name}: {r}")
    withheld = bool(r.prediction.withheld)
    return ExamClip(
        **base, status="ok", folder=rel, report=f"{rel}/{r.report}" if rel and r.report else None,
        label=None if withheld else r.prediction.label, probabilities=dict(r.prediction.probabilities),
        withheld=withheld, counted=not withheld, review_recommended=r.review_recommended,
        review_reasons=list(r.review_reasons), findings=r.findings, severity=r.severity,
        key_frame=_key_frame(r, rel))


def _key_frame(r: AnalysisResult, rel: str | None) -> str | None:
    """The clip's first key frame for its most likely class (else its first), relative to the exam folder."""
    keys = [k for k in r.key_frames if k.label == r.prediction.label] or r.key_frames
    return f"{rel}/{keys[0].image}" if rel and keys else None


def _zone(zone: str, clips: list[ExamClip]) -> ZoneResult:
    """A zone of the protocol from its clips: the worst severity of the counted ones (ties: the higher
    expected severity, then the first), each finding's highest probability."""
    mine = [c for c in clips if c.zone == zone]
    counted = [c for c in mine if c.counted]
    row = ZoneResult(zone=zone, side="right" if zone.startswith("R") else "left", clips=[c.file for c in mine],
                     status="scored" if counted else "not_scored" if mine else "missing")
    if not counted:
        return row
    rated = [c for c in counted if c.severity is not None]
    worst = max(rated, key=lambda c: (c.severity.level, c.severity.expected)) if rated else counted[0]
    names = [n for c in counted if c.findings for n in c.findings]
    row.findings = {n: max(c.findings[n] for c in counted if c.findings and n in c.findings)
                    for n in dict.fromkeys(names)} or None
    if worst.severity is not None:
        row.severity, row.severity_expected = worst.severity.level, worst.severity.expected
    row.severity_clip, row.label, row.key_frame, row.report = worst.file, worst.label, worst.key_frame, worst.report
    return row


def lus_of(zones: list[ZoneResult], has_severity: bool = True, clips: list[ExamClip] | None = None) -> LusScore:
    """The LUS score of the protocol's zones: the sum of the scored zones' severities, out of 3 x zones;
    with `clips`, also the expected score of those zones as evaluation computes it (`lus_score`)."""
    scored = [z for z in zones if z.status == "scored" and z.severity is not None]
    names = {z.zone for z in scored}
    rated = [c for c in clips or [] if c.counted and c.zone in names and c.severity is not None]
    expected = (float(lus_score(np.array([c.severity.probabilities for c in rated]), ["exam"] * len(rated),
                                [c.zone for c in rated])[1][0]) if rated else None)
    return LusScore(
        score=sum(z.severity for z in scored) if scored else None, max_possible=SEVERITY_MAX * len(zones),
        score_expected=None if expected is None else round(expected, 2),
        n_zones=len(zones), zones_scored=[z.zone for z in scored],
        zones_missing=[z.zone for z in zones if z.status == "missing"],
        zones_not_scored=[z.zone for z in zones if z.status == "not_scored"],
        complete=len(scored) == len(zones),
        rule=LUS_RULE if has_severity else "the model has no severity head: no LUS score")


def verdict_of(clips: list[ExamClip], model) -> tuple[ExamVerdict | None, str | None]:
    """(verdict, None) from the counted clips, or (None, why there is none)."""
    counted = [c for c in clips if c.counted]
    if not counted:
        ok = [c for c in clips if c.status == "ok"]
        return None, ("every recording was withheld (out of distribution): no diagnosis" if ok else
                      "no recording could be analysed: no diagnosis")
    classes = list(model.classes)
    method, params, source = exam_method_of(model)
    signs = method in getattr(exam_model, "SIGN_METHODS", ())  # methods that read the clips' findings, severity
    if signs and any(c.findings is None or c.severity is None for c in counted):
        method, params, source = "mean", None, f"default: the model file's {method} needs findings and severity"
        signs = False
    x, widths = _exam_inputs(counted, classes, list(getattr(model, "findings", None) or []), signs)

    def combine(rows: np.ndarray) -> np.ndarray:
        parts = np.split(rows, np.cumsum(widths)[:-1], axis=1)
        signs = {"findings": parts[1], "severity": parts[2]} if len(parts) == 3 else {}
        return exam_probabilities(parts[0], ["exam"] * len(rows), method, classes=classes, params=params,
                                  **signs)[1][0]

    groups = [c.zone or f"unassigned: {c.file}" for c in counted]
    p = combine(x)
    top = int(np.argmax(p))
    effects = {}
    for g in dict.fromkeys(groups):
        mine = np.array([grp == g for grp in groups])
        if mine.all():  # one zone only: against no evidence (uniform)
            effects[g] = float(p[top] - 1.0 / len(classes))
            continue
        like_rest = x.copy()  # this zone's clips as if they looked like the patient's other clips
        like_rest[mine] = x[~mine].mean(0)
        effects[g] = float(p[top] - combine(like_rest)[top])
    drivers = [Driver(zone=g, effect=round(v, 4)) for g, v in sorted(effects.items(), key=lambda kv: -kv[1])
               if v >= DRIVER_MIN]
    ent = float(exam_uncertainty(p[None])[0] / np.log(len(classes)))
    return ExamVerdict(label=classes[top], probabilities={k: round(float(v), 4) for k, v in zip(classes, p)},
                       method=method, method_source=source, n_clips=len(counted), uncertainty=round(ent, 4),
                       drivers=drivers), None


def _exam_inputs(counted: list[ExamClip], classes: list[str], findings: list[str], signs: bool
                 ) -> tuple[np.ndarray, list[int]]:
    """What the exam method reads per clip, side by side: the class probabilities, and with `signs`
    (the methods of `models.exam.SIGN_METHODS`) the finding and severity-level probabilities; and the
    width of each part."""
    probs = np.array([[c.probabilities[k] for k in classes] for c in counted])
    if not signs:
        return probs, [probs.shape[1]]
    f = np.array([[c.findings[n] for n in findings] for c in counted])
    s = np.array([c.severity.probabilities for c in counted])
    return np.concatenate([probs, f, s], 1), [probs.shape[1], f.shape[1], s.shape[1]]


def review_reasons(exam: ExamResult, review_below: float) -> list[str]:
    """Why a clinician should look closer at this exam (empty: nothing stands out)."""
    out = []
    v = exam.verdict
    if v is None:
        out.append(exam.no_verdict or "no diagnosis")
    elif v.probabilities[v.label] < review_below:
        out.append(f"the exam diagnosis is uncertain: the most likely one has {round(100 * v.probabilities[v.label])}%"
                   f" (below {round(100 * review_below)}%)")
    lus = exam.lus
    if lus.zones_missing:
        out.append(f"zone(s) not scanned: {', '.join(lus.zones_missing)}: the LUS score is incomplete")
    if lus.zones_not_scored:
        out.append(f"zone(s) without a usable recording: {', '.join(lus.zones_not_scored)}")
    withheld = [c for c in exam.clips if c.withheld]
    if withheld:
        out.append(f"{len(withheld)} recording(s) look outside the training data and were left out: "
                   + ", ".join(_named(c) for c in withheld))
    if exam.failures:
        out.append(f"{len(exam.failures)} recording(s) could not be analysed: "
                   + ", ".join(_named(c) for c in exam.clips if c.status == "failed"))
    flagged = [c for c in exam.clips if c.counted and c.review_recommended]
    if flagged:
        out.append("the clip analysis recommends review for " + ", ".join(_named(c) for c in flagged)
                   + " (see each clip's report)")
    if exam.unassigned:
        out.append(f"{len(exam.unassigned)} recording(s) without a zone: in the diagnosis, not in the LUS score")
    return out


def _named(c: ExamClip) -> str:
    return f"{c.zone} ({c.file})" if c.zone else c.file
