"""When to predict and when to stop: predictions spread evenly in the scorer's log-time, the
same way whatever the budget.

The ALC weighs time by 1 / (t + t0): a prediction's x-position is log(1 + t/t0) / log(1 + T/t0).
Each next prediction aims at GROWTH times the current 1 + t/t0, so the predictions are evenly
spaced on that axis for every budget T, and nothing before the end depends on T: up to time t a
run does the same whatever its budget, apart from stopping (an anytime run). The first t seconds
of a long run's learning curve are then the curve of a run with budget t, and one run at the
largest budget is scored at every shorter one (`scoring_local.metrics.alc` drops later points).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

T0 = 60.0
# 1 + t/T0 grows by this factor from one prediction to the next: the spacing a 180-s run had
# when slices were sized from the budget (0.07 of its log-time axis, (1 + 180/60) ** 0.07).
GROWTH = 4.0 ** 0.07


@dataclass
class TimePolicy:
    """Tracks the budget of one run and sizes each training slice."""

    time_budget: float
    growth: float = GROWTH
    safety_seconds: float = 5.0      # kept free at the end of the budget
    # Shorter slices spend more on validation and data reading than on training.
    min_slice_seconds: float = 3.0
    # Seconds on some monotonic clock: the wall clock on the platform; the offline harness
    # passes one that prices the network's work from a cost table, so that a run does the same
    # work whatever the machine's load (offline/evaluate.py).
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float:
        return self.time_budget - self.elapsed()

    def transformed(self, t: float) -> float:
        """The scorer's x-position of time `t` in this run's budget."""
        return math.log1p(t / T0) / math.log1p(self.time_budget / T0)

    def next_slice(self, test_seconds: float) -> float:
        """Seconds to train before the next test, so that it lands at GROWTH times the current
        1 + t/T0 (but not past the end of the budget)."""
        now = self.elapsed()
        target = T0 * ((1 + now / T0) * self.growth - 1)
        slice_seconds = max(self.min_slice_seconds, target - now - test_seconds)
        return min(slice_seconds, self.remaining() - test_seconds - self.safety_seconds)

    def can_afford(self, test_seconds: float) -> bool:
        """Whether one more slice and test fit in what is left."""
        return self.remaining() - test_seconds - self.safety_seconds >= self.min_slice_seconds
