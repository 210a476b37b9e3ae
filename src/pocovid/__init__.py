"""pocovid: decision support for lung point-of-care ultrasound (COVID-19 / pneumonia / healthy)."""

import os as _os

# Idle OpenMP threads spin by default; on a 2-core machine shared with anything else that makes
# torch several times slower. Must be set before torch is first imported; users can override it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
