"""Re-pin the bundled model's reference outputs after re-bundling it.

    python scripts/pin_bundled_reference.py [--out tests/data/bundled_model_reference.npz]

tests/test_analysis.py::test_bundled_model_outputs_are_unchanged compares every member's frame
probabilities on two fixed phantom DICOM clips (lossless, seed 3, 12 frames) with this file (1e-5):
a refactor must not move them; a new bundled model must be pinned again, on purpose, with this script.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tests/data/bundled_model_reference.npz"))
    args = ap.parse_args(argv)

    from pocovid.inference import load, stream_predict
    from pocovid.phantom import write_phantom

    model = load("default")
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for label in ("covid", "regular"):
            p = Path(d) / f"{label}.dcm"
            write_phantom(p, label=label, n_frames=12, seed=3)
            out[label] = stream_predict(p, model, runtime="torch").member_probs
    np.savez_compressed(args.out, **out)
    print(f"written: {args.out} ({', '.join(f'{k} {v.shape}' for k, v in out.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
