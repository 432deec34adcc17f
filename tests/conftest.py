"""Settings for the package tests under tests/ (pytest applies a conftest only to the tests collected below it).

torch runs on one thread: the tests use tiny tensors, for which more threads only add overhead, and the suite
shares a small machine (two cores) with other jobs, so a thread pool per process would oversubscribe it.
``pytest --nbval`` on the notebooks does not collect this file, so the notebooks keep torch's default threads.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:  # refused once inter-op work has started (say, a plugin ran torch first); intra-op is set
    pass
