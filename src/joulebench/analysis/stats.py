"""Pure statistical functions (no I/O, no plotting).

Confidence intervals of the mean use Student's t distribution
(e.g. Montgomery, *Design and Analysis of Experiments*, ch. 2).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as _st


def _clean(values: Sequence[float | None]) -> np.ndarray:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    return arr[np.isfinite(arr)]


def mean_ci_t(values: Sequence[float | None], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the mean by Student's t; nan bounds with fewer than 2 values."""
    x = _clean(values)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if x.size < 2:
        return (m, math.nan, math.nan)
    se = float(x.std(ddof=1)) / math.sqrt(x.size)
    h = float(_st.t.ppf(0.5 + confidence / 2, df=x.size - 1)) * se
    return (m, m - h, m + h)


def ci_halfwidth_rel(values: Sequence[float | None], confidence: float = 0.95) -> float:
    """Half-width of the t confidence interval of the mean, relative to the mean."""
    m, lo, hi = mean_ci_t(values, confidence)
    if not math.isfinite(lo) or m == 0:
        return math.inf
    return (hi - lo) / 2 / abs(m)


def cv(values: Sequence[float | None]) -> float:
    """Coefficient of variation (sample std / mean); nan with fewer than 2 values."""
    x = _clean(values)
    if x.size < 2 or x.mean() == 0:
        return math.nan
    return float(x.std(ddof=1) / abs(x.mean()))
