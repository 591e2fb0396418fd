"""`ray job submit --working-dir . -- python jobs/train.py CONFIG [args]`: the cluster entry point for training.

It only forwards to the package CLI, exactly as `auxray train CONFIG [args]` would:

    python jobs/train.py configs/cifar10_5pct/auxilearn_labels.yaml --workers 2 --gpus-per-worker 1

The repository root is put first on sys.path, so the `auxray` package comes from the uploaded
working dir (the code you submitted), even where it is not installed. Its *dependencies* (torch,
ray, mlflow, ...) are not uploaded: they come from the cluster's image (deploy/Dockerfile, the
locked venv on PATH) or, on deploy/local_cluster.sh, from the repository's .venv that started Ray.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from auxray.cli import main  # noqa: E402  (needs the sys.path entry above)

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
