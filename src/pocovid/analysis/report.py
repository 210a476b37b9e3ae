"""What a clinician looks at: the timeline plot, key-frame images, the self-contained HTML report
and the overlay video."""

from __future__ import annotations

import base64
import functools
import os
from pathlib import Path

import cv2
import numpy as np

from pocovid.analysis.result import AnalysisResult
from pocovid.files import write_text

NOTICE = ("Decision support for trained clinicians, not a diagnosis. Research software: the model "
          "was trained on a small public dataset; read the probabilities, the uncertainty and the "
          "images, and decide with the whole clinical picture.")

_CLASS_COLOURS = {"covid": "#d62728", "pneumonia": "#ff7f0e", "regular": "#2ca02c", "viral": "#9467bd"}
_OTHER = ["#1f77b4", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def class_colours(classes) -> dict[str, str]:
    out, k = {}, 0
    for c in classes:
        if c in _CLASS_COLOURS:
            out[c] = _CLASS_COLOURS[c]
        else:
            out[c] = _OTHER[k % len(_OTHER)]
            k += 1
    return out


def _rgb(hexcol: str) -> tuple[int, int, int]:
    return tuple(int(hexcol[i:i + 2], 16) for i in (1, 3, 5))


# ------------------------------------------------------------------------------------ timeline
def timeline_plot(path: str | os.PathLike, times: np.ndarray, probs: np.ndarray, classes: list[str], predicted: int,
                  key_times: list[float], segments: list[dict], members: np.ndarray | None = None,
                  title: str = "") -> Path:
    """Per-class probability over time, key moments marked, runs of frames favouring another class
    shaded; the band around the predicted class is the ensemble members' range."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = class_colours(classes)
    fig = Figure(figsize=(10, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    t = np.asarray(times, float)
    single = len(t) <= 1
    for s in segments:
        if s.get("sizeable"):
            lo, hi = s["start_s"], s["end_s"]
            pad = 0.5 * (np.median(np.diff(t)) if len(t) > 1 else 0.1)
            ax.axvspan(lo - pad, hi + pad, color=cols[s["label"]], alpha=0.12, lw=0)
    for i, c in enumerate(classes):
        style = dict(color=cols[c], lw=2.2 if i == predicted else 1.3, label=clinical_name(c))
        if single:
            ax.plot(t, probs[:, i], "o", ms=8, **style)
        else:
            ax.plot(t, probs[:, i], **style)
    if members is not None and not single and members.shape[1] > 1:
        pm = members[:, :, predicted]
        ax.fill_between(t, pm.min(1), pm.max(1), color=cols[classes[predicted]], alpha=0.18, lw=0)
    for k, kt in enumerate(key_times):
        ax.axvline(kt, color="k", ls="--", lw=1)
        ax.text(kt, 1.02, str(k + 1), ha="center", va="bottom", fontsize=9, fontweight="bold")
    ax.set_ylim(0, 1.0)
    if single:
        ax.set_xlim(-1, 1)
    elif len(t):
        ax.set_xlim(t.min(), max(t.max(), t.min() + 1e-3))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=9)
    if title:
        ax.set_title(title, fontsize=10, pad=14)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


# ---------------------------------------------------------------------------------- key frames
def _text_strip(width: int, lines: list[tuple[str, tuple[int, int, int]]], scale: float) -> np.ndarray:
    lh = int(26 * scale)
    strip = np.full((lh * len(lines) + int(10 * scale), width, 3), 255, np.uint8)
    for i, (txt, col) in enumerate(lines):
        cv2.putText(strip, txt, (int(8 * scale), lh * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, col,
                    max(1, int(round(1.4 * scale))), cv2.LINE_AA)
    return strip


def key_frame_image(path: str | os.PathLike, original: np.ndarray, overlay: np.ndarray, lines: list[str],
                    max_height: int = 600) -> Path:
    """PNG: the original frame and the same frame with the heatmap side by side, caption below."""
    h, w = original.shape[:2]
    f = min(1.0, max_height / h)
    if f < 1.0:
        size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
        original = cv2.resize(original, size, interpolation=cv2.INTER_AREA)
        overlay = cv2.resize(overlay, size, interpolation=cv2.INTER_AREA)
    gap = np.full((original.shape[0], 8, 3), 255, np.uint8)
    top = np.hstack([original, gap, overlay])
    scale = float(np.clip(top.shape[1] / 1200, 0.6, 1.4))
    strip = _text_strip(top.shape[1], [(ln, (0, 0, 0)) for ln in lines], scale)
    img = np.vstack([top, strip])
    cv2.imwrite(str(path), img[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 3])
    return Path(path)


# ------------------------------------------------------------------------------ overlay video
VIDEO_LONG_SIDE = 1280  # the overlay video is shrunk to this longer side


def write_overlay_video(path, out_path: Path, info, region, sampled_idx: np.ndarray, frame_p: np.ndarray,
                        maps: np.ndarray, scale: float, classes: list[str]) -> Path:
    """Every frame of the clip with the heatmap of the nearest analysed frame and its probabilities
    (decoded again, one frame at a time), as H.264 mp4."""
    from pocovid.analysis.explain import overlay_frame
    from pocovid.media import VideoWriter, open_media

    f = min(1.0, VIDEO_LONG_SIDE / max(info.width, info.height))
    w, h = int(round(info.width * f)) // 2 * 2, int(round(info.height * f)) // 2 * 2
    sampled_idx = np.asarray(sampled_idx)
    writer = None
    try:
        with open_media(path) as r:
            for fr in r:
                j = int(np.clip(np.searchsorted(sampled_idx, fr.index), 0, len(sampled_idx) - 1))
                if j > 0 and abs(sampled_idx[j - 1] - fr.index) <= abs(sampled_idx[j] - fr.index):
                    j -= 1
                img = overlay_frame(fr.image, maps[j], region, scale)
                if f < 1.0 or img.shape[:2] != (h, w):
                    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
                bar = probability_bar(w, frame_p[j], classes, fr.time_s, "decision support, not a diagnosis")
                frame = np.vstack([img, bar])
                if writer is None:
                    writer = VideoWriter(out_path, info.fps if info.fps and info.fps > 0 else 25.0, frame.shape[1],
                                         frame.shape[0], quality=23, preset="superfast", pad_to_even=True)
                writer.write(frame)
    finally:
        if writer is not None:
            writer.close()
    return out_path


def probability_bar(width: int, probs: np.ndarray, classes: list[str], t: float, note: str = "") -> np.ndarray:
    """A strip under each overlay-video frame: the time and the frame's class probabilities."""
    scale = float(np.clip(width / 900, 0.5, 1.5))
    hgt = int(34 * scale)
    hgt += hgt % 2
    strip = np.full((hgt, width, 3), 20, np.uint8)
    cols = class_colours(classes)
    x = int(8 * scale)
    y = int(23 * scale)
    cv2.putText(strip, f"{t:6.2f} s", (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55 * scale, (255, 255, 255), 1, cv2.LINE_AA)
    x += int(90 * scale)
    for c, p in zip(classes, probs, strict=True):
        txt = f"{c} {p:.2f}"
        cv2.putText(strip, txt, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55 * scale, _rgb(cols[c]), 1, cv2.LINE_AA)
        x += int((len(txt) * 11 + 20) * scale)
    if note:
        (tw, _), _ = cv2.getTextSize(note, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, 1)
        if x + tw < width:  # only where it fits
            cv2.putText(strip, note, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (200, 200, 200), 1, cv2.LINE_AA)
    return strip


# ---------------------------------------------------------------------------------------- HTML
#: The clinician's word for each class key (the keys stay as they are in result.json).
CLINICAL_NAMES = {"regular": "healthy", "covid": "COVID-19", "pneumonia": "bacterial pneumonia",
                  "viral": "viral pneumonia"}

#: What each uncertainty score means, in plain words (result.uncertainty.description is the technical one).
_UNCERTAINTY_WORDS = {
    "entropy": "How evenly the clip's probabilities are spread over the classes (0 = all on one class)",
    "bald": "How much the ensemble's members disagree with each other about the clip",
    "frame_bald": "How much the ensemble's members disagree with each other, frame by frame",
    "member_std": "How far apart the ensemble's members put the most likely class, frame by frame",
    "margin": "How close the second most likely class comes to the first (1 = a tie)",
}

# review reasons analyze.py writes for causes the report shows from the result's own fields
_SHOWN_FROM_FIELDS = ("the input does not look like", "the model is uncertain", "frames disagree")


#: The clinician's words for each finding key (the keys stay as they are in result.json).
FINDING_NAMES_SHOWN = {"b_lines": "B-lines", "a_lines": "A-lines", "consolidation": "consolidation",
                       "effusion": "pleural effusion", "pleural_irregularity": "pleural line irregularity",
                       "air_bronchogram": "air bronchogram"}


def finding_name(f: str) -> str:
    return FINDING_NAMES_SHOWN.get(f, f.replace("_", " "))


def clinical_name(c: str) -> str:
    return CLINICAL_NAMES.get(c, c)


def percent(p: float) -> str:
    """A probability as a whole percent ("<1%" for a small non-zero one)."""
    return "<1%" if 0 < p < 0.005 else f"{round(100 * p)}%"


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


@functools.cache
def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["clinical"] = clinical_name
    env.filters["pct"] = percent
    env.filters["finding"] = finding_name
    return env


def write_html(path: str | os.PathLike, result: AnalysisResult, out_dir: str | os.PathLike) -> Path:
    """The self-contained report (templates/report.html.j2): every image embedded as a data: URI,
    no script, no external resource. Out of distribution, the verdict is withheld; with review
    recommended, it is shown muted."""
    out_dir = Path(out_dir)
    names = [n for n in [result.timeline, *(k.image for k in result.key_frames)] if n]
    unc, pred = result.uncertainty, result.prediction
    page = _environment().get_template("report.html.j2").render(
        result=result, file_name=Path(result.file).name, images={n: _data_uri(out_dir / n) for n in names},
        colours=class_colours(pred.probabilities), uncertain=unc.score >= unc.threshold,
        sizeable=[s for s in pred.disagreement if s.sizeable],
        other_reasons=[r for r in result.review_reasons if not r.startswith(_SHOWN_FROM_FIELDS)],
        uncertainty_words=_UNCERTAINTY_WORDS.get(unc.method, unc.description.removesuffix(", nats")))
    return write_text(path, page)
