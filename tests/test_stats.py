"""Statistics against reference values (scipy, hand computation) on fixed data."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from joulebench.analysis.stats import (bootstrap_ci, ci_halfwidth_rel, cv, mad_outliers, mark_outliers, mean_ci_t,
                                       primary_metric, summarize)
from joulebench.analysis.summary import summarize_configs

sys.path.insert(0, str(Path(__file__).parent))
from test_table import make_study  # noqa: E402

from joulebench.results.table import load_results  # noqa: E402

FIXED = [2.31, 2.45, 2.28, 2.52, 2.39, 2.41]


def test_mean_ci_t_matches_scipy_and_hand_computation():
    m, lo, hi = mean_ci_t(FIXED)
    ref = st.t.interval(0.95, df=len(FIXED) - 1, loc=np.mean(FIXED), scale=st.sem(FIXED))
    assert (lo, hi) == pytest.approx(ref, rel=1e-12)
    # by hand: t_{0.975, 5} = 2.5706; s = 0.08935; se = s / sqrt(6)
    s = math.sqrt(sum((x - m) ** 2 for x in FIXED) / 5)
    assert hi - m == pytest.approx(2.570582 * s / math.sqrt(6), rel=1e-5)
    assert m == pytest.approx(2.39333333, rel=1e-8)


def test_ci_halfwidth_rel_and_cv():
    m, lo, hi = mean_ci_t(FIXED)
    assert ci_halfwidth_rel(FIXED) == pytest.approx((hi - lo) / 2 / m)
    assert cv(FIXED) == pytest.approx(np.std(FIXED, ddof=1) / np.mean(FIXED))
    assert math.isnan(cv([1.0])) and math.isinf(ci_halfwidth_rel([1.0]))


def test_bootstrap_bca_equals_scipy_on_same_seed():
    lo, hi, method = bootstrap_ci(FIXED, n_resamples=2000, seed=7)
    ref = st.bootstrap((np.asarray(FIXED),), np.mean, confidence_level=0.95, n_resamples=2000, method="BCa",
                       random_state=np.random.default_rng(7))
    assert method == "BCa"
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12)
    # seeded: the same call gives the same interval
    assert bootstrap_ci(FIXED, n_resamples=2000, seed=7)[:2] == (lo, hi)


def test_bootstrap_ci_covers_true_mean_on_seeded_samples():
    # lognormal(0, 0.5): mean exp(0.125). 200 seeded samples of 20: coverage near 95 %.
    true_mean = math.exp(0.125)
    rng = np.random.default_rng(42)
    hits = 0
    for i in range(200):
        x = rng.lognormal(0.0, 0.5, 20)
        lo, hi, _ = bootstrap_ci(x, n_resamples=999, seed=i)
        hits += lo <= true_mean <= hi
    assert 0.88 <= hits / 200 <= 0.99
    x = np.random.default_rng(1).lognormal(0.0, 0.5, 30)
    lo, hi, _ = bootstrap_ci(x)
    assert lo < true_mean < hi


def test_bootstrap_degenerate_cases():
    assert bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0, "constant")
    for few in ([1.0], [1.0, 2.0]):       # < 3 values: no bootstrap interval
        lo, hi, method = bootstrap_ci(few)
        assert math.isnan(lo) and math.isnan(hi) and method == "none"
    lo, hi, _ = bootstrap_ci([1.0, 2.0, 4.0])
    assert 1.0 <= lo <= hi <= 4.0


def test_mad_outliers_known_values():
    # median 10, |dev| = [0.1, 0.1, 0, 0.2, 0.1, 5.0] -> MAD 0.1; 0.6745 * 5 / 0.1 = 33.7 > 3.5
    x = [10.1, 9.9, 10.0, 10.2, 9.9, 15.0]
    assert mad_outliers(x).tolist() == [False] * 5 + [True]
    # median 10, MAD 0.1: 10.45 -> 0.6745 * 0.45 / 0.1 = 3.04 < 3.5 kept; 10.6 -> 4.05 > 3.5 outlier
    base = [9.9, 10.0, 10.1, 10.0, 9.9, 10.1]
    assert not mad_outliers(base + [10.45], min_rel_scale=0).any()
    assert mad_outliers(base + [10.6], min_rel_scale=0).tolist() == [False] * 6 + [True]
    # the same 10.6 with the default 2 % floor (scale 0.2): 0.6745 * 0.6 / 0.2 = 2.02 -> kept
    assert not mad_outliers(base + [10.6]).any()
    # the 2 % floor: identical repeats and a 5 % deviation are not an outlier, a 3x one is
    assert not mad_outliers([1.0, 1.0, 1.05]).any()
    assert mad_outliers([1.0, 1.0, 3.0]).tolist() == [False, False, True]
    # None/nan never flagged, never counted; < 3 values: nothing flagged
    assert mad_outliers([1.0, None, 1.01, float("nan"), 9.0]).tolist() == [False, False, False, False, True]
    assert not mad_outliers([1.0, 100.0]).any()


def test_summarize_fields():
    s = summarize(FIXED + [4.0])
    x = np.asarray(FIXED + [4.0])
    assert s.n == 7 and s.mean == pytest.approx(x.mean()) and s.median == pytest.approx(np.median(x))
    assert s.std == pytest.approx(x.std(ddof=1)) and s.cv == pytest.approx(x.std(ddof=1) / x.mean())
    assert s.n_outliers == 1
    assert s.ci95_t_low < s.mean < s.ci95_t_high
    assert s.ci95_boot_low < s.mean < s.ci95_boot_high
    empty = summarize([None, None])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_summarize_configs_on_study(tmp_path):
    trials = load_results(make_study(tmp_path))
    s = summarize_configs(trials, axes=["batch_size", "dtype"], cv_target=0.05, ci_target=0.02, n_resamples=999)
    assert len(s) == 6
    assert {"param.batch_size", "param.dtype", "energy_per_output_token_j_mean",
            "energy_per_output_token_j_ci95_boot_low", "throughput_tok_s_ci95_t_high", "ttft_s_median_mean",
            "itl_s_median_cv", "mean_power_w_median", "cv_above_target"} <= set(s.columns)
    one = s[(s["param.batch_size"] == 16) & (s["param.dtype"] == "float32")].iloc[0]
    assert one["n_trials"] == 3 and one["n_ok"] == 2 and one["n_failed"] == 1
    ok = trials[(trials["config_id"] == one["config_id"]) & (trials["status"] == "ok")]
    assert one["energy_per_output_token_j_mean"] == pytest.approx(ok["energy_per_output_token_j"].mean())
    # the fixture's 3x outlier (batch 1, bf16, repeat 0) makes that configuration's CV exceed the target
    bad = s[(s["param.batch_size"] == 1) & (s["param.dtype"] == "bfloat16")].iloc[0]
    assert bad["cv_above_target"] and bad["energy_per_output_token_j_n_outliers"] == 1
    assert bad["throughput_dominated"]       # its power is steady: the spread is tokens/s
    assert s["ci_above_target"].any()
    assert primary_metric(trials).column == "energy_per_output_token_j"


def test_ci_target_bounds_the_named_metric():
    """summarize_configs(ci_metric=...): the CI target checks the study's repeats.metric where present."""
    import pandas as pd

    gross, above = [0.10, 0.17, 0.12, 0.14], [0.0250, 0.0252, 0.0249, 0.0251]
    trials = pd.DataFrame({"config_id": ["c"] * 4, "status": ["ok"] * 4, "param.batch_size": [16] * 4,
                           "energy_per_output_token_j": gross,
                           "energy_above_loaded_idle_per_output_token_j": above,
                           "throughput_tok_s": [1000 / g for g in gross], "mean_power_w": [150.0] * 4})
    default = summarize_configs(trials, ci_target=0.02, n_resamples=199).iloc[0]
    assert default["ci_metric"] == "energy_per_output_token_j" and default["ci_above_target"]
    marginal = summarize_configs(trials, ci_target=0.02, ci_metric="energy_above_loaded_idle_per_output_token_j",
                                 n_resamples=199).iloc[0]
    assert marginal["ci_metric"] == "energy_above_loaded_idle_per_output_token_j"
    assert not marginal["ci_above_target"]
    assert marginal["primary_metric"] == "energy_per_output_token_j"   # the headline figure stays gross
    # a metric the table lacks falls back to the primary one
    lacking = summarize_configs(trials.drop(columns=["energy_above_loaded_idle_per_output_token_j"]),
                                ci_target=0.02, ci_metric="energy_above_loaded_idle_per_output_token_j",
                                n_resamples=199).iloc[0]
    assert lacking["ci_metric"] == "energy_per_output_token_j" and lacking["ci_above_target"]


def test_mark_outliers_keeps_rows(tmp_path):
    trials = load_results(make_study(tmp_path))
    marked = mark_outliers(trials)
    assert len(marked) == len(trials)
    hit = marked[marked["outlier_energy_per_output_token_j"]]
    assert len(hit) == 1 and hit.iloc[0]["repeat"] == 0 and hit.iloc[0]["param.batch_size"] == 1
    assert "energy_per_output_token_j" in hit.iloc[0]["outlier_metrics"].split(";")


def test_primary_metric_falls_back_to_throughput(tmp_path):
    trials = load_results(make_study(tmp_path, energy=False))
    p = primary_metric(trials)
    assert p.column == "throughput_tok_s" and not p.energy_available and p.higher_is_better
    s = summarize_configs(trials, axes=["batch_size", "dtype"], n_resamples=999)
    assert s["energy_per_output_token_j_mean"].isna().all()
    assert (s["primary_metric"] == "throughput_tok_s").all()
    assert not s["throughput_dominated"].any()   # undefined without power
    assert isinstance(pd.DataFrame(s).iloc[0]["throughput_tok_s_mean"], float)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402

_samples = hs.lists(hs.floats(0.1, 100.0, allow_nan=False), min_size=3, max_size=12)


@settings(max_examples=60, deadline=None)
@given(_samples, hs.floats(0.01, 1000.0))
def test_outliers_and_cv_are_scale_invariant(x, k):
    """J/token in J or in mJ must flag the same trials and give the same CV."""
    scaled = [v * k for v in x]
    assert mad_outliers(scaled).tolist() == mad_outliers(x).tolist()
    assert cv(scaled) == pytest.approx(cv(x), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(_samples)
def test_t_ci_brackets_mean_and_matches_scipy(x):
    m, lo, hi = mean_ci_t(x)
    if np.ptp(x) == 0:
        assert lo == pytest.approx(m) and hi == pytest.approx(m)
        return
    assert lo <= m <= hi
    ref = st.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=st.sem(x))
    assert (lo, hi) == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_intervals_of_positive_quantities_stay_positive():
    from joulebench.analysis.stats import mean_ci, mean_ci_log

    # two repeats that disagree (the tokens/s of a newcomer's 2-repeat study): t goes negative
    m, lo, hi = mean_ci_t([4.9, 12.9])
    assert lo < 0
    m2, lo2, hi2, method = mean_ci([4.9, 12.9])
    assert method == "log-t" and m2 == m and 0 < lo2 < m2 < hi2
    # the log-scale interval by hand (modified Cox): y = log x, s^2, t(1) = 12.706
    import math
    y = [math.log(4.9), math.log(12.9)]
    s2 = (y[0] - y[1]) ** 2 / 2
    h = 12.706204736 * math.sqrt(s2 / 2 + s2 ** 2 / 2)
    centre = sum(y) / 2 + s2 / 2
    assert lo2 == pytest.approx(math.exp(centre - h), rel=1e-6) and hi2 == pytest.approx(math.exp(centre + h), rel=1e-6)
    assert mean_ci_log([1.0, 2.0, 3.0])[1] > 0
    # repeats that agree keep their t interval; a quantity that can be negative keeps t too
    assert mean_ci([10.0, 10.1, 9.9])[3] == "t"
    assert mean_ci([-1.0, 2.0])[3] == "t"
    assert mean_ci([1.0])[3] == "none"


def test_repeats_for_ci_target():
    from joulebench.analysis.stats import repeats_for_ci_target

    # CV 5 %, target 2 %: t(n-1) * 0.05 / sqrt(n) <= 0.02 first at n = 27 (t(26) = 2.056, 2.056*0.05/5.196 = 0.0198)
    assert repeats_for_ci_target(0.05, 0.02) == 27
    assert repeats_for_ci_target(0.01, 0.02) == 4       # t(3) = 3.182: 3.182*0.01/2 = 0.0159; n=3: 4.303*0.01/1.732 = 0.0248
    assert repeats_for_ci_target(0.0, 0.02) == 2
    assert repeats_for_ci_target(float("nan"), 0.02) is None
    assert repeats_for_ci_target(5.0, 0.0001) is None


def test_summary_says_when_there_are_too_few_repeats():
    import pandas as pd

    rows = [{"config_id": "a", "status": "ok", "energy_per_output_token_j": e, "throughput_tok_s": t}
            for e, t in ((1.0, 4.9), (1.3, 12.9))]
    rows += [{"config_id": "b", "status": "ok", "energy_per_output_token_j": e, "throughput_tok_s": 10.0}
             for e in (1.0, 1.001, 0.999, 1.0)]
    s = summarize_configs(pd.DataFrame(rows), ci_target=0.02).set_index("config_id")
    assert bool(s.loc["a", "too_few_repeats"]) and not bool(s.loc["b", "too_few_repeats"])
    assert s.loc["a", "throughput_tok_s_ci95_t_low"] > 0
    assert s.loc["a", "repeats_for_ci_target"] > 2 and s.loc["b", "repeats_for_ci_target"] == 2
