"""The report of a study directory: tables, plots and one self-contained ``report.html``.

``build_report(study_dir)`` writes, inside the study directory:

* ``results.parquet``, ``results.csv``: one row per trial (``joulebench.results.table``), with MAD outlier columns
* ``summary.csv``: one row per configuration (``joulebench.analysis.summary``)
* ``effects.csv``, ``main_effects.csv``: the variance decomposition and the main-effect ratios
* ``plots/*.png`` and ``plots/*.pdf``
* ``report.html``: everything above for a human, images inlined as base64 PNG, CSS inline, no network

This module is the data side: the study's typed config (``config.loader.load_recorded_study``) and its
records become a ``ReportModel``; ``sections`` turns that into HTML.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from joulebench.analysis.effects import EffectsResult, fit_effects, level_order
from joulebench.analysis.pareto import Objective, default_fronts
from joulebench.analysis.stats import DEFAULT_CV_TARGET, PrimaryMetric, mark_outliers, primary_metric
from joulebench.analysis.summary import (SummaryTargets, param_columns, summarize_configs_of, summarize_table,
                                         summary_frame)
from joulebench.config.loader import load_recorded_study
from joulebench.config.study import StudyConfig
from joulebench.report import plots, sections
from joulebench.results.store import atomic_write_bytes
from joulebench.results.table import load_records, load_results, write_tables

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def study_targets(config: StudyConfig | None) -> tuple[float, float | None]:
    """(cv_target, ci_target) of a study: the CV target is the analysis default (the schema has none);
    the CI target is ``repeats.ci_target`` (None for a fixed repeat count: nothing is marked for it).
    Without a recorded study, the config defaults."""
    rule = config.repeats if config is not None else StudyConfig.model_fields["repeats"].default
    return DEFAULT_CV_TARGET, rule.ci_target


def sweep_axes(plan: dict[str, Any], trials: pd.DataFrame) -> tuple[list[str], dict[str, list[Any]]]:
    """The sweep axes and their levels in plan order; without a plan, params that vary.

    A study's ``experiments:`` vary params outside the sweep (e.g. concurrency 8 / 64 / 256 with backend as the
    sweep axis): those params are axes too, so an effect is estimated with them held fixed, not pooled over them.
    A param that only restates an axis (prompts 32 / 192 / 768, one per concurrency; a backend's own engine
    arguments, one set per backend) is left out: it is confounded with it and adds nothing the fit could separate."""
    axes = plan.get("axes") if isinstance(plan.get("axes"), dict) else None
    varying = [c[len("param."):] for c in trials.columns if c.startswith("param.")
               and trials[c].astype(str).nunique() > 1]
    if not axes:
        return varying, {}
    names = list(axes)
    levels = {k: list(v) if isinstance(v, list) else [v] for k, v in axes.items()}
    for p in varying:
        if p in names or any(_restates(trials, q, p) for q in names):
            continue
        names.append(p)
    return names, levels


def _restates(trials: pd.DataFrame, a: str, b: str) -> bool:
    """Whether params a and b change together one to one over the trials (each level of one goes with exactly
    one level of the other)."""
    pair = trials[[f"param.{a}", f"param.{b}"]].astype(str).drop_duplicates()
    return bool(len(pair) == pair.iloc[:, 0].nunique() == pair.iloc[:, 1].nunique())


@dataclass
class ReportModel:
    """Everything the report shows, computed; the sections only format it."""

    study_dir: Path
    name: str
    config: StudyConfig | None                    # the recorded study (None: not readable)
    plan: dict[str, Any]
    manifest: dict[str, Any]
    records: list[dict[str, Any]]                 # trial records as stored (flags, devices, environment)
    trials: pd.DataFrame                          # results.csv
    summary: pd.DataFrame                         # summary.csv
    axes: list[str]
    prim: PrimaryMetric | None
    effects: EffectsResult | None
    fronts: list[tuple[Objective, Objective]]
    cv_target: float
    ci_target: float | None
    figs: dict[str, Path | None] = field(default_factory=dict)
    n_timelines: int = 0
    max_timelines: int = 12
    generated: str = ""

    @property
    def min_window_s(self) -> float:
        return (self.config.measurement if self.config is not None
                else StudyConfig.model_fields["measurement"].default).min_window_s


def _study_name(study_dir: Path, plan: dict, config: StudyConfig | None, manifest: dict) -> str:
    return plan.get("study") or (config.name if config is not None else None) or manifest.get("study") \
        or study_dir.name


def _analyse(study_dir: Path, cv_target: float | None, ci_target: float | None) -> ReportModel:
    """Read the study, write results.*, summary.csv, effects.csv and main_effects.csv; no plots yet."""
    plan = _read_json(study_dir / "plan.json")
    manifest = _read_json(study_dir / "manifest.json")
    config = load_recorded_study(study_dir)
    cvt, cit = study_targets(config)
    targets = SummaryTargets(cv_target=cv_target if cv_target is not None else cvt,
                             ci_target=ci_target if ci_target is not None else cit,
                             ci_metric=config.repeats.metric if config is not None else None)
    trials = load_results(study_dir)
    if not trials.empty:
        trials = mark_outliers(trials)
    write_tables(study_dir, trials)
    axes, plan_levels = sweep_axes(plan, trials)
    axes = [a for a in axes if f"param.{a}" in trials.columns]
    summary = summary_frame(summarize_configs_of(summarize_table(trials), targets), param_columns(trials, axes)) \
        if not trials.empty else pd.DataFrame(columns=["config_id"])
    atomic_write_bytes(study_dir / "summary.csv", summary.to_csv(index=False).encode())
    prim = primary_metric(trials) if not trials.empty else None
    effects = fit_effects(trials, axes, axis_levels=plan_levels) if prim is not None else None
    if effects is not None:
        atomic_write_bytes(study_dir / "effects.csv",
                           pd.concat([effects.axes, effects.interactions]).to_csv(index=False).encode())
        atomic_write_bytes(study_dir / "main_effects.csv", effects.main_effects.to_csv(index=False).encode())
    return ReportModel(
        study_dir=study_dir, name=_study_name(study_dir, plan, config, manifest), config=config, plan=plan,
        manifest=manifest, records=load_records(study_dir), trials=trials, summary=summary, axes=axes, prim=prim,
        effects=effects, fronts=default_fronts(summary) if not summary.empty else [],
        cv_target=targets.cv_target, ci_target=targets.ci_target)


def _timeline_paths(m: ReportModel, ok: pd.DataFrame) -> list[tuple[str, str, Path]]:
    """(trial id, configuration label, timeseries file) of each finished trial that has one; a record
    cannot point outside the study. Files are read only for the figures that show them."""
    out = []
    root = m.study_dir.resolve()
    for r in ok.to_dict("records"):
        rel = r.get("timeseries") if isinstance(r.get("timeseries"), str) else f"timeseries/{r['trial_id']}.parquet"
        p = (m.study_dir / rel).resolve()
        if p.is_relative_to(root) and p.exists():
            out.append((str(r["trial_id"]), plots.config_label(pd.Series(r), m.axes), p))
    return out


def _plot(m: ReportModel, max_timelines: int, max_trial_timeline_files: int) -> None:
    """Write plots/ and record the figures (and the timeline count) in the model."""
    trials, prim, axes, pdir = m.trials, m.prim, m.axes, m.study_dir / "plots"
    ok = trials[trials["status"] == "ok"] if not trials.empty else trials
    plan_levels = sweep_axes(m.plan, trials)[1]
    levels = {a: level_order(ok, a, plan_levels.get(a)) for a in axes} if len(ok) else {}
    figs: dict[str, Path | None] = {}
    if prim is not None:
        figs["per_config"] = plots.plot_metric_per_config(m.summary, trials, prim.column, axes,
                                                          pdir / f"{prim.column}_per_config")
        if prim.energy_available:
            figs["throughput"] = plots.plot_metric_per_config(m.summary, trials, "throughput_tok_s", axes,
                                                              pdir / "throughput_tok_s_per_config")
        eff = m.effects
        figs["main_effects"] = plots.plot_main_effects(eff.main_effects if eff is not None else None,
                                                       levels, eff.label if eff else "", pdir / "main_effects")
    figs["pareto"] = plots.plot_pareto(m.summary, m.fronts, axes, pdir / "pareto") if m.fronts else None
    paths = _timeline_paths(m, ok) if not ok.empty else []
    m.n_timelines = len(paths)
    read = [(tid, label, plots.read_timeline(p)) for tid, label, p in paths[:max(max_timelines,
                                                                                  max_trial_timeline_files)]]
    figs["timelines"] = plots.plot_timelines([(f"{tid}: {label}", t) for tid, label, t in read],
                                             pdir / "timelines", max_panels=max_timelines)
    for tid, label, tl in [t for t in read if t[2] is not None][:max_trial_timeline_files]:
        if _SAFE_NAME.fullmatch(tid):                                  # the id becomes a file name
            plots.plot_timelines([(f"{tid}: {label}", tl)], pdir / "timelines" / tid, max_panels=1)
    m.figs, m.max_timelines = figs, max_timelines


def build_model(study_dir: Path | str, *, cv_target: float | None = None, ci_target: float | None = None,
                max_timelines: int = 12, max_trial_timeline_files: int = 60) -> ReportModel:
    """Analyse a study directory: write its tables and plots, return what the report shows."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise FileNotFoundError(f"{study_dir}: no such study directory")
    m = _analyse(study_dir, cv_target, ci_target)
    _plot(m, max_timelines, max_trial_timeline_files)
    m.generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return m


def build_report(study_dir: Path | str, *, cv_target: float | None = None, ci_target: float | None = None,
                 max_timelines: int = 12, max_trial_timeline_files: int = 60) -> Path:
    """Analyse a study directory and write its tables, plots and ``report.html``; returns the HTML path.

    ``max_timelines``: trial panels in the report's timeline figure; ``max_trial_timeline_files``: trials
    that also get their own ``plots/timelines/<trial_id>.png|pdf``.
    """
    m = build_model(study_dir, cv_target=cv_target, ci_target=ci_target, max_timelines=max_timelines,
                    max_trial_timeline_files=max_trial_timeline_files)
    out = m.study_dir / "report.html"
    atomic_write_bytes(out, sections.render(m).encode("utf-8"))
    return out
