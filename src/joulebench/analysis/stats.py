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


def mean_ci_log(values: Sequence[float | None], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of a strictly positive sample on the log scale: the modified
    Cox interval for a log-normal mean (Olsson 2005, "Confidence intervals for the mean of a
    log-normal distribution", J. Stat. Educ. 13(1)): with y = log x,
    exp(ybar + s^2/2 -/+ t * sqrt(s^2/n + s^4 / (2 (n - 1)))). Both bounds are positive."""
    x = _clean(values)
    if x.size < 2 or (x <= 0).any():
        return mean_ci_t(x, confidence) if x.size else (math.nan, math.nan, math.nan)
    y = np.log(x)
    n, s2 = x.size, float(y.var(ddof=1))
    centre = float(y.mean()) + s2 / 2
    h = float(_st.t.ppf(0.5 + confidence / 2, df=n - 1)) * math.sqrt(s2 / n + s2 ** 2 / (2 * (n - 1)))
    return (float(x.mean()), math.exp(centre - h), math.exp(centre + h))


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> tuple[float, float, float, str]:
    """(mean, low, high, method): Student's t, except for a positive quantity (every value > 0) whose
    t interval reaches zero or below, where the log-scale interval (``mean_ci_log``) keeps it
    positive and honest. Method: "t", "log-t", or "none" (fewer than 2 values)."""
    x = _clean(values)
    m, lo, hi = mean_ci_t(x, confidence)
    if not math.isfinite(lo):
        return (m, lo, hi, "none")
    if lo <= 0 < x.min():
        return (*mean_ci_log(x, confidence), "log-t")
    return (m, lo, hi, "t")


def repeats_for_ci_target(cv_value: float, ci_target: float, confidence: float = 0.95,
                          max_n: int = 10_000) -> int | None:
    """Smallest number of repeats n whose t interval half-width, t(n-1) * cv / sqrt(n), is within
    ``ci_target`` of the mean, for a sample with coefficient of variation ``cv_value``
    (None when the CV is unknown or more than ``max_n`` repeats would be needed)."""
    if not (math.isfinite(cv_value) and ci_target > 0):
        return None
    if cv_value == 0:
        return 2
    q = 0.5 + confidence / 2
    # t(n-1) > z, so the normal-quantile answer is a lower bound: search upward from it
    start = max(2, math.ceil((float(_st.norm.ppf(q)) * cv_value / ci_target) ** 2))
    for n in range(start, max_n + 1):
        if float(_st.t.ppf(q, df=n - 1)) * cv_value / math.sqrt(n) <= ci_target:
            return n
    return None


def ci_halfwidth_rel(values: Sequence[float | None], confidence: float = 0.95) -> float:
    """Half-width of the t confidence interval of the mean, relative to the mean."""
    m, lo, hi, _ = mean_ci(values, confidence)
    if not math.isfinite(lo) or m == 0:
        return math.inf
    return (hi - lo) / 2 / abs(m)


def cv(values: Sequence[float | None]) -> float:
    """Coefficient of variation (sample std / mean); nan with fewer than 2 values."""
    x = _clean(values)
    if x.size < 2 or x.mean() == 0:
        return math.nan
    return float(x.std(ddof=1) / abs(x.mean()))


# ---------------------------------------------------------------------------
# Bootstrap, robust outliers, per-configuration summaries
# ---------------------------------------------------------------------------

from dataclasses import asdict, dataclass  # noqa: E402
import warnings  # noqa: E402

#: Default number of bootstrap resamples and seed: results are reproducible run to run.
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 20240601

#: Modified z-score threshold for outliers (Iglewicz & Hoaglin, 1993, recommend 3.5).
MAD_THRESHOLD = 3.5
_MAD_CONSISTENCY = 0.6745          # Phi^-1(0.75): makes MAD comparable to sigma for normal data
_MEANAD_CONSISTENCY = 1.253314     # sqrt(pi/2): same for the mean absolute deviation


def bootstrap_ci(values: Sequence[float | None], confidence: float = 0.95, *,
                 n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 method: str = "BCa") -> tuple[float, float, str]:
    """(low, high, method used) of a bootstrap CI of the mean.

    Method: bias-corrected and accelerated (BCa) bootstrap, Efron (1987),
    "Better bootstrap confidence intervals", JASA 82(397), as implemented by
    ``scipy.stats.bootstrap``; seeded, so the same data always gives the same
    interval. BCa needs the jackknife, which degenerates for tiny or constant
    samples: then the percentile interval is used and the returned method says so.
    Fewer than 3 values: (nan, nan, "none"), since two values have only three distinct
    resample means. All values equal: a zero-width interval.
    """
    x = _clean(values)
    if x.size < 3:
        return (math.nan, math.nan, "none")
    if float(np.ptp(x)) == 0.0:
        m = float(x[0])
        return (m, m, "constant")
    methods = [method] if method.lower() == "percentile" else [method, "percentile"]
    for meth in methods:
        rng = np.random.default_rng(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = _st.bootstrap((x,), np.mean, confidence_level=confidence,
                                    n_resamples=n_resamples, method=meth, random_state=rng,
                                    vectorized=True)
            except (ValueError, FloatingPointError):
                continue
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return (lo, hi, meth if meth != "percentile" or method.lower() == "percentile"
                    else "percentile (BCa degenerate)")
    return (math.nan, math.nan, "none")


#: Smallest scale the MAD rule uses, relative to the median (see ``mad_outliers``).
MAD_MIN_REL_SCALE = 0.02


def mad_outliers(values: Sequence[float | None], threshold: float = MAD_THRESHOLD, *,
                 min_rel_scale: float = MAD_MIN_REL_SCALE) -> np.ndarray:
    """Boolean mask (same length as ``values``; None/nan are never outliers).

    Modified z-score of Iglewicz & Hoaglin (1993), "How to Detect and Handle
    Outliers": M_i = 0.6745 (x_i - median) / MAD, outlier when |M_i| > 3.5.

    With the few repeats of a benchmark (3 to 10) the sample MAD is often tiny by
    chance, and the plain rule then calls ordinary noise an outlier in 12 to 30 %
    of normal samples (simulated: n = 3, 5, 10). The MAD is therefore floored at
    ``min_rel_scale`` x |median| (default 2 %, the protocol's CI target), so a value
    must lie more than 3.5 / 0.6745 x 2 % = 10.4 % from the median to be flagged
    when the repeats agree closely. When the MAD is 0 and the median too, the mean
    absolute deviation is used, M_i = (x_i - median) / (1.253314 * MeanAD).
    Needs at least 3 values. Outliers are for flagging: never drop them silently.
    """
    raw = np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)
    mask = np.zeros(raw.shape, dtype=bool)
    ok = np.isfinite(raw)
    x = raw[ok]
    if x.size < 3:
        return mask
    med = float(np.median(x))
    dev = np.abs(x - med)
    mad = max(float(np.median(dev)), min_rel_scale * abs(med))
    if mad > 0:
        z = _MAD_CONSISTENCY * dev / mad
    else:
        meanad = float(dev.mean())
        if meanad == 0:
            return mask
        z = dev / (_MEANAD_CONSISTENCY * meanad)
    mask[ok] = z > threshold
    return mask


@dataclass(frozen=True)
class MetricSummary:
    """Summary statistics of one metric over the repeats of one configuration."""

    n: int
    mean: float
    median: float
    std: float
    cv: float
    ci95_t_low: float
    ci95_t_high: float
    ci95_boot_low: float
    ci95_boot_high: float
    ci95_rel_halfwidth: float
    boot_method: str
    n_outliers: int
    ci95_method: str = "t"     # t | log-t (a positive quantity whose t interval reached zero) | none

    def as_dict(self, prefix: str = "") -> dict[str, float | int | str]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def summarize(values: Sequence[float | None], confidence: float = 0.95, *,
              seed: int = BOOTSTRAP_SEED, n_resamples: int = BOOTSTRAP_RESAMPLES) -> MetricSummary:
    """n, mean, median, std, CV, t and bootstrap CIs and MAD outlier count of one sample."""
    x = _clean(values)
    n = int(x.size)
    nan = math.nan
    if n == 0:
        return MetricSummary(0, nan, nan, nan, nan, nan, nan, nan, nan, math.inf, "none", 0, "none")
    m, lo, hi, ci_method = mean_ci(x, confidence)
    blo, bhi, meth = bootstrap_ci(x, confidence, seed=seed, n_resamples=n_resamples)
    return MetricSummary(
        n=n, mean=m, median=float(np.median(x)),
        std=float(x.std(ddof=1)) if n > 1 else nan,
        cv=cv(x), ci95_t_low=lo, ci95_t_high=hi, ci95_boot_low=blo, ci95_boot_high=bhi,
        ci95_rel_halfwidth=ci_halfwidth_rel(x, confidence), boot_method=meth,
        n_outliers=int(mad_outliers(x).sum()), ci95_method=ci_method,
    )


# ---------------------------------------------------------------------------
# Trial tables -> per-configuration summaries
# ---------------------------------------------------------------------------

#: (column of the trial table, label, unit, higher is better)
METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("energy_per_output_token_j", "energy per output token", "J/token", False),
    ("energy_above_loaded_idle_per_output_token_j", "energy above loaded idle per output token", "J/token", False),
    ("throughput_tok_s", "throughput", "tokens/s", True),
    ("ttft_s_median", "median TTFT", "s", False),
    ("itl_s_median", "median ITL", "s", False),
    ("mean_power_w", "mean power", "W", False),
    # served mode, where present: attributed energy per request and goodput per watt under the study's SLO
    ("request_energy_j_median", "energy per request, median (attributed)", "J", False),
    ("request_energy_j_p90", "energy per request, p90 (attributed)", "J", False),
    ("goodput_req_per_j", "goodput per watt (SLO-meeting requests/s per W)", "req/s/W", True),
)
METRIC_INFO = {m[0]: m for m in METRICS}

DEFAULT_CV_TARGET = 0.05


@dataclass(frozen=True)
class PrimaryMetric:
    column: str
    label: str
    unit: str
    higher_is_better: bool
    energy_available: bool


def primary_metric(trials) -> PrimaryMetric:
    """J/output-token when any finished trial has it, else throughput (no energy meter)."""
    ok = trials[trials["status"] == "ok"] if "status" in trials else trials
    col = "energy_per_output_token_j"
    return primary_of(bool(col in ok and ok[col].notna().any()))


def primary_of(energy_available: bool) -> PrimaryMetric:
    """The primary metric: J/output-token where energy was measured, else throughput."""
    if energy_available:
        return PrimaryMetric("energy_per_output_token_j", "energy per output token", "J/token", False, True)
    return PrimaryMetric("throughput_tok_s", "throughput", "tokens/s", True, False)


def mark_outliers(trials, metrics: Sequence[str] | None = None, threshold: float = MAD_THRESHOLD):
    """Copy of the trial table with ``outlier_<metric>`` columns and an ``outlier_metrics`` list.

    The MAD rule is applied within each configuration, over its finished trials.
    Rows are kept; nothing is dropped.
    """
    import pandas as pd

    df = trials.copy()
    metrics = [m for m in (metrics or [m[0] for m in METRICS]) if m in df.columns]
    names: list[list[str]] = [[] for _ in range(len(df))]
    ok = (df["status"] == "ok").to_numpy() if "status" in df else np.ones(len(df), bool)
    ok_pos = np.flatnonzero(ok)
    # positions (in df) of each configuration's finished trials, in table order: grouped once
    groups = list(pd.Series(ok_pos).groupby(df["config_id"].to_numpy()[ok_pos], sort=False)) if len(ok_pos) else []
    for m in metrics:
        values = pd.to_numeric(df[m], errors="coerce").to_numpy(float)
        flagged = np.zeros(len(df), bool)
        for _, idx in groups:
            rows = idx.to_numpy()
            flagged[rows[mad_outliers(values[rows].tolist(), threshold)]] = True
        for i in np.flatnonzero(flagged):
            names[i].append(m)
        df[f"outlier_{m}"] = flagged
    df["outlier_metrics"] = [";".join(n) for n in names]
    return df
