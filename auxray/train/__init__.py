"""Training: the single-process bi-level loop, checkpoints, and (in ray_*) the distributed layer."""
