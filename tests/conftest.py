"""Shared fixtures. Tests use generated data; tests on the real data are marked `realdata`."""

import os
import tempfile
from pathlib import Path

import pytest

# `analyze` runs on the fastest runtime installed, measured once per machine and model and remembered
# in pocovid's cache (models/runtime.py): the tests remember it in a folder of their own, not the user's.
os.environ.setdefault("POCOVID_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"pocovid-tests-{os.getuid()}"))

# The real POCUS subset lives beside the checkout (never inside it): ../shared/data/pocus.
SHARED_POCUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pocus"


@pytest.fixture(scope="session")
def shared_pocus() -> Path:
    """The real dataset folder; skips the test with the reason when it is not there."""
    if not (SHARED_POCUS / "pocus_videos").is_dir():
        pytest.skip(f"real data not found at {SHARED_POCUS} (the public POCUS subset; see DEVELOPERS.md)")
    return SHARED_POCUS


# COVID-BLUES (33 of its patients) lives beside the checkout too: ../shared/data/covid-blues.
SHARED_BLUES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "covid-blues"


@pytest.fixture(scope="session")
def shared_blues() -> Path:
    """The real COVID-BLUES folder; skips the test with the reason when it is not there."""
    if not (SHARED_BLUES / "lus_videos").is_dir():
        pytest.skip(f"real data not found at {SHARED_BLUES} (COVID-BLUES subset, CC BY-NC-ND 4.0; see "
                    "docs/data.md)")
    return SHARED_BLUES


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small model trained in seconds on phantom clips (never clinical), saved as a model file."""
    pytest.importorskip("pocovid.analysis", reason="pocovid.analysis is not in this checkout")
    from pocovid.testing import quick_phantom_model, save_quick_model

    m = quick_phantom_model(size=96, n_heads=2, steps=40)
    return save_quick_model(m, tmp_path_factory.mktemp("model") / "phantom.pt",
                            metrics={"video": {"balanced_accuracy": 0.9, "n": 9}})


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    """The test module's own `model` fixture, saved as a model file (for the CLI and export)."""
    from pocovid.testing import save_quick_model

    return save_quick_model(model, tmp_path_factory.mktemp("model") / "quick.pt")
