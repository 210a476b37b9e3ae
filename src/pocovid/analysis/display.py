"""How results are shown to people, written once: the clinician's words for classes, findings and
severity, the class colours and the heat map. The report, the key-frame images, the timeline, the
overlay video and the web page (GET /api/display: `display_spec()`) all take them from here.

Colours: the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"), told apart with every
common colour-vision deficiency; no red / green pair. Heat: viridis, perceptually uniform (equal
steps of heat look like equal steps of colour; no false edges as with jet) and readable in grey.
"""

from __future__ import annotations

import functools

import numpy as np

#: Okabe-Ito (hex, sRGB).
OKABE_ITO = {"orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7", "black": "#000000"}
#: The colour of each class key; classes not named here take the rest of the palette in order.
CLASS_COLOURS = {"covid": OKABE_ITO["vermillion"], "pneumonia": OKABE_ITO["blue"],
                 "regular": OKABE_ITO["bluish_green"], "viral": OKABE_ITO["reddish_purple"]}
_OTHER_COLOURS = [OKABE_ITO[k] for k in ("orange", "sky_blue", "yellow", "black")]
#: Probabilities shown for transparency only (out of distribution): no class colour.
WITHHELD_GREY = "#9A9A9A"
#: The heat map of every CAM / Grad-CAM drawn (OpenCV's COLORMAP_VIRIDIS).
HEATMAP = "viridis"

#: The clinician's word for each class key (the keys stay as they are in result.json).
CLASS_NAMES = {"regular": "healthy", "covid": "COVID-19", "pneumonia": "bacterial pneumonia",
               "viral": "viral pneumonia"}
#: The clinician's words for each finding key (the keys stay as they are in result.json).
FINDING_NAMES = {"b_lines": "B-lines", "a_lines": "A-lines", "consolidation": "consolidation",
                 "effusion": "pleural effusion", "pleural_irregularity": "pleural line irregularity",
                 "air_bronchogram": "air bronchogram"}
#: Lung severity (Soldati score 0-3) in words.
SEVERITY_WORDS = ("normal aeration", "mild", "moderate", "severe")
#: Severity 0-3 as a colour (the exam's lung diagram and zone table): ColorBrewer YlOrBr, 4 classes, a
#: sequential ramp from light (0) to dark (3), readable with colour-vision deficiency and in grey; and the
#: text colour that reads on each.
SEVERITY_COLOURS = ("#FFFFD4", "#FED98E", "#FE9929", "#CC4C02")
SEVERITY_INK = ("#222222", "#222222", "#222222", "#FFFFFF")


def class_colours(classes) -> dict[str, str]:
    """Class key -> colour (hex) for the classes of a model, in its order."""
    out, k = {}, 0
    for c in classes:
        if c in CLASS_COLOURS:
            out[c] = CLASS_COLOURS[c]
        else:
            out[c] = _OTHER_COLOURS[k % len(_OTHER_COLOURS)]
            k += 1
    return out


def rgb(hexcol: str) -> tuple[int, int, int]:
    """'#RRGGBB' -> (r, g, b)."""
    return tuple(int(hexcol[i:i + 2], 16) for i in (1, 3, 5))


def clinical_name(c: str) -> str:
    return CLASS_NAMES.get(c, c.replace("_", " "))


def finding_name(f: str) -> str:
    return FINDING_NAMES.get(f, f.replace("_", " "))


def severity_text(level: int, levels: int = 4) -> str:
    """'severity 2 of 3 (moderate)'."""
    top = max(int(levels) - 1, 1)
    words = SEVERITY_WORDS[level] if levels == len(SEVERITY_WORDS) and 0 <= level < len(SEVERITY_WORDS) else ""
    return f"severity {int(level)} of {top}" + (f" ({words})" if words else "")


def percent(p: float) -> str:
    """A probability as a whole percent ("<1%" for a small non-zero one, ">99%" short of certain)."""
    if 0 < p < 0.005:
        return "<1%"
    if 0.995 <= p < 1:
        return ">99%"
    return f"{round(100 * p)}%"


def plural(n: int, word: str, words: str | None = None) -> str:
    """'1 frame', '3 frames'."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def uncertainty_sentence(score: float, threshold: float) -> str:
    """The uncertainty in one plain sentence (no figure: the figures are in the details)."""
    level = "the level at which review is recommended"
    if score >= threshold:
        return f"The model is unsure about this recording: its uncertainty is at or above {level}."
    if score < 0.5 * threshold:
        return f"The model is sure of this result: its uncertainty is well below {level}."
    return f"The model is fairly sure of this result: its uncertainty is below {level}."


@functools.cache
def heat_lut() -> np.ndarray:
    """(256, 3) uint8 RGB look-up table of the heat map."""
    import cv2

    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_VIRIDIS)[:, 0, ::-1]
    out = np.ascontiguousarray(lut)
    out.flags.writeable = False
    return out


def heat_stops(n: int = 9) -> list[str]:
    """`n` evenly spaced colours of the heat map, low to high (a CSS gradient for a legend)."""
    lut = heat_lut()
    return ["#%02X%02X%02X" % tuple(int(v) for v in lut[i]) for i in np.linspace(0, 255, n).round().astype(int)]


def display_spec(classes=None) -> dict:
    """What the web page needs to show results as the report does (GET /api/display)."""
    classes = list(classes or CLASS_COLOURS)
    return {"class_names": {c: clinical_name(c) for c in classes} | CLASS_NAMES,
            "class_colours": class_colours(classes), "withheld_colour": WITHHELD_GREY,
            "finding_names": dict(FINDING_NAMES), "severity_words": list(SEVERITY_WORDS),
            "severity_colours": list(SEVERITY_COLOURS), "severity_ink": list(SEVERITY_INK),
            "heatmap": {"name": HEATMAP, "stops": heat_stops()}}
