"""When to predict and when to stop: predictions spread evenly in the scorer's log-time.

The ALC weighs time by 1 / (t + t0): a prediction's x-position is log(1 + t/t0) / log(1 + T/t0).
Aiming every next prediction `step` further along that axis spreads them evenly where the
score is counted, so training slices grow geometrically.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

T0 = 60.0


@dataclass
class TimePolicy:
    """Tracks the budget of one run and sizes each training slice."""

    time_budget: float
    step: float = 0.07             # distance between predictions on the transformed axis
    safety_seconds: float = 5.0    # kept free at the end of the budget
    min_slice_seconds: float = 0.0  # 0: 2 % of the budget, at least 3 s
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        # Shorter slices spend more on validation and data reading than on training.
        if not self.min_slice_seconds:
            self.min_slice_seconds = max(3.0, 0.02 * self.time_budget)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.time_budget - self.elapsed()

    def transformed(self, t: float) -> float:
        return math.log1p(t / T0) / math.log1p(self.time_budget / T0)

    def time_at(self, x: float) -> float:
        return T0 * math.expm1(x * math.log1p(self.time_budget / T0))

    def next_slice(self, test_seconds: float) -> float:
        """Seconds to train before the next test, so that it lands `step` further along."""
        now = self.elapsed()
        target = self.time_at(min(1.0, self.transformed(now) + self.step))
        slice_seconds = max(self.min_slice_seconds, target - now - test_seconds)
        return min(slice_seconds, self.remaining() - test_seconds - self.safety_seconds)

    def can_afford(self, test_seconds: float) -> bool:
        """Whether one more slice and test fit in what is left."""
        return self.remaining() - test_seconds - self.safety_seconds >= self.min_slice_seconds
