"""Progress lines and the machine a benchmark ran on (its record).

torch is imported inside machine_info: the ``auxray`` CLI imports the bench modules when it builds its parser,
and stays quick to start.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the JSON result)."""
    print(message, file=sys.stderr, flush=True)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info(device: str | None) -> dict[str, Any]:
    """Platform, Python, CPUs, torch and device, for the record of a benchmark."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
