"""Suite-wide settings.

One torch thread: the suite's tensors are small, and on a 2-core machine shared
with other work, torch's default thread count oversubscribes the cores and makes
small ops many times slower (measured 7x-20x here). Tests that need more set it.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
