"""Warm-up until throughput is stable (METHODOLOGY.md section 3, phase 5). Pure."""
from __future__ import annotations

import math
from typing import Sequence


def warmup_converged(throughputs: Sequence[float], *, k: int = 3, cv_target: float = 0.02) -> tuple[bool, float | None]:
    """(converged, cv): the coefficient of variation (sample std / mean) of the last ``k``
    passes is below ``cv_target``. Fewer than ``k`` passes (or k < 2) -> (False, None)."""
    if k < 2:
        raise ValueError("k must be at least 2 (a CV needs two passes)")
    last = [float(x) for x in list(throughputs)[-k:]]
    if len(last) < k or any(not math.isfinite(x) for x in last):
        return False, None
    mean = sum(last) / k
    if mean <= 0:
        return False, None
    var = sum((x - mean) ** 2 for x in last) / (k - 1)
    cv = math.sqrt(var) / mean
    return cv < cv_target, cv
