"""auxray: auxiliary learning by implicit differentiation, at cluster scale."""

import os

# Ray reads this once, when it is first imported: Ray workers then run this interpreter directly instead of Ray's
# `uv run` hook re-creating the virtual environment in a copy of the working directory for every job (cluster
# images already hold the locked environment, see deploy/Dockerfile). Set here, in the package's root, because
# every entry point imports it before anything imports Ray (a module-level `import ray` sorts before the
# module's own imports, so a later module could not set it in time).
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
