"""`ray job submit --working-dir . -- python jobs/sweep.py SWEEP_CONFIG [args]`: the cluster entry point for a
Ray Tune + Optuna sweep; forwards to `auxray sweep SWEEP_CONFIG [args]`.

Same rules as jobs/train.py: the repository root goes first on sys.path so the submitted `auxray`
source is used; its dependencies come from the cluster's image / venv.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from auxray.cli import main  # noqa: E402  (needs the sys.path entry above)

if __name__ == "__main__":
    main(["sweep", *sys.argv[1:]])
