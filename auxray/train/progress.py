"""Progress display for long loops: a tqdm bar on stderr, silent when disabled."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class Progress:
    """A step counter with a live loss readout; does nothing when `enabled` is False."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.bar = (
            tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=1.0)
            if enabled
            else None
        )

    def update(self, **postfix: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
