"""Joining Ray: the one place that connects to a cluster (an address or RAY_ADDRESS) or starts a small local
instance sized for a laptop. Training runs and sweeps both come through here."""

from __future__ import annotations

import os

from auxray.errors import UserError

LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = True) -> bool:
    """Connect to the cluster named by `address` or RAY_ADDRESS, else start a local instance (dashboard on
    127.0.0.1: Ray Train's state API needs it). True when this call started or joined Ray."""
    import ray  # seconds to import: only runs that use Ray pay for it

    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS")
    try:
        if target:
            ray.init(address=target, log_to_driver=log_to_driver)
        else:
            ray.init(
                # "local": a new instance even when `ray start` left one on this machine, which Ray would join
                # otherwise (and refuse num_cpus for); joining a cluster is what an address is for.
                address="local",
                num_cpus=num_cpus or os.cpu_count() or 1,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                log_to_driver=log_to_driver,
            )
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(
            f"cannot reach the Ray cluster at {target or 'a new local instance'}: {str(err).splitlines()[0]}"
        ) from None
    return True
