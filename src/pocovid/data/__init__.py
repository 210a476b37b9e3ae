"""Datasets: index folders of recordings (POCUS, COVID-BLUES, class folders; several at once), split them into
patient-grouped folds, check a split."""

from pocovid.data.findings import FINDING_NAMES, TARGETS, Findings
from pocovid.data.index import (
    FINDINGS,
    INDEX_COLUMNS,
    DatasetIndex,
    DatasetItem,
    combine,
    index_dataset,
    load_index,
    read_index,
    write_index,
)
from pocovid.data.labels import (
    CLASSES,
    PROBES,
    THREE_CLASSES,
    label_from_filename,
    normalize_label,
    parse_classes,
    parse_probes,
    patient_from_filename,
)
from pocovid.data.splits import MODES, SplitItem, Splits, check_split, load_splits, patient_folds

__all__ = [
    "CLASSES", "FINDINGS", "FINDING_NAMES", "INDEX_COLUMNS", "MODES", "PROBES", "TARGETS", "THREE_CLASSES",
    "DatasetIndex", "DatasetItem", "Findings", "SplitItem", "Splits", "check_split", "combine", "index_dataset",
    "label_from_filename", "load_index", "load_splits", "normalize_label", "parse_classes", "parse_probes",
    "patient_folds", "patient_from_filename", "read_index", "write_index",
]
