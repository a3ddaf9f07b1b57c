"""The adaptive-round decision (study/rounds.py): pure functions of the records and the repeats rule."""
from __future__ import annotations

from joulebench.config.study import RepeatsConfig
from joulebench.study.plan import trial_id_for
from joulebench.study.rounds import ci_values, config_repeats, configs_needing, needs_another_repeat

RULE = RepeatsConfig(min=3, max=6, ci_target=0.02)


def _records(values: dict[str, list], metric: str = "energy_per_output_token_j", tok: float = 10.0) -> dict:
    out = {}
    for cid, vals in values.items():
        for r, v in enumerate(vals):
            status = "failed" if v == "failed" else "ok"
            out[trial_id_for(cid, r)] = {"trial_id": trial_id_for(cid, r), "config_id": cid, "status": status,
                                         metric: None if status == "failed" else v, "throughput_tok_s": tok}
    return out


def test_below_min_every_configuration_runs_unless_done():
    recs = _records({"a": [1.0], "b": []})
    assert configs_needing(1, ["a", "b"], recs, set(), RULE) == ["a", "b"]
    assert configs_needing(1, ["a", "b"], recs, {trial_id_for("b", 1)}, RULE) == ["a"]
    assert configs_needing(0, ["b", "a"], {}, set(), RULE) == ["b", "a"]        # the order given


def test_above_min_only_a_wide_ci_continues_and_a_failed_or_missing_repeat_stops():
    recs = _records({"tight": [1.0, 1.001, 0.999], "wide": [1.0, 1.3, 0.7], "failed": [1.0, 1.0, "failed"],
                     "gap": [1.0, 1.3]})
    done = set(recs)
    assert configs_needing(3, ["tight", "wide", "failed", "gap"], recs, done, RULE) == ["wide"]
    assert not needs_another_repeat("gap", 3, recs, RULE)
    assert configs_needing(3, ["wide"], recs, done | {trial_id_for("wide", 3)}, RULE) == []


def test_a_fixed_repeat_count_never_adds_a_round():
    recs = _records({"wide": [1.0, 1.3, 0.7]})
    assert configs_needing(3, ["wide"], recs, set(recs), RepeatsConfig(min=3, max=6, ci_target=None)) == []


def test_tokens_per_second_decide_where_a_repeat_lacks_the_metric():
    recs = _records({"c": [1.0, 1.3, 0.7]})
    for r, tok in enumerate([10.0, 10.01, 9.99]):
        recs[trial_id_for("c", r)].update(energy_per_output_token_j=None if r == 1 else recs[trial_id_for("c", r)]
                                          ["energy_per_output_token_j"], throughput_tok_s=tok)
    rep = config_repeats("c", recs, RULE.max)
    assert ci_values(rep, "energy_per_output_token_j") == [10.0, 10.01, 9.99]
    assert configs_needing(3, ["c"], recs, set(recs), RULE) == []


def test_the_rule_bounds_the_metric_it_names():
    recs = _records({"c": [0.10, 0.17, 0.12]})
    for r, above in enumerate([0.0250, 0.0252, 0.0249]):
        recs[trial_id_for("c", r)]["energy_above_loaded_idle_per_output_token_j"] = above
    assert configs_needing(3, ["c"], recs, set(recs), RULE) == ["c"]
    marginal = RepeatsConfig(min=3, max=6, ci_target=0.02, metric="energy_above_loaded_idle_per_output_token_j")
    assert configs_needing(3, ["c"], recs, set(recs), marginal) == []


def test_only_repeats_below_max_count():
    recs = _records({"c": [1.0, 1.001, 0.999, 1.0, 1.0, 1.0, 5.0]})   # repeat 6 is beyond max = 6
    rep = config_repeats("c", recs, RULE.max)
    assert rep.n_trials == 6 and 5.0 not in rep.ok_values("energy_per_output_token_j")
    assert config_repeats("none", recs, RULE.max).n_trials == 0
