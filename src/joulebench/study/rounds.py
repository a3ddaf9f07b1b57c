"""Adaptive repeats: which configurations run in a round. Pure functions of the records and the rule.

Round ``r`` runs repeat ``r`` of each configuration. Repeats below ``repeats.min`` always run; a later
repeat runs only while every earlier repeat of the configuration finished and the 95 % CI of its
``repeats.metric`` (tokens/s where a repeat lacks it: no energy meter) is wider than ``repeats.ci_target``.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from joulebench.analysis.stats import ci_halfwidth_rel
from joulebench.analysis.summary import THROUGHPUT, ConfigRepeats, group_rows
from joulebench.config.study import RepeatsConfig
from joulebench.results.table import flatten_record
from joulebench.study.plan import trial_id_for

Records = Mapping[str, Mapping[str, Any]]          # trial id -> trial record


def config_repeats(config_id: str, records: Records, max_repeats: int) -> ConfigRepeats:
    """The configuration's repeats 0 .. max_repeats - 1 that have a record, in repeat order."""
    recs = [records.get(trial_id_for(config_id, k)) for k in range(max_repeats)]
    rows = [{**flatten_record(dict(r)), "config_id": config_id} for r in recs if r is not None]
    return group_rows(rows)[0] if rows else ConfigRepeats(config_id, {}, 0, 0, {})


def ci_values(rep: ConfigRepeats, metric: str) -> list[Any]:
    """The values whose CI the rule bounds: ``metric`` over the finished repeats where every one has it,
    else their tokens/s."""
    vals = rep.ok_values(metric)
    if vals and all(v is not None for v in vals):
        return list(vals)
    return [v for v in rep.ok_values(THROUGHPUT) if v is not None]


def needs_another_repeat(config_id: str, r: int, records: Records, rule: RepeatsConfig) -> bool:
    """Repeat ``r`` (>= ``rule.min``) is wanted: the earlier ones all finished and the CI is still too wide."""
    earlier = [records.get(trial_id_for(config_id, k)) for k in range(r)]
    if any(e is None or e.get("status") != "ok" for e in earlier):
        return False
    if rule.ci_target is None:
        return False
    rep = config_repeats(config_id, records, rule.max)
    return ci_halfwidth_rel(ci_values(rep, rule.metric)) > rule.ci_target


def configs_needing(r: int, config_ids: Iterable[str], records: Records, done: set[str],
                    rule: RepeatsConfig) -> list[str]:
    """The configurations (in the order given) whose repeat ``r`` runs in round ``r``; ``done``: trial ids
    not to run (again)."""
    out = []
    for cid in config_ids:
        if trial_id_for(cid, r) in done:
            continue
        if r < rule.min or needs_another_repeat(cid, r, records, rule):
            out.append(cid)
    return out
