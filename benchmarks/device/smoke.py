"""One inner step of every configuration in the given folders on this machine's device, with CIFAR-10 decoded once
into the tensor cache: a device script runs it first, so a set-up error stops it in seconds instead of failing its
runs later. `python benchmarks/device/smoke.py "KEY=VALUE ..." DIR [DIR ...]`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from auxray.config import load_config  # noqa: E402  (needs the sys.path entry above)
from auxray.data import build_data  # noqa: E402
from auxray.train.loop import BilevelTrainer  # noqa: E402

SMOKE = [
    "trainer.epochs=1",
    "trainer.max_steps_per_epoch=2",
    "hypergrad.every=1",  # a learned method takes an outer step too
    "tracking.enabled=false",
    "trainer.checkpoint_dir=/tmp/smoke",
]


def main(extra: str, folders: list[str]) -> None:
    t0 = time.perf_counter()
    for folder in folders:
        data = None  # the configs of one folder share their data
        for path in sorted(Path(folder).glob("*.yaml"), key=lambda p: p.stem == "stl"):
            cfg = load_config(path, [*SMOKE, *extra.split()])
            data = data or build_data(cfg.data, cfg.method.aux_tasks)
            trainer = BilevelTrainer(cfg, data, progress=False)
            trainer.train_epoch()
            print(f"smoke {path}: ok on {trainer.device} at {time.perf_counter() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
