"""Markdown tables and the spread over seeds, built one way for every command's report."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def markdown_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    return "\n".join([markdown_row(header), "|---" * len(header) + "|",
                      *(markdown_row(row) for row in rows)])


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """`mean ± std` over seeds, the std the sample one (ddof 1); the mean alone from one seed,
    which has no spread to show. `scale` multiplies both (100 for percentages)."""
    values = scale * np.asarray(values, dtype=float)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"
