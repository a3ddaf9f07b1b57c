"""The one per-configuration summary (analysis/summary.py) that the CLI table, nightly, rounds and report read."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from joulebench.analysis.stats import mean_ci, mean_ci_t, primary_metric
from joulebench.analysis.summary import (ConfigRepeats, SummaryTargets, primary_metric_of, summarize_config,
                                         summarize_configs, summarize_configs_of, summarize_records,
                                         summarize_table, summary_frame)
from joulebench.results.table import load_records, load_results

sys.path.insert(0, str(Path(__file__).parent))
from test_table import make_study  # noqa: E402


def _rec(tid, cid, status="ok", e=None, tok=None, flags=(), **params):
    return {"trial_id": tid, "config_id": cid, "status": status, "params": params,
            "energy_per_output_token_j": e, "throughput_tok_s": tok, "ttft_s": {"median": 0.5},
            "flags": [{"code": f} for f in flags]}


def test_records_group_by_configuration_in_order_of_first_appearance():
    recs = [_rec("b0", "b", e=2.0, tok=10.0, batch_size=2), _rec("a0", "a", e=1.0, tok=20.0, flags=["x"], batch_size=1),
            _rec("a1", "a", status="failed", flags=["y"]), _rec("a2", "a", e=None, tok=22.0, flags=["z"]),
            _rec("b1", "b", e=4.0, tok=30.0)]
    b, a = summarize_records(recs)
    assert (a.config_id, a.n_trials, a.n_ok, a.n_failed) == ("a", 3, 2, 1)
    assert (b.config_id, b.n_trials, b.n_ok, b.n_failed) == ("b", 2, 2, 0)
    assert a.params == {"param.batch_size": 1}
    assert a.ok_values("energy_per_output_token_j") == (1.0, None)      # None kept: the rounds rule needs it
    assert a.ok_values("ttft_s_median") == (0.5, 0.5)
    assert a.flags == {"x", "z"}                                         # finished trials only
    assert a.mean("energy_per_output_token_j") == 1.0 and a.mean("throughput_tok_s") == 21.0
    assert b.mean("energy_per_output_token_j") == 3.0
    assert a.mean("no_such_metric") is None and math.isnan(a.mean_ci("no_such_metric")[0])
    # positive quantity, two repeats far apart: the t interval reaches below zero, the console's stays positive
    assert mean_ci_t([10.0, 30.0])[1] < 0
    assert b.mean_ci("throughput_tok_s") == mean_ci([10.0, 30.0])[:3] and b.mean_ci("throughput_tok_s")[1] > 0


def test_plain_mean_sums_in_trial_order():
    vals = [0.1 * (1 + k / 7) for k in range(9)]
    rep = summarize_records([_rec(f"t{k}", "c", e=v) for k, v in enumerate(vals)])[0]
    assert rep.mean("energy_per_output_token_j") == sum(vals) / len(vals)


def test_records_and_trial_table_give_the_same_repeats(tmp_path):
    study = make_study(tmp_path)
    trials = load_results(study)
    from_table = {c.config_id: c for c in summarize_table(trials)}
    from_records = {c.config_id: c for c in summarize_records(load_records(study))}
    assert from_table.keys() == from_records.keys() and len(from_table) == 6
    for cid, t in from_table.items():
        r = from_records[cid]
        assert (t.n_trials, t.n_ok, t.flags) == (r.n_trials, r.n_ok, r.flags)
        for m in ("energy_per_output_token_j", "throughput_tok_s", "ttft_s_median"):
            assert sorted(t.ok_values(m)) == pytest.approx(sorted(r.ok_values(m)))
    assert summarize_table(trials.iloc[0:0]) == []


@pytest.mark.parametrize("energy", [True, False])
def test_primary_metric_of_the_summary_follows_the_trial_table_rule(tmp_path, energy):
    trials = load_results(make_study(tmp_path, energy=energy, timeline=False))
    assert primary_metric_of(summarize_table(trials)) == primary_metric(trials)


def _config(values: dict[str, list]) -> ConfigRepeats:
    n = len(next(iter(values.values())))
    return ConfigRepeats("c", {"param.batch_size": 1}, n, n, {m: tuple(v) for m, v in values.items()})


def test_targets_cv_ci_and_throughput_dominated():
    noisy_tok = _config({"energy_per_output_token_j": [1.0, 1.2, 0.8], "throughput_tok_s": [100.0, 80.0, 125.0],
                         "mean_power_w": [100.0, 100.5, 99.5]})
    (s,) = summarize_configs_of([noisy_tok], SummaryTargets(cv_target=0.05, ci_target=0.02), n_resamples=99)
    assert s.primary_metric == s.ci_metric == "energy_per_output_token_j"
    assert s.cv_above_target and s.ci_above_target and s.throughput_dominated
    assert s.cv_share_throughput > 0.9
    (calm,) = summarize_configs_of([noisy_tok], SummaryTargets(cv_target=0.5, ci_target=None), n_resamples=99)
    assert not calm.cv_above_target and not calm.ci_above_target and not calm.throughput_dominated
    assert math.isnan(calm.row(["param.batch_size"])["ci_target"])


def test_ci_metric_falls_back_to_the_primary_where_the_table_lacks_it():
    rep = _config({"energy_per_output_token_j": [1.0, 1.001, 0.999], "throughput_tok_s": [10.0, 13.0, 7.0]})
    prim = primary_metric_of([rep])
    s = summarize_config(rep, prim, SummaryTargets(ci_target=0.02, ci_metric="throughput_tok_s"), n_resamples=99)
    assert s.ci_metric == "throughput_tok_s" and s.ci_above_target
    s = summarize_config(rep, prim, SummaryTargets(ci_target=0.02,
                                                   ci_metric="energy_above_loaded_idle_per_output_token_j"),
                         n_resamples=99)
    assert s.ci_metric == "energy_per_output_token_j" and not s.ci_above_target


def test_no_finished_repeat_raises_no_ci_flag():
    rep = ConfigRepeats("c", {}, 2, 0, {"energy_per_output_token_j": (), "throughput_tok_s": ()})
    (s,) = summarize_configs_of([rep], SummaryTargets(ci_target=0.02), n_resamples=99)
    assert not s.ci_above_target and s.metrics["throughput_tok_s"].n == 0


def test_summary_frame_columns_and_empty_table(tmp_path):
    trials = load_results(make_study(tmp_path, timeline=False))
    frame = summarize_configs(trials, axes=["batch_size", "dtype"], cv_target=0.05, ci_target=0.02, n_resamples=99)
    cols = list(frame.columns)
    assert cols[:6] == ["config_id", "param.batch_size", "param.dtype", "n_trials", "n_ok", "n_failed"]
    assert cols[-10:] == ["primary_metric", "ci_metric", "cv_target", "cv_above_target", "ci_target",
                          "ci_above_target", "too_few_repeats", "repeats_for_ci_target", "cv_share_throughput",
                          "throughput_dominated"]
    assert "ttft_s_median_ci95_boot_low" in cols and len(frame) == 6
    assert list(summary_frame([], [])) == ["config_id", "n_trials", "n_ok", "n_failed"]
    assert summarize_configs(trials.iloc[0:0]).empty
    assert isinstance(frame, pd.DataFrame)
