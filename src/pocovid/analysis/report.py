"""What a clinician looks at: the timeline plot, key-frame images, the self-contained HTML report
and the overlay video."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import cv2
import numpy as np

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
        style = dict(color=cols[c], lw=2.2 if i == predicted else 1.3, label=c)
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
    for c, p in zip(classes, probs):
        txt = f"{c} {p:.2f}"
        cv2.putText(strip, txt, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55 * scale, _rgb(cols[c]), 1, cv2.LINE_AA)
        x += int((len(txt) * 11 + 20) * scale)
    if note:
        (tw, _), _ = cv2.getTextSize(note, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, 1)
        if x + tw < width:  # only where it fits
            cv2.putText(strip, note, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (200, 200, 200), 1, cv2.LINE_AA)
    return strip


# ---------------------------------------------------------------------------------------- HTML
def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.notice{background:#fff4d6;border:1px solid #e0b84c;padding:10px 14px;border-radius:6px;margin:12px 0}
.alert{background:#fde2e1;border:1px solid #d9534f;padding:10px 14px;border-radius:6px;margin:12px 0}
.ok{background:#e6f4ea;border:1px solid #5cb85c;padding:10px 14px;border-radius:6px;margin:12px 0}
table{border-collapse:collapse;margin:8px 0}td,th{padding:4px 10px;text-align:left;border-bottom:1px solid #eee;
vertical-align:top}.bar{display:inline-block;height:12px;border-radius:2px}
img{max-width:100%;height:auto;border:1px solid #ddd}figure{margin:14px 0}figcaption{font-size:.92em;color:#444}
.muted{color:#666;font-size:.9em}code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _prob_table(probs: dict, colours: dict, bold: str | None = None) -> str:
    rows = []
    for c, p in sorted(probs.items(), key=lambda kv: -kv[1]):
        w = max(1, int(round(240 * p)))
        name = f"<b>{_e(c)}</b>" if c == bold else _e(c)
        rows.append(f"<tr><td>{name}</td><td>{p:.3f}</td><td><span class='bar' style='width:{w}px;"
                    f"background:{colours.get(c, '#888')}'></span></td></tr>")
    return "<table><tr><th>class</th><th>probability</th><th></th></tr>" + "".join(rows) + "</table>"


def write_html(path: str | os.PathLike, result: dict, out_dir: str | os.PathLike) -> Path:
    """The self-contained report: every image embedded as a data: URI, no external resource."""
    out_dir = Path(out_dir)
    classes = list(result["prediction"]["probabilities"])
    cols = class_colours(classes)
    pred = result["prediction"]
    unc = result["uncertainty"]
    ood = result["ood"]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>pocovid analysis: "
             f"{_e(Path(result['file']).name)}</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>Lung ultrasound analysis</h1><div class='muted'>{_e(result['file'])} &middot; "
                 f"pocovid {_e(result['pocovid_version'])} &middot; {_e(result['created'])}</div>")
    parts.append(f"<div class='notice'><b>Decision support, not a diagnosis.</b> {_e(result['notice'])}</div>")
    if result["out_of_distribution"]:
        parts.append("<div class='alert'><b>This input does not look like the lung ultrasound the model was "
                     "trained on: no diagnosis is given.</b><ul>" + "".join(f"<li>{_e(r)}</li>" for r in ood["reasons"]) + "</ul>"
                     "The probabilities below are shown for transparency only.</div>")
    elif result["review_recommended"]:
        parts.append("<div class='alert'><b>Review recommended.</b><ul>" +
                     "".join(f"<li>{_e(r)}</li>" for r in result["review_reasons"]) + "</ul></div>")
    else:
        parts.append("<div class='ok'>The ensemble agrees with itself and the frames agree with each other "
                     "(uncertainty below the review threshold). Still decision support only.</div>")
    label = pred["label"]
    head = ("Model output (withheld as a diagnosis: input out of distribution)" if result["out_of_distribution"]
            else f"Model output: most likely <b>{_e(label)}</b> ({pred['probabilities'][label]:.2f})")
    parts.append(f"<h2>Clip-level probabilities</h2><p>{head}. Mean of the probabilities of "
                 f"{result['sampling']['n_frames_analyzed']} analysed frames.</p>")
    parts.append(_prob_table(pred["probabilities"], cols, None if result["out_of_distribution"] else label))
    thr = unc.get("threshold")
    parts.append(f"<p>Uncertainty ({_e(unc['method'])}, ensemble of {unc['n_members']} members): "
                 f"<b>{unc['score']:.4f}</b>; review threshold {thr if thr is None else f'{thr:.4f}'} "
                 f"({_e(unc['threshold_source'])}). {_e(unc['description'])}</p>")
    tl = result.get("timeline")
    parts.append("<h2>Timeline</h2>")
    if result["prediction"].get("frames_disagree"):
        segs = [s for s in pred["disagreement"] if s["sizeable"]]
        parts.append("<p><b>Frames disagree:</b> " + "; ".join(
            f"{_e(s['label'])} from {s['start_s']:.2f} s to {s['end_s']:.2f} s ({s['n_frames']} frames, "
            f"{s['share']:.0%} of the clip)" for s in segs) + ". Look at these segments.</p>")
    if tl:
        parts.append(f"<figure><img alt='timeline' src='{_data_uri(out_dir / tl)}'><figcaption>Probability of "
                     "each class per analysed frame; dashed lines: key moments; shaded: runs of frames favouring "
                     "another class; band: range of the ensemble members for the most likely class."
                     "</figcaption></figure>")
    if result["key_frames"]:
        if result["out_of_distribution"]:
            parts.append("<h2>Where the model looked</h2><p><b>The input is out of distribution: these frames "
                         "are no evidence for a diagnosis.</b></p>")
        else:
            parts.append("<h2>Key moments</h2>")
        parts.append(f"<p>Frames where the evidence for <b>{_e(label)}</b> peaks, at least "
                     f"{result['key_frame_min_gap_s']:.2f} s apart. Left: the original frame; right: "
                     f"{_e(result['explainer_description'])}, inside the scan region only.</p>")
        for k in result["key_frames"]:
            probs = ", ".join(f"{c} {p:.2f}" for c, p in k["probabilities"].items())
            parts.append(f"<figure><img alt='key moment {k['rank']}' src='{_data_uri(out_dir / k['image'])}'>"
                         f"<figcaption>{k['rank']}. t = {k['time_s']:.2f} s (frame {k['index']}): {_e(probs)}"
                         f"</figcaption></figure>")
    if result.get("overlay_video"):
        parts.append(f"<p>Overlay video of the whole clip: <code>{_e(result['overlay_video'])}</code> "
                     f"(in this folder).</p>")
    # details
    reg = result["region"]
    parts.append("<h2>Details</h2><table>")
    m = result["model_info"]
    rows = [("model", f"{result['model']} ({m.get('backbone')}, {m.get('n_heads')} heads, classes "
                      f"{', '.join(m.get('classes', []))})"),
            ("recording", f"{result['media']['kind']}, {result['media']['width']}x{result['media']['height']}, "
                          f"{result['media']['n_frames']} frames"
                          + (f" at {result['media']['fps']:.2f} fps" if result['media']['fps'] else "")),
            ("frames analysed", f"{result['sampling']['n_frames_analyzed']}"
                                + (f" at {result['sampling']['rate_hz']:g} Hz" if result['sampling']['rate_hz']
                                   else " (every frame)")),
            ("scan region", f"{reg['shape']} ({reg['method']}), box {reg['box']}" + (f"; {reg['note']}" if reg.get('note') else "")),
            ("out of distribution", f"{result['out_of_distribution']}" + (
                f" ({'; '.join(ood['reasons'])})" if ood["reasons"] else "")),
            ("time", ", ".join(f"{k} {v:.2f} s" for k, v in result["timings"].items()))]
    parts += [f"<tr><th>{_e(a)}</th><td>{_e(b)}</td></tr>" for a, b in rows]
    parts.append("</table>")
    parts.append(f"<p class='muted'>{_e(result['notice'])}</p></body></html>")
    p = Path(path)
    p.write_text("".join(parts), encoding="utf-8")
    return p
