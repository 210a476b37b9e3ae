"""The exam report, exam.html (templates/exam.html.j2): a lung diagram coloured by zone severity with
the LUS score, the zone table with key frames, the verdict, links to each clip's report.

The diagram is inline SVG, a front view as a clinician faces the patient (the patient's right on the
viewer's left), each BLUE point coloured by `display.SEVERITY_COLOURS` (a sequential ramp, light = 0,
dark = 3; readable with colour-vision deficiency, no red/green). Images and clip reports are
linked relative to the exam folder (they are the clips' own files); the page has no script and no
external resource, and names files by their base names only.
"""

from __future__ import annotations

import os
from pathlib import Path

from pocovid.analysis.display import (SEVERITY_COLOURS, SEVERITY_INK, SEVERITY_WORDS, WITHHELD_GREY, clinical_name,
                                      finding_name, percent, severity_text)
from pocovid.analysis.exam_result import ExamResult
from pocovid.analysis.report import _environment
from pocovid.analysis.zones import BLUE_ZONES
from pocovid.files import write_text

NOT_SCORED_COLOUR = WITHHELD_GREY
WIDTH, HEIGHT = 400, 340

# Zone centres on the patient's right lung (drawn on the viewer's left); the left lung mirrors them.
# 1: upper anterior BLUE point, 2: lower anterior, 3: posterolateral (PLAPS), drawn at the lateral base.
_RIGHT = {"1": (128, 118, 30), "2": (133, 200, 30), "3": (78, 246, 24)}
#: Outline of the patient's right lung (viewer's left); the left lung is its mirror image.
LUNG_PATH = ("M 172 72 C 156 40, 112 38, 92 78 C 66 130, 50 210, 52 282 C 92 298, 142 292, 178 282 "
             "C 184 210, 184 130, 172 72 Z")


def zone_centre(zone: str) -> tuple[int, int, int]:
    """(x, y, radius) of a BLUE point on the diagram (the patient's right drawn on the viewer's left)."""
    x, y, r = _RIGHT[zone[1]]
    return (WIDTH - x if zone.startswith("L") else x), y, r


def lung_diagram() -> dict:
    """The diagram's geometry, for a page that draws it as exam.html does (GET /api/display): its size,
    the outline of the patient's right lung (the left one is its mirror image) and each zone's circle."""
    return {"width": WIDTH, "height": HEIGHT, "lung_path": LUNG_PATH,
            "zones": {z: dict(zip(("x", "y", "r"), zone_centre(z))) for z in BLUE_ZONES}}


def zone_shapes(exam: ExamResult) -> list[dict]:
    """Each protocol zone as the diagram draws it: centre, radius, fill, text and a tooltip."""
    out = []
    for z in exam.zones:
        x, y, r = zone_centre(z.zone)
        if z.status == "scored" and z.severity is not None:
            fill, ink, value = SEVERITY_COLOURS[z.severity], SEVERITY_INK[z.severity], str(z.severity)
            tip = f"{z.zone}: severity {z.severity}"
        elif z.status == "missing":
            fill, ink, value, tip = "#ffffff", "#555555", "–", f"{z.zone}: not scanned"
        else:
            fill, ink, value = NOT_SCORED_COLOUR, "#222222", "?"
            tip = f"{z.zone}: " + ("no severity head" if z.status == "scored" else "no usable recording")
        out.append({"zone": z.zone, "x": x, "y": y, "r": r, "fill": fill, "ink": ink, "value": value,
                    "dashed": z.status == "missing", "tip": tip})
    return out


def driver_text(drivers) -> str:
    """'L3 (+5 points), R2 (+1 point)': the zones that drive the diagnosis and by how much."""
    pts = [(d.zone, round(100 * d.effect)) for d in drivers]
    return ", ".join(f"{z} (+{n} point{'' if n == 1 else 's'})" for z, n in pts)


def write_exam_html(path: str | os.PathLike, exam: ExamResult) -> Path:
    """Render exam.html for `exam` (its paths are relative to the folder `path` is in)."""
    clips_by_zone = {z.zone: [c for c in exam.clips if c.zone == z.zone] for z in exam.zones}
    page = _environment().get_template("exam.html.j2").render(
        exam=exam, drivers=driver_text(exam.verdict.drivers) if exam.verdict else "", shapes=zone_shapes(exam),
        lung_path=LUNG_PATH, width=WIDTH, height=HEIGHT, clips_by_zone=clips_by_zone,
        severity_colours=list(zip(SEVERITY_COLOURS, SEVERITY_INK, SEVERITY_WORDS)), not_scored=NOT_SCORED_COLOUR,
        unassigned=[c for c in exam.clips if c.zone is None])
    return write_text(path, page)


def summary_lines(exam: ExamResult) -> list[str]:
    """What `pocovid exam` prints: one line per zone, the LUS score, the verdict and why to review."""
    lines = [f"exam{f' of patient {exam.patient}' if exam.patient else ''}: {len(exam.clips)} recording(s), "
             f"{exam.protocol} protocol ({len(exam.protocol_zones)} zones)"]
    for z in exam.zones:
        if z.status == "missing":
            lines.append(f"  {z.zone}  not scanned")
            continue
        sev = "severity ?" if z.severity is None else severity_text(z.severity)
        seen = ", ".join(f"{finding_name(n)} {percent(p)}" for n, p in sorted((z.findings or {}).items(),
                                                                                 key=lambda kv: -kv[1]) if p >= 0.5)
        what = "no usable recording" if z.status == "not_scored" else f"{sev}  {seen or 'no finding >= 50%'}"
        lines.append(f"  {z.zone}  {what}  [{', '.join(z.clips)}]")
    for c in exam.clips:
        if c.zone is None:
            lines.append(f"  unassigned  {c.file}" + ("" if c.counted else " (not counted)"))
    lus = exam.lus
    score = "-" if lus.score is None else str(lus.score)
    extra = [f"{len(lus.zones_scored)} of {lus.n_zones} zones scored"]
    if lus.zones_missing:
        extra.append("not scanned: " + ", ".join(lus.zones_missing))
    if lus.zones_not_scored:
        extra.append("no usable recording: " + ", ".join(lus.zones_not_scored))
    if lus.score_expected is not None:
        extra.append(f"expected {lus.score_expected:.1f}")
    lines.append(f"LUS score {score} / {lus.max_possible} ({'; '.join(extra)})")
    v = exam.verdict
    if v is None:
        lines.append(f"exam diagnosis: none ({exam.no_verdict})")
    else:
        others = ", ".join(f"{clinical_name(c)} {percent(p)}" for c, p in sorted(v.probabilities.items(),
                                                                                key=lambda kv: -kv[1]) if c != v.label)
        drivers = f"; driven by {driver_text(v.drivers)}" if v.drivers else ""
        lines.append(f"exam diagnosis: most likely {clinical_name(v.label)} {percent(v.probabilities[v.label])} "
                     f"({others}); {v.method} over {v.n_clips} clip(s); uncertainty {percent(v.uncertainty)} "
                     f"(100% = no preference){drivers}")
    if exam.review_recommended:
        lines.append("REVIEW RECOMMENDED: " + "; ".join(exam.review_reasons))
    return lines
