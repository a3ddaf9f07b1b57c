"""Sweep expansion, stable ids, load groups and the randomised round order."""
from __future__ import annotations

import json

import pytest

from joulebench.config import load_study
from joulebench.errors import StudyError
from joulebench.study.plan import build_plan, trial_id_for

from .conftest import run_cli, tiny_study


def _plan(write_study, **kw):
    return build_plan(load_study(write_study(tiny_study(**kw))))


def test_cartesian_product_and_counts(write_study):
    p = _plan(write_study, sweep={"batch_size": [1, 2, 4], "max_output_tokens": [2, 4]},
              repeats={"min": 2, "max": 5, "ci_target": 0.05})
    assert len(p.configs) == 6
    combos = {(c.params["batch_size"], c.params["max_output_tokens"]) for c in p.configs}
    assert combos == {(b, o) for b in (1, 2, 4) for o in (2, 4)}
    doc = p.to_json()
    assert doc["counts"] == {"configs": 6, "load_groups": 1, "trials_min": 12, "trials_max": 30}
    assert len({t["trial_id"] for t in doc["trials"]}) == 30
    assert all(t["conditional"] == (t["repeat"] >= 2) for t in doc["trials"])


def test_params_are_fully_resolved_with_defaults(write_study):
    p = _plan(write_study)
    params = p.configs[0].params
    for key in ("model", "backend", "device", "dtype", "batch_size", "attn_implementation", "prompts",
                "max_output_tokens", "force_output_tokens", "temperature"):
        assert key in params


def test_ids_are_stable_and_order_independent(write_study, tmp_path):
    a = _plan(write_study, sweep={"batch_size": [1, 2], "dtype": ["float32", "bfloat16"]})
    b = _plan(write_study, sweep={"dtype": ["bfloat16", "float32"], "batch_size": [2, 1]})
    assert {c.config_id for c in a.configs} == {c.config_id for c in b.configs}
    assert trial_id_for(a.configs[0].config_id, 3).endswith("-r3")
    # and across processes (the CLI's plan --json)
    r = run_cli("plan", write_study(tiny_study(sweep={"batch_size": [1, 2], "dtype": ["float32", "bfloat16"]}),
                                    "x.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    assert {c["config_id"] for c in json.loads(r.stdout)["configs"]} == {c.config_id for c in a.configs}


def test_a_changed_parameter_changes_the_id(write_study):
    a = _plan(write_study)
    b = _plan(write_study, workload={"dataset": "synthetic", "prompts": 5, "input_tokens": 8,
                                     "max_output_tokens": 4})
    assert a.configs[0].config_id != b.configs[0].config_id


def test_load_groups_split_on_load_time_parameters_only(write_study):
    p = _plan(write_study, sweep={"batch_size": [1, 2], "dtype": ["float32", "bfloat16"]})
    groups = {}
    for c in p.configs:
        groups.setdefault(c.load_group, set()).add(c.params["dtype"])
    assert len(groups) == 2 and all(len(v) == 1 for v in groups.values())
    p1 = _plan(write_study, sweep={"batch_size": [1, 2]}, runner_options={"one_worker_per_trial": True})
    assert len({c.load_group for c in p1.configs}) == 2


def test_round_order_is_seeded_blocked_and_differs_between_rounds(write_study):
    p = _plan(write_study, sweep={"batch_size": [1, 2, 3, 4, 5, 6], "dtype": ["float32", "bfloat16"]})
    orders = [[c.config_id for c in p.round_order(r)] for r in range(4)]
    assert orders[0] == [c.config_id for c in p.round_order(0)]  # deterministic
    assert len({tuple(o) for o in orders}) > 1                    # reshuffled per round
    for r in range(4):                                            # load groups stay contiguous
        groups = [c.load_group for c in p.round_order(r)]
        changes = sum(1 for a, b in zip(groups, groups[1:]) if a != b)
        assert changes == 1
    q = _plan(write_study, sweep={"batch_size": [1, 2, 3, 4, 5, 6], "dtype": ["float32", "bfloat16"]}, seed=7)
    assert [c.config_id for c in q.round_order(0)] != orders[0] or \
           [c.config_id for c in q.round_order(1)] != orders[1]


def test_each_round_starts_with_the_group_that_ended_the_last(write_study):
    """Worker reuse across rounds: the round's shuffled cycle of load groups is rotated to start
    where the previous round ended, and every round still holds every group once."""
    p = _plan(write_study, sweep={"batch_size": [1, 2], "dtype": ["float32", "bfloat16"],
                                  "attn_implementation": ["sdpa", "eager"]},
              repeats=6, seed=3)
    firsts = []
    for r in range(1, 6):
        prev, cur = p.round_order(r - 1), p.round_order(r)
        assert cur[0].load_group == prev[-1].load_group
        assert sorted(c.config_id for c in cur) == sorted(c.config_id for c in p.configs)
        firsts.append([c.load_group for c in cur])
    assert len({tuple(dict.fromkeys(g)) for g in firsts}) > 1    # the group order still varies between rounds
    # 4 groups x 6 rounds: one worker start per group per round, less the 5 that carry on into the next round
    assert p.worker_starts(6) == 4 * 6 - 5
    one = _plan(write_study, sweep={"batch_size": [1, 2, 3]}, repeats=4)
    assert one.worker_starts(4) == 1                              # runtime parameters only: one load per study
    off = _plan(write_study, sweep={"batch_size": [1, 2, 3]}, repeats=4, runner_options={"reuse_workers": False})
    assert off.worker_starts(4) == 4
    solo = _plan(write_study, sweep={"batch_size": [1, 2, 3]}, repeats=4,
                 runner_options={"one_worker_per_trial": True})
    assert solo.worker_starts(4) == 12


def test_experiments_list_for_irregular_designs(write_study):
    p = _plan(write_study, experiments=[{"batch_size": 1}, {"batch_size": 4, "max_output_tokens": 8}],
              sweep={"dtype": ["float32", "bfloat16"]})
    assert len(p.configs) == 4
    assert {(c.params["batch_size"], c.params["max_output_tokens"]) for c in p.configs} == {(1, 4), (4, 8)}


def test_duplicate_experiment_is_an_error(write_study):
    with pytest.raises(StudyError) as ei:
        _plan(write_study, experiments=[{"batch_size": 2}, {"batch_size": 2}])
    assert "same as experiments[0]" in str(ei.value)
