"""Warm-up until throughput is stable (METHODOLOGY.md section 3, phase 5). Pure.

Ways to be stable, all over whole warm-up passes (tokens/s of each pass):

* ``cv``: the coefficient of variation of the last ``k`` passes is below ``cv_target``;
* ``plateau`` (optional): with at least ``2k`` passes, the mean of the last ``k`` differs from
  the mean of the ``k`` before by less than ``cv_target`` of the mean, or by less than one
  standard error of that difference. The level has stopped moving; what varies from pass to
  pass is noise (host-bound eager generation swings 6-19 % between identical passes), which
  more warm-up cannot remove and repeats average out. Without it, such configurations run to
  ``max_passes`` every trial and still end "not converged".
* ``noise-floor`` (in a worker that has already brought other configurations to a plateau):
  the CV of the last ``k`` passes is no larger than the pass-to-pass CV those configurations
  showed once stable (the median over them). Nothing is still warming beyond the host's own
  noise, which this worker has measured; it saves the ``2k`` passes a plateau needs.
* ``earlier`` (a repeat): the worker warmed this configuration to stability in an earlier
  round; the switch back to its shapes costs ``rewarm_passes`` passes, not a new warm-up,
  provided the latest pass agrees with the earlier ones (within ``cv_target``, or within two
  of their standard deviations); otherwise passes continue until one does, or until an
  ordinary rule (over the earlier and new passes together) says stable. With ``rewarm_passes: 0`` the
  switch back costs nothing: the window starts at once, and its first pass is held to the passes of the
  configuration's earlier windows (:func:`rewarm_check`; the trial is flagged ``rewarm_drift`` when it
  runs elsewhere). All the window's passes are kept either way: no pass is dropped for disagreeing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class WarmupState:
    converged: bool
    cv: float | None          # CV of the last k passes
    how: str | None = None    # "cv" | "plateau" | "noise-floor" | "earlier" | None (not stable)


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


def cv_of(xs: Sequence[float]) -> float | None:
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if len(xs) < 2:
        return None
    m, v = _mean_var(xs)
    return math.sqrt(v) / m if m > 0 else None


def warmup_step(new: Sequence[float], *, history: Sequence[float] = (), k: int = 3, cv_target: float = 0.02,
                plateau: bool = True, min_passes: int = 2, warmed_before: bool = False, rewarm_passes: int = 1,
                noise_floor_cv: float | None = None) -> WarmupState:
    """The decision after each warm-up pass of one trial (``new``: this trial's passes so far).

    ``history``: this worker's earlier passes of the same configuration; ``warmed_before``: they
    reached stability; ``noise_floor_cv``: the worker's steady-state pass-to-pass CV (see the module text).
    """
    if warmed_before and history:
        if len(new) < rewarm_passes:
            return WarmupState(False, None)
        ref = [float(x) for x in list(history)[-k:]]
        if _lands_near(float(new[-1]), ref, cv_target)[0]:
            return WarmupState(True, cv_of(ref + list(new)), "earlier")
        # the switch back did not land where this configuration was: warm up as usual, old passes included
    if len(new) < max(min_passes, k if not history else 1):
        return WarmupState(False, None)
    st = warmup_state(list(history) + list(new), k=k, cv_target=cv_target, plateau=plateau)
    if st.converged:
        return st
    if noise_floor_cv is not None and len(new) >= k:
        last = cv_of(list(new)[-k:])
        if last is not None and last <= max(cv_target, noise_floor_cv):
            return WarmupState(True, last, "noise-floor")
    return st


def rewarm_check(first_pass_tok_s: float, earlier_tok_s: Sequence[float], *,
                 cv_target: float = 0.02) -> tuple[bool, float | None]:
    """A repeat measured without a re-warm pass (``rewarm_passes: 0``): does the window's first pass run where
    this configuration's earlier windows ran? Within ``cv_target`` of their passes' mean, or within two of
    their standard deviations (the same tolerance as the ``earlier`` rule). Returns (agrees, relative
    difference to that mean); no earlier passes -> (True, None): nothing to hold it to."""
    ref = [float(x) for x in earlier_tok_s if x is not None and math.isfinite(float(x))]
    if not ref or not math.isfinite(float(first_pass_tok_s)) or sum(ref) <= 0:
        return True, None
    return _lands_near(float(first_pass_tok_s), ref, cv_target)


def _lands_near(x: float, ref: list[float], cv_target: float) -> tuple[bool, float | None]:
    """Whether ``x`` lies within ``cv_target`` of the mean of ``ref`` or within two of its standard deviations
    (the re-warm tolerance), and its relative difference to that mean (None for a mean <= 0: never near)."""
    m = sum(ref) / len(ref)
    if m <= 0:
        return False, None
    sd = math.sqrt(_mean_var(ref)[1]) if len(ref) > 1 else 0.0
    return abs(x - m) <= max(cv_target * m, 2.0 * sd), (x - m) / m
