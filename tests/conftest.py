"""Shared fixtures. Tests use generated data; tests on the real data are marked `realdata`."""

from pathlib import Path

import pytest

# The real POCUS subset lives beside the checkout (never inside it): ../shared/data/pocus.
SHARED_POCUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pocus"


@pytest.fixture(scope="session")
def shared_pocus() -> Path:
    """The real dataset folder; skips the test with the reason when it is not there."""
    if not (SHARED_POCUS / "pocus_videos").is_dir():
        pytest.skip(f"real data not found at {SHARED_POCUS} (the public POCUS subset; see DEVELOPERS.md)")
    return SHARED_POCUS
