"""The per-trial detail sections of the report: quality flags, energy per device, environment, methodology.

Each returns HTML (``report/html.py``) from the stored trial records and the trial table.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import pandas as pd

from joulebench.analysis.summary import CONFIG_ADVICE, config_flags
from joulebench.meters.flags import Flag
from joulebench.report import plots
from joulebench.report.html import bullets, esc, fmt, pct, table

def _advice(code: str) -> str:
    try:  # the protocol's typed flags carry the canonical advice text
        return Flag(code).advice
    except (ValueError, KeyError):
        return CONFIG_ADVICE[code]


def config_flags_table(summary: pd.DataFrame, axes: Sequence[str]) -> str:
    rows = [[esc(plots.config_label(r, axes)), f"<code>{f.code}</code>", esc(_advice(f.code)), esc(f.detail)]
            for _, r in summary.iterrows() for f in config_flags(r)]
    if not rows:
        return "<p>None: every configuration is within its CV and CI targets.</p>"
    return table(["configuration", "flag", "advice", "detail"], rows)


def trial_flags(records: list[dict[str, Any]], trials: pd.DataFrame, axes: Sequence[str]) -> str:
    """One block per flag code: its advice once, how many trials raised it, then every trial with its
    detail (in a native <details> element, so long studies stay readable without a script)."""
    by_id = {r["trial_id"]: r for r in records}
    groups: dict[str, dict[str, Any]] = {}
    for _, t in trials.iterrows():
        rec = by_id.get(t["trial_id"], {})
        for f in rec.get("flags") or []:
            if not isinstance(f, dict):
                continue
            g = groups.setdefault(str(f.get("code")), {"advice": f.get("advice"), "rows": []})
            g.setdefault("trials", set()).add(t["trial_id"])
            g["rows"].append([esc(t["trial_id"]), esc(plots.config_label(t, axes)), fmt(t.get("repeat")),
                              esc(f.get("detail") or "")])
    if not groups:
        return "<p>No quality flags were raised.</p>"
    def count(g: dict[str, Any]) -> str:
        n, m = len(g["trials"]), len(g["rows"])
        return f"{n} trial(s)" + (f", raised {m} times" if m != n else "")

    out = [table(["flag", "trials", "advice"],
                  [[f"<code>{esc(code)}</code>", count(g), esc(g["advice"])]
                   for code, g in sorted(groups.items(), key=lambda kv: -len(kv[1]["rows"]))])]
    for code, g in sorted(groups.items()):
        out.append(f'<details class="flag" id="flag-{esc(code)}"><summary><code>{esc(code)}</code>: '
                   f'{count(g)}</summary>'
                   + table(["trial", "configuration", "repeat", "detail"], g["rows"]) + "</details>")
    return "\n".join(out)


def devices_table(records: list[dict[str, Any]], trials: pd.DataFrame, axes: Sequence[str]) -> str:
    """Mean energy of each measured device per configuration (over the whole window) and its share of the
    window's total; visible GPUs that the trials did not use are listed apart (never part of the total)."""
    by_id = {r["trial_id"]: r for r in records}
    per: dict[tuple[str, str], dict[str, Any]] = {}
    unused: dict[tuple[str, str], list[float]] = {}
    labels: dict[str, str] = {}
    for _, t in trials.iterrows():
        rec = by_id.get(t["trial_id"], {})
        if rec.get("status") != "ok":
            continue
        cid = str(rec.get("config_id"))
        labels[cid] = plots.config_label(t, axes)
        for d in rec.get("devices") or []:
            if isinstance(d, dict) and d.get("energy_j") is not None:
                key = (cid, f"{d.get('index')}: {d.get('name')} ({d.get('uuid')})")
                g = per.setdefault(key, {"energy": [], "total": []})
                g["energy"].append(float(d["energy_j"]))
                # the device rows are over the whole window; a served record's energy_j is its steady state
                g["total"].append(float((rec.get("whole_window") or {}).get("energy_j") or rec.get("energy_j") or 0.0))
        for u in rec.get("unused_devices") or []:
            if isinstance(u, dict) and u.get("mean_power_w") is not None:
                unused.setdefault((cid, f"{u.get('index')}: {u.get('name')} ({u.get('uuid')})"), []).append(
                    float(u["mean_power_w"]))
    if not per:
        return "<p>No per-device energy was measured (no energy counter on this machine).</p>"
    rows = []
    for (cid, dev), g in sorted(per.items(), key=lambda kv: (labels.get(kv[0][0], ""), kv[0][1])):
        mean_e = sum(g["energy"]) / len(g["energy"])
        share = sum(g["energy"]) / sum(g["total"]) if sum(g["total"]) else None
        rows.append([esc(labels.get(cid, cid)), esc(dev), str(len(g["energy"])), fmt(mean_e), pct(share)])
    out = [table(["configuration", "device", "trials", "mean energy J", "share of total"], rows)]
    if unused:
        out.append("<p>Visible GPUs that these trials did not use (metered apart, never summed into the totals):</p>")
        out.append(table(["configuration", "device", "trials", "mean power W"],
                          [[esc(labels.get(cid, cid)), esc(dev), str(len(v)), fmt(sum(v) / len(v))]
                           for (cid, dev), v in sorted(unused.items())]))
    return "\n".join(out)


def environment_table(recs: list[dict[str, Any]], manifest: dict[str, Any]) -> str:
    envs = [r.get("environment") or {} for r in recs]
    keys = sorted({k for e in envs for k in e})
    rows = []
    for k in keys:
        vals = {json.dumps(e.get(k), sort_keys=True, default=str) for e in envs if k in e}
        shown = [json.loads(v) for v in sorted(vals)]
        text = "; ".join(v if isinstance(v, str) else json.dumps(v, sort_keys=True) for v in shown)
        if len(text) > 400:
            text = text[:400] + " ..."
        rows.append([f"<code>{esc(k)}</code>", esc(text) + (" <span class='bad'>(differs between trials)</span>"
                                                         if len(vals) > 1 else "")])
    models = {json.dumps(r.get("model") or {}, sort_keys=True, default=str) for r in recs}
    for m in sorted(models):
        if m != "{}":
            rows.append(["<code>model</code>", esc(m)])
    devs = sorted({f"{d.get('name') or d.get('kind')} ({d.get('kind')}, energy source: {d.get('energy_source')})"
                   for r in recs for d in (r.get("devices") or []) if isinstance(d, dict)})
    if devs:
        rows.append(["<code>measured devices</code>", esc("; ".join(devs))])
    for k in ("study_hash", "created_at", "status", "tool_version"):
        if k in manifest:
            rows.append([f"<code>manifest.{esc(k)}</code>", esc(manifest[k])])
    if not rows:
        return "<p>No environment recorded.</p>"
    return table(["key", "value"], rows)


def inputs(plan: dict[str, Any], manifest: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The input-length policy in force (study/inputs.py) and the input tokens per request measured."""
    from pathlib import Path

    from joulebench.errors import JoulebenchError
    from joulebench.study.inputs import input_policy

    policies: list[str] = []
    base = Path(manifest["base_dir"]) if manifest.get("base_dir") else None
    for c in plan.get("configs") or []:
        try:
            text = input_policy(c["params"], base).describe()
        except (JoulebenchError, KeyError, OSError):
            text = f"inputs: {c.get('params', {}).get('dataset')} (the prompts file is not readable here)"
        if text not in policies:
            policies.append(text)
    per_request = [r["input_tokens"] / r["requests"] for r in records
                   if r.get("status") == "ok" and r.get("input_tokens") and r.get("requests")]
    measured = (f" Measured input tokens per request (mean per trial, as the engine tokenised them): "
                f"{fmt(min(per_request), 4)} to {fmt(max(per_request), 4)}." if per_request else "")
    return ("<p><b>Inputs</b>: " + "; ".join(esc(p.removeprefix("inputs: ")) for p in policies) + "." + measured
            + "</p>") if policies or measured else ""


def methodology(trials: pd.DataFrame, min_window_s: float, prim) -> str:
    sources = sorted({str(s) for s in trials.get("energy_source", pd.Series(dtype=object)).dropna()}) \
        if not trials.empty else []
    dur = pd.to_numeric(trials.get("duration_s"), errors="coerce").dropna() if "duration_s" in trials else pd.Series()
    items = [
        "<b>Energy</b> comes from the device's cumulative energy counter (NVML "
        "<code>nvmlDeviceGetTotalEnergyConsumption</code>), read at the start and end of each measured window, "
        "per device the trial uses; power samples only draw the timeline. "
        f"Counter sources seen in this study: {esc(', '.join(sources)) if sources else 'none (no meter: energy is null)'}.",
        "<b>Baselines</b>: <code>energy_above_device_idle_j</code> subtracts the device idle power (no context of "
        "ours, measured over &ge; 10 s) times the window; <code>energy_above_loaded_idle_j</code> subtracts the "
        "loaded-idle power (model in memory, no work, &ge; 5 s): the marginal cost of the work. "
        "<code>energy_j</code> is gross.",
        "<b>Per token</b>: output tokens are the tokens actually generated (no padding, nothing after EOS); "
        "J/output-token = window energy / output tokens; throughput = output tokens / window duration.",
        "<b>Latency</b> (vLLM's definitions): TTFT = request submit to first output token; ITL = gaps between "
        "consecutive output tokens; medians per trial, then means over repeats.",
        "<b>Windows</b>: warm-up passes until the throughput CV of the last passes is below its target; the workload "
        "is repeated inside the window until it lasts at least the minimum window "
        f"({esc(f'{min_window_s:g}')} s in this study; 100 counter periods = 10 s on H100 keeps "
        "quantisation under 1 %)."
        + (f" Measured windows here: {fmt(dur.min(), 3)} to {fmt(dur.max(), 3)} s." if len(dur) else ""),
        "<b>Order</b>: randomised blocks; each round runs every unfinished configuration once in a seeded shuffle, "
        "so drift spreads over all configurations.",
        "<b>Statistics</b>: per configuration, Student's t CI of the mean and a BCa bootstrap CI (Efron 1987; "
        "percentile when BCa degenerates); outliers by the MAD rule, flagged not dropped. Effects: OLS on the "
        "log response with every axis categorical, type II ANOVA, eta&sup2; shares; main effects are ratios of "
        "geometric means from the main-effects model with t CIs; interactions only where the design has the "
        "degrees of freedom. The t-based CIs assume similar spread on the log scale across configurations.",
    ]
    if prim is not None and not prim.energy_available:
        items.insert(0, "<b>No energy meter</b>: energy is null in every trial, so throughput and latency stand in.")
    return bullets(items)
