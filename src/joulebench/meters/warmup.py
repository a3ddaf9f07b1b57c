"""Warm-up until throughput is stable (METHODOLOGY.md section 3, phase 5). Pure.

Two ways to be stable, both over whole warm-up passes (tokens/s of each pass):

* ``cv``: the coefficient of variation of the last ``k`` passes is below ``cv_target``;
* ``plateau`` (optional): with at least ``2k`` passes, the mean of the last ``k`` differs from
  the mean of the ``k`` before by less than ``cv_target`` of the mean, or by less than one
  standard error of that difference. The level has stopped moving; what varies from pass to
  pass is noise (host-bound eager generation swings 6-19 % between identical passes), which
  more warm-up cannot remove and repeats average out. Without it, such configurations run to
  ``max_passes`` every trial and still end "not converged".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class WarmupState:
    converged: bool
    cv: float | None          # CV of the last k passes
    how: str | None = None    # "cv" | "plateau" | None


def _mean_var(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def warmup_converged(throughputs: Sequence[float], *, k: int = 3, cv_target: float = 0.02) -> tuple[bool, float | None]:
    """(converged, cv): the coefficient of variation (sample std / mean) of the last ``k``
    passes is below ``cv_target``. Fewer than ``k`` passes (or k < 2) -> (False, None)."""
    if k < 2:
        raise ValueError("k must be at least 2 (a CV needs two passes)")
    last = [float(x) for x in list(throughputs)[-k:]]
    if len(last) < k or any(not math.isfinite(x) for x in last):
        return False, None
    mean, var = _mean_var(last)
    if mean <= 0:
        return False, None
    cv = math.sqrt(var) / mean
    return cv < cv_target, cv


def warmup_state(throughputs: Sequence[float], *, k: int = 3, cv_target: float = 0.02,
                 plateau: bool = True) -> WarmupState:
    """Stable by CV, else (``plateau``) by a level that stopped moving; see the module text."""
    ok, cv = warmup_converged(throughputs, k=k, cv_target=cv_target)
    if ok:
        return WarmupState(True, cv, "cv")
    xs = [float(x) for x in list(throughputs)[-2 * k:]]
    if not plateau or cv is None or len(xs) < 2 * k or any(not math.isfinite(x) for x in xs):
        return WarmupState(False, cv)
    m_prev, v_prev = _mean_var(xs[:k])
    m_last, v_last = _mean_var(xs[k:])
    if m_last <= 0:
        return WarmupState(False, cv)
    diff = abs(m_last - m_prev)
    se = math.sqrt(v_prev / k + v_last / k)
    if diff < cv_target * m_last or diff < se:
        return WarmupState(True, cv, "plateau")
    return WarmupState(False, cv)
