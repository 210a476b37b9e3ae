"""What a clinician looks at: the timeline plot, key-frame images, the self-contained HTML report
and the overlay video."""

from __future__ import annotations

import base64
import functools
import os
from pathlib import Path

import cv2
import numpy as np

from pocovid.analysis.display import (WITHHELD_GREY, class_colours, clinical_name, finding_name, heat_stops, percent,
                                     plural, rgb, severity_text, uncertainty_sentence)
from pocovid.analysis.ood import OUTSIDE_WORDS
from pocovid.analysis.result import AnalysisResult
from pocovid.files import write_text

NOTICE = ("Decision support for trained clinicians, not a diagnosis. Research software: the model "
          "was trained on two small datasets; read the probabilities, the uncertainty and the "
          "images, and decide with the whole clinical picture.")

# ------------------------------------------------------------------------------------ timeline
def timeline_plot(path: str | os.PathLike, times: np.ndarray, probs: np.ndarray, classes: list[str], predicted: int,
                  key_times: list[float], segments: list[dict], members: np.ndarray | None = None,
                  title: str = "", key_labels: list[str] | None = None) -> Path:
    """Per-class probability over time, key moments marked (in the colour of their class), runs of
    frames favouring another class shaded; the band around the predicted class is the ensemble
    members' range. Made for clips (a single frame has no timeline)."""
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
        ax.axvline(kt, color=cols.get((key_labels or [])[k] if k < len(key_labels or []) else "", "k"), ls="--", lw=1)
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
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _wrap(text: str, width: int, font_scale: float, thickness: int) -> list[str]:
    """`text` broken into lines that fit `width` pixels (at spaces)."""
    lines, cur = [], ""
    for word in text.split(" "):
        trial = f"{cur} {word}" if cur else word
        if cur and cv2.getTextSize(trial, _FONT, font_scale, thickness)[0][0] > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return lines + [cur]


def _text_strip(width: int, lines: list[str], scale: float) -> np.ndarray:
    fs, th = 0.6 * scale, max(1, int(round(1.4 * scale)))
    wrapped = [w for ln in lines for w in _wrap(ln, width - int(16 * scale), fs, th)]
    lh = int(26 * scale)
    strip = np.full((lh * len(wrapped) + int(10 * scale), width, 3), 255, np.uint8)
    for i, txt in enumerate(wrapped):
        cv2.putText(strip, txt, (int(8 * scale), lh * (i + 1)), _FONT, fs, (0, 0, 0), th, cv2.LINE_AA)
    return strip


def _heat_legend(width: int, scale: float) -> np.ndarray:
    """A strip with the heat map's colours from 'low' to 'high' (the key of the right-hand image)."""
    from pocovid.analysis.display import heat_lut

    fs, th = 0.5 * scale, max(1, int(round(1.2 * scale)))
    h = int(24 * scale)
    strip = np.full((h, width, 3), 255, np.uint8)
    x0 = int(8 * scale)
    label = "heat (evidence):  low"
    (tw, _), _ = cv2.getTextSize(label, _FONT, fs, th)
    cv2.putText(strip, label, (x0, int(17 * scale)), _FONT, fs, (0, 0, 0), th, cv2.LINE_AA)
    bx0 = x0 + tw + int(8 * scale)
    bw = max(16, min(int(200 * scale), width - bx0 - int(60 * scale)))
    bw = min(bw, width - bx0)  # a very narrow image (a still one pixel wide): the key is cut at its edge
    if bw > 0:
        strip[int(6 * scale):int(18 * scale), bx0:bx0 + bw] = heat_lut()[np.linspace(0, 255, bw).astype(int)][None]
    cv2.putText(strip, "high", (bx0 + bw + int(6 * scale), int(17 * scale)), _FONT, fs, (0, 0, 0), th, cv2.LINE_AA)
    return strip


def key_frame_image(path: str | os.PathLike, original: np.ndarray, overlay: np.ndarray, lines: list[str],
                    max_height: int = 600, min_height: int = 320) -> Path:
    """PNG: the frame and the same frame with the heatmap side by side, a key to the heat and the
    caption below (a small frame, e.g. a cropped scan region, is enlarged to `min_height`)."""
    h, w = original.shape[:2]
    f = min(max_height / h, max(1.0, min_height / h))
    if f != 1.0:
        size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
        interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
        original = cv2.resize(original, size, interpolation=interp)
        overlay = cv2.resize(overlay, size, interpolation=interp)
    gap = np.full((original.shape[0], 8, 3), 255, np.uint8)
    top = np.hstack([original, gap, overlay])
    scale = float(np.clip(top.shape[1] / 1200, 0.6, 1.4))
    img = np.vstack([top, _heat_legend(top.shape[1], scale), _text_strip(top.shape[1], lines, scale)])
    cv2.imwrite(str(path), img[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 3])
    return Path(path)


# ------------------------------------------------------------------------------ overlay video
VIDEO_LONG_SIDE = 1280  # the overlay video is shrunk to this longer side
VIDEO_MIN_LONG_SIDE = 480  # ... and a smaller one enlarged to this, so that its text stays legible


def write_overlay_video(path, out_path: Path, info, region, sampled_idx: np.ndarray, frame_p: np.ndarray,
                        maps: np.ndarray, scales, classes: list[str], heat_class: np.ndarray | None = None, *,
                        full_screen: bool = False, playback_path: Path | None = None) -> Path:
    """Every frame of the clip with the heatmap of the nearest analysed frame (`maps`, the map of
    class `heat_class[j]` of analysed frame j, scaled by `scales[j]`), under a strip at the TOP (a
    player's controls cover the bottom) with the time, the heatmap's class and the frame's
    probabilities, as H.264 mp4. Decoded again, one frame at a time. The scan region only unless
    `full_screen`. With `playback_path`, the same frames without heatmap or strip are written there
    too (a copy browsers play of a recording in a container they do not)."""
    from pocovid.analysis.explain import overlay_frame, scan_view
    from pocovid.media import VideoWriter, open_media

    sampled_idx = np.asarray(sampled_idx)
    scales = np.broadcast_to(np.asarray(scales, np.float32), (len(sampled_idx),))
    heat_class = np.zeros(len(sampled_idx), int) if heat_class is None else np.asarray(heat_class)
    fps = info.fps if info.fps and info.fps > 0 else 25.0
    writer = copy = None
    size = None
    ok = False
    try:
        with open_media(path) as r:
            for fr in r:
                j = int(np.clip(np.searchsorted(sampled_idx, fr.index), 0, len(sampled_idx) - 1))
                if j > 0 and abs(sampled_idx[j - 1] - fr.index) <= abs(sampled_idx[j] - fr.index):
                    j -= 1
                img = overlay_frame(fr.image, maps[j], region, float(scales[j]), full_screen=full_screen)
                if size is None:
                    h0, w0 = img.shape[:2]
                    f = min(VIDEO_LONG_SIDE / max(h0, w0), max(1.0, VIDEO_MIN_LONG_SIDE / max(h0, w0)))
                    size = (max(2, int(round(w0 * f)) // 2 * 2), max(2, int(round(h0 * f)) // 2 * 2))
                if img.shape[1::-1] != size:
                    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if size[0] < img.shape[1] else
                                     cv2.INTER_LINEAR)
                bar = probability_bar(size[0], frame_p[j], classes, fr.time_s, classes[int(heat_class[j])])
                frame = np.vstack([bar, img])
                if writer is None:
                    writer = VideoWriter(out_path, fps, frame.shape[1], frame.shape[0], quality=23, preset="superfast",
                                         pad_to_even=True)
                writer.write(frame)
                if playback_path is not None:
                    plain = scan_view(fr.image, region, full_screen)
                    plain = cv2.resize(plain, size, interpolation=cv2.INTER_AREA if size[0] < plain.shape[1] else
                                       cv2.INTER_LINEAR) if plain.shape[1::-1] != size else plain
                    if copy is None:
                        copy = VideoWriter(playback_path, fps, size[0], size[1], quality=23, preset="superfast",
                                           pad_to_even=True)
                    copy.write(plain)
        ok = True
    finally:
        for w in (writer, copy):
            if w is not None:
                w.close() if ok else w.abort()
    return out_path


def probability_bar(width: int, probs: np.ndarray, classes: list[str], t: float, heat_class: str | None = None,
                    note: str = "decision support, not a diagnosis") -> np.ndarray:
    """The strip above each overlay-video frame: the time, the class whose heatmap is shown and
    the frame's class probabilities (a colour swatch each), in text at least ~14 px high, wrapped
    over lines as the width needs; `note` where it fits."""
    fs = float(np.clip(width / 800, 0.55, 1.1))
    th = max(1, int(round(1.8 * fs)))
    line_h = int(round(30 * fs))
    pad = int(round(10 * fs))
    cols = class_colours(classes)
    items = [(f"{int(t // 60)}:{t % 60:04.1f}", None)]
    if heat_class is not None:
        items.append((f"heat: {clinical_name(heat_class)}", cols.get(heat_class)))
    items += [(f"{clinical_name(c)} {percent(float(p))}", cols[c]) for c, p in zip(classes, probs, strict=True)]
    sw = int(round(14 * fs))  # swatch
    placed, x, row = [], pad, 0
    for txt, col in items:
        (tw, _), _ = cv2.getTextSize(txt, _FONT, fs, th)
        need = tw + (sw + int(6 * fs) if col else 0)
        if x > pad and x + need > width - pad:
            row, x = row + 1, pad
        placed.append((txt, col, x, row))
        x += need + int(18 * fs)
    (nw, _), _ = cv2.getTextSize(note, _FONT, 0.8 * fs, 1)
    note_at = (x, row) if note and x + nw <= width - pad else None
    hgt = (row + 1) * line_h + pad
    hgt += hgt % 2
    strip = np.full((hgt, width, 3), 20, np.uint8)
    base = pad + int(round(21 * fs))
    for txt, col, x, row in placed:
        y = base + row * line_h
        if col:
            cv2.rectangle(strip, (x, y - sw), (x + sw, y), rgb(col), -1)
            x += sw + int(6 * fs)
        cv2.putText(strip, txt, (x, y), _FONT, fs, (255, 255, 255), th, cv2.LINE_AA)
    if note_at:
        cv2.putText(strip, note, (note_at[0], base + note_at[1] * line_h), _FONT, 0.8 * fs, (200, 200, 200), 1,
                    cv2.LINE_AA)
    return strip


# ---------------------------------------------------------------------------------------- HTML
# review reasons analyze.py writes for causes the report shows from the result's own fields (the old
# wordings too: a stored result of an earlier version is rendered again by the same template)
_SHOWN_FROM_FIELDS = (OUTSIDE_WORDS.split(" (")[0], "the input does not look like", "the model is uncertain",
                      "frames disagree")


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
    env.filters["plural"] = plural
    env.filters["severity"] = severity_text
    return env


def write_html(path: str | os.PathLike, result: AnalysisResult, out_dir: str | os.PathLike) -> Path:
    """The self-contained report (templates/report.html.j2): every image embedded as a data: URI,
    no script, no external resource. Out of distribution, the verdict is withheld (no class colour,
    no bold, the probabilities greyed in a fold); with review recommended, it is shown outlined and
    hatched with a badge, never as a filled bar."""
    out_dir = Path(out_dir)
    names = [n for n in [result.timeline, *(k.image for k in result.key_frames),
                         *(m.image for m in result.finding_maps)] if n]
    unc, pred = result.uncertainty, result.prediction
    page = _environment().get_template("report.html.j2").render(
        result=result, file_name=Path(result.file).name, images={n: _data_uri(out_dir / n) for n in names},
        colours=class_colours(pred.probabilities), grey=WITHHELD_GREY, uncertain=unc.score >= unc.threshold,
        sizeable=[s for s in pred.disagreement if s.sizeable], heat=heat_stops(),
        other_reasons=[r for r in result.review_reasons if not r.startswith(_SHOWN_FROM_FIELDS)],
        uncertainty_sentence=unc.summary or uncertainty_sentence(unc.score, unc.threshold))
    return write_text(path, page)
