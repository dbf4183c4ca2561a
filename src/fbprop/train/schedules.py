"""Learning-rate schedules: the factor that multiplies the initial rate in each epoch."""

from __future__ import annotations

import math
from collections.abc import Callable

# LeNet-5's schedule (LeCun et al. 1998, §V): 5e-4 for 2 passes, 2e-4 for 3, 1e-4 for 3,
# 5e-5 for 4, then 1e-5 — here as factors of the initial rate.
LENET_FACTORS = (1, 1, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1)

SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda epoch, epochs: 1.0,
    "lenet": lambda epoch, epochs: LENET_FACTORS[epoch] if epoch < len(LENET_FACTORS) else 0.02,
    "cosine": lambda epoch, epochs: 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1))),
}
"""name → factor(epoch, epochs), epoch 0-based; add a schedule by adding an entry."""


def schedule_factor(name: str, epoch: int, epochs: int) -> float:
    """The learning-rate multiplier of `epoch` (0-based) of `epochs` under a named schedule."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: expected one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](epoch, epochs)
