"""Datasets: index a folder of recordings, split it into patient-grouped folds, check a split."""

from pocovid.data.index import (
    FINDINGS,
    INDEX_COLUMNS,
    DatasetIndex,
    DatasetItem,
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
from pocovid.data.splits import SplitItem, Splits, check_split, load_splits, patient_folds

__all__ = [
    "CLASSES", "FINDINGS", "INDEX_COLUMNS", "PROBES", "THREE_CLASSES", "DatasetIndex", "DatasetItem",
    "SplitItem", "Splits", "check_split", "index_dataset", "label_from_filename", "load_index", "load_splits",
    "normalize_label", "parse_classes", "parse_probes", "patient_folds", "patient_from_filename", "read_index",
    "write_index",
]
