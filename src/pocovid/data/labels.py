"""Class names, probe names, and the rules that read them (and patient groups) from names.

Everything here works on strings only: no file is opened. The rules are documented in
`docs/data.md` (labels, probes) and `docs/splits.md` (patient groups).
"""

from __future__ import annotations

import re

from pocovid.errors import PocovidError

#: The classes pocovid knows, in the order tables and models use. `other`: another lung disease
#: (COVID-BLUES' `other_lung_disease`), a class of its own.
CLASSES = ("covid", "pneumonia", "regular", "viral", "other")
#: The 3-class set the public work trains on.
THREE_CLASSES = ("covid", "pneumonia", "regular")
#: Probe (transducer) types; "unknown" when neither folder nor metadata says.
PROBES = ("convex", "linear", "unknown")

# Labels as the public metadata's `Label` column and common class-folder names write them.
_LABEL_SYNONYMS = {
    "covid": ("covid", "covid19", "covid-19", "covid_19", "covid 19", "cov", "sars-cov-2", "sarscov2",
              "corona", "coronavirus"),
    "pneumonia": ("pneumonia", "bacterial pneumonia", "bacterial_pneumonia", "bacterial-pneumonia",
                  "bacterial", "pneu", "pneumonia_bacterial", "bacterial pneumonia (cap)", "cap"),
    "regular": ("regular", "reg", "healthy", "normal", "control", "controls", "negative", "no finding"),
    "viral": ("viral", "vir", "viral pneumonia", "viral_pneumonia", "viral-pneumonia", "other viral",
              "other_viral", "viral other", "other viral pneumonia", "other_viral_pneumonia"),
    "other": ("other", "other lung disease", "other_lung_disease", "other-lung-disease"),
}
_LABEL_LOOKUP = {s: lab for lab, names in _LABEL_SYNONYMS.items() for s in names}
# Labels that say the diagnosis is uncertain (the public set's `Vir_or_Pneu` files).
_UNCERTAIN_LOOKUP = {"vir_or_pneu": "viral", "vir-or-pneu": "viral", "viral or pneumonia": "viral",
                     "viral or bacterial pneumonia": "viral", "vir or pneu": "viral"}

# File-name prefixes of the public dataset: Cov, Pneu/pneu, Reg, Vir; Vir_or_Pneu is uncertain.
# The prefix must end the word: `Regional_x` is not `Reg`.
_PREFIX_RE = re.compile(
    r"^(?P<p>vir[-_ ]?or[-_ ]?pneu(?:monia)?|covid[-_ ]?19|covid|cov|pneumonia|pneu|regular|reg|viral|vir)"
    r"(?![a-z])", re.IGNORECASE)
_PREFIX_LABEL = {"cov": "covid", "covid": "covid", "covid19": "covid", "pneu": "pneumonia",
                 "pneumonia": "pneumonia", "reg": "regular", "regular": "regular", "vir": "viral",
                 "viral": "viral"}


def _norm(text: str) -> str:
    return " ".join(str(text).strip().lower().split())


def normalize_label(text: str | None) -> str | None:
    """A class name from a metadata label or class-folder name ('COVID-19', 'Bacterial pneumonia',
    'Healthy', ...), None when it is not one pocovid knows."""
    if text is None:
        return None
    t = _norm(text)
    if not t:
        return None
    if t in _LABEL_LOOKUP:
        return _LABEL_LOOKUP[t]
    if t in _UNCERTAIN_LOOKUP:
        return _UNCERTAIN_LOOKUP[t]
    t2 = re.sub(r"[-_ ]+", " ", t)
    for k, v in _LABEL_LOOKUP.items():
        if re.sub(r"[-_ ]+", " ", k) == t2:
            return v
    return None


def is_uncertain_label(text: str | None) -> bool:
    """True for labels that leave the diagnosis open (`Vir_or_Pneu`)."""
    return text is not None and re.sub(r"[-_ ]+", "_", _norm(text)) in {"vir_or_pneu", "viral_or_pneumonia",
                                                                        "viral_or_bacterial_pneumonia"}


def label_from_filename(name: str) -> tuple[str | None, bool]:
    """(label, uncertain) from a file name's prefix: `Cov`, `Pneu`/`pneu`, `Reg`, `Vir` (any case;
    `Covid`, `Pneumonia`, `Regular`, `Viral` too). `Vir_or_Pneu` gives ('viral', True): viral or
    bacterial, unknown which. (None, False) when the name has no known prefix."""
    stem = _stem(name)
    m = _PREFIX_RE.match(stem)
    if not m:
        return None, False
    p = re.sub(r"[-_ ]", "", m.group("p").lower())
    if p.startswith("virorpneu"):
        return "viral", True
    return _PREFIX_LABEL.get(p), False


def strip_label_prefix(name: str) -> str:
    """The file name's stem without its class prefix and the separators after it."""
    stem = _stem(name)
    m = _PREFIX_RE.match(stem)
    if not m:
        return stem
    return stem[m.end():].lstrip("-_ +.")


def probe_from_name(name: str) -> str | None:
    """'convex' / 'linear' for a folder (or metadata value) that names a probe, else None."""
    t = _norm(name)
    if t in ("convex", "curvilinear", "curved", "curved array", "abdominal"):
        return "convex"
    if t in ("linear", "linear array", "vascular"):
        return "linear"
    return None


def _parse_names(text, normalize, what: str, known) -> list[str] | None:
    """Comma-separated (or listed) names -> normalised, de-duplicated list; None when empty."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else [p for t in text for p in str(t).split(",")]
    out: list[str] = []
    for p in (p for p in parts if p.strip()):
        name = normalize(p)
        if name is None:
            raise PocovidError(f"unknown {what} '{p.strip()}' (known: {', '.join(known)})")
        if name not in out:
            out.append(name)
    return out or None


def parse_classes(text: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """'covid,pneumonia,regular' -> ['covid', 'pneumonia', 'regular']; synonyms allowed (healthy ->
    regular). None or empty -> None (all classes). Unknown names raise PocovidError."""
    return _parse_names(text, normalize_label, "class", CLASSES)


def parse_probes(text: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """'convex' or 'convex,linear' -> list; 'unknown' allowed; None or empty -> None (all probes)."""
    return _parse_names(text, lambda p: "unknown" if _norm(p) == "unknown" else probe_from_name(p), "probe", PROBES)


# ---------------------------------------------------------------- patient groups from file names

# Words that number a clip, frame or take rather than name a patient.
_CLIP_WORDS = (r"(?:clips?|vids?|videos?|images?|imgs?|movs?|movies?|files?|figs?|figures?|frames?|days?|"
               r"loops?|parts?|seqs?|sequences?|scans?|cines?|takes?|recs?|recordings?|sweeps?|views?|"
               r"snaps?|shots?|series)")
# Suffixes that editing tools add and that say nothing about the patient.
_EDIT_SUFFIX_RE = re.compile(r"[\W_]+(?:crop|cropped|trimmed|trim|cut|edit|edited|final|copy|anon|"
                             r"anonymi[sz]ed|deid|small|resized|converted|compressed|orig|original)$")
# One trailing number: after a separator (`_3`, `+(44)`), or right after a clip word (`clip3`,
# `Image1`, `Fig15A`). A number glued to other letters (`h1n1`, `paper6`) is part of the name.
_TRAILING_NUMBER_RE = re.compile(rf"(?:[\W_]+(?:{_CLIP_WORDS}[\W_]*)?|{_CLIP_WORDS}[\W_]*)\d+[a-z]?[\W_]*$")
_TRAILING_CLIP_WORD_RE = re.compile(rf"[\W_]*{_CLIP_WORDS}[\W_]*$")


def patient_from_filename(name: str) -> str:
    """A patient-group key from a file name, for data without patient metadata.

    The rule (docs/splits.md), on the lower-cased stem:
    1. drop the class prefix (`Cov_`, `Pneu-`, `Reg_`, `Vir_`, `Vir_or_Pneu_`);
    2. drop editing suffixes, repeatedly (`_crop`, `_trimmed`, `_copy`, ...);
    3. drop ONE trailing clip number: `_3`, `+(44)`, `_clip3`, `Image1`, `_vid10`, `_Fig15A`, `_132943`;
    4. drop one trailing bare clip word left over (`pat1Image` -> `pat1`);
    5. remove every separator and symbol.
    If a step leaves nothing, the result of the step before is kept.
    `Reg_pat1Image_132943` and `Reg_pat1Image_133043` -> 'pat1'; `Pneu_liftl_pneu_case3_clip3/4/5` ->
    'liftlpneucase3'; `Cov_combatting_Image1..5` -> 'combatting'.
    """
    s = strip_label_prefix(name).lower()
    steps = [s]
    prev = None
    while prev != s:
        prev = s
        s = _EDIT_SUFFIX_RE.sub("", s)
    steps.append(s)
    s = _TRAILING_NUMBER_RE.sub("", s)
    steps.append(s)
    s = _TRAILING_CLIP_WORD_RE.sub("", s)
    steps.append(s)
    for cand in reversed(steps):
        key = re.sub(r"[\W_]+", "", cand)
        if key:
            return key
    return re.sub(r"[\W_]+", "", _stem(name).lower()) or "unnamed"


def _stem(name: str) -> str:
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    # Strip one known extension only: 'Cov-Atlas+(44).gif' -> 'Cov-Atlas+(44)'; dots inside stay.
    m = re.match(r"^(.*)\.([A-Za-z0-9]{1,5})$", base)
    return m.group(1) if m and m.group(1) else base
