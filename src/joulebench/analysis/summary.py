"""The one per-configuration summary of a study's trials.

Every reader of results groups trials by configuration here: the CLI's results table, the nightly
summary, the adaptive rounds (``study/rounds.py``) and the report (``summary.csv``).

* ``ConfigRepeats``: one configuration's trials: counts, the values of each metric over its finished
  repeats (in trial order), its flag codes. Cheap: no bootstrap.
* ``ConfigSummary``: the full statistics of one configuration (``MetricSummary`` per metric, the CV and
  CI targets and the flags they raise); ``summary_frame`` turns a list of them into ``summary.csv``.

Rows are flat trial rows (``results.table.flatten_record``, or the rows of the trial table), so a
metric is a column name of the trial table (``ttft_s_median``, ``energy_per_output_token_j``, ...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from joulebench.analysis.stats import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, DEFAULT_CV_TARGET, METRICS,
                                       MetricSummary, PrimaryMetric, mean_ci, primary_of, repeats_for_ci_target,
                                       summarize)
from joulebench.results.table import flatten_record

METRIC_COLUMNS: tuple[str, ...] = tuple(m[0] for m in METRICS)
ENERGY_PER_TOKEN = "energy_per_output_token_j"
THROUGHPUT = "throughput_tok_s"


@dataclass(frozen=True)
class ConfigRepeats:
    """One configuration's trials."""

    config_id: str
    params: dict[str, Any]                        # ``param.<name>`` cells of its first trial
    n_trials: int
    n_ok: int
    values: dict[str, tuple[Any, ...]]            # metric -> its value in each finished trial (None kept)
    flags: frozenset[str] = field(default_factory=frozenset)   # codes raised by its finished trials

    @property
    def n_failed(self) -> int:
        return self.n_trials - self.n_ok

    def ok_values(self, metric: str) -> tuple[Any, ...]:
        return self.values.get(metric, ())

    def mean(self, metric: str) -> float | None:
        """Plain mean of the metric over the finished repeats that have it (summed in trial order, as the
        nightly summary has always reported it); None where none has it."""
        xs = [v for v in self.ok_values(metric) if v is not None]
        return sum(xs) / len(xs) if xs else None

    def mean_ci(self, metric: str, confidence: float = 0.95) -> tuple[float, float, float]:
        """(mean, low, high) of the metric over the finished repeats (Student's t; on the log scale for a
        positive quantity whose t interval reaches zero); nan where undefined."""
        return mean_ci(self.ok_values(metric), confidence)[:3]


def _number(v: Any) -> Any:
    """A metric cell as the statistics read it: numbers (and None) as they are, other text missing."""
    if v is None or isinstance(v, (int, float)):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def group_rows(rows: Iterable[Mapping[str, Any]], metrics: Sequence[str] = METRIC_COLUMNS) -> list[ConfigRepeats]:
    """Flat trial rows -> one ``ConfigRepeats`` per configuration, in order of first appearance."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row.get("config_id"), []).append(row)
    out = []
    for cid, rs in groups.items():
        ok = [r for r in rs if r.get("status") == "ok"]
        flags = {c for r in ok for c in str(r.get("flags") or "").split(";") if c}
        out.append(ConfigRepeats(
            config_id=cid, params={k: v for k, v in rs[0].items() if k.startswith("param.")},
            n_trials=len(rs), n_ok=len(ok),
            values={m: tuple(_number(r.get(m)) for r in ok) for m in metrics}, flags=frozenset(flags)))
    return out


def summarize_records(records: Iterable[Mapping[str, Any]]) -> list[ConfigRepeats]:
    """Trial records (as the store reads them) -> one ``ConfigRepeats`` per configuration."""
    return group_rows(flatten_record(dict(r)) for r in records)


def summarize_table(trials: pd.DataFrame) -> list[ConfigRepeats]:
    """The trial table (``results.table.load_results``) -> one ``ConfigRepeats`` per configuration."""
    if trials.empty:
        return []
    metrics = [m for m in METRIC_COLUMNS if m in trials.columns]
    return group_rows(trials.to_dict("records"), metrics)


def primary_metric_of(configs: Sequence[ConfigRepeats]) -> PrimaryMetric:
    """J/output-token when any finished trial has it, else throughput (``stats.primary_metric``'s rule)."""
    return primary_of(any(v is not None and not (isinstance(v, float) and math.isnan(v))
                          for c in configs for v in c.ok_values(ENERGY_PER_TOKEN)))


# ---------------------------------------------------------------------------
# the full summary (summary.csv)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SummaryTargets:
    """What the summary checks: the CV target of the primary metric, the CI target and the metric it bounds."""

    cv_target: float = DEFAULT_CV_TARGET
    ci_target: float | None = None
    ci_metric: str | None = None                  # the study's repeats.metric; None: the primary metric


@dataclass(frozen=True)
class ConfigSummary:
    """One configuration: its counts, ``MetricSummary`` per metric and the targets it misses."""

    repeats: ConfigRepeats
    metrics: dict[str, MetricSummary]
    primary_metric: str
    ci_metric: str
    cv_target: float
    cv_above_target: bool
    ci_target: float | None
    ci_above_target: bool
    too_few_repeats: bool                         # fewer than 3 finished, or a t interval that reached zero
    repeats_for_ci_target: int | None             # repeats whose CI would reach the target (2 % without one)
    cv_share_throughput: float                    # share of CV(J/token)^2 that comes from CV(tokens/s)^2
    throughput_dominated: bool

    def row(self, param_columns: Sequence[str]) -> dict[str, Any]:
        """The configuration's row of ``summary.csv``."""
        rep = self.repeats
        row: dict[str, Any] = {"config_id": rep.config_id}
        for c in param_columns:
            row[c] = rep.params.get(c)
        row.update(n_trials=rep.n_trials, n_ok=rep.n_ok, n_failed=rep.n_failed)
        for m, s in self.metrics.items():
            row.update(s.as_dict(f"{m}_"))
        row.update(primary_metric=self.primary_metric, ci_metric=self.ci_metric, cv_target=self.cv_target,
                   cv_above_target=self.cv_above_target,
                   ci_target=self.ci_target if self.ci_target is not None else math.nan,
                   ci_above_target=self.ci_above_target, too_few_repeats=self.too_few_repeats,
                   repeats_for_ci_target=self.repeats_for_ci_target if self.repeats_for_ci_target is not None
                   else math.nan, cv_share_throughput=self.cv_share_throughput,
                   throughput_dominated=self.throughput_dominated)
        return row


def _cv_share_throughput(stats: Mapping[str, MetricSummary], energy_available: bool) -> float:
    """CV(J/token)^2 ~ CV(W)^2 + CV(tok/s)^2 (METHODOLOGY.md section 1): the share of tokens/s."""
    cv_tok = stats[THROUGHPUT].cv if THROUGHPUT in stats else math.nan
    cv_pow = stats["mean_power_w"].cv if "mean_power_w" in stats else math.nan
    if energy_available and math.isfinite(cv_tok) and math.isfinite(cv_pow) and (cv_tok > 0 or cv_pow > 0):
        return cv_tok ** 2 / (cv_tok ** 2 + cv_pow ** 2)
    return math.nan


def summarize_config(rep: ConfigRepeats, prim: PrimaryMetric, targets: SummaryTargets, *,
                     confidence: float = 0.95, seed: int = BOOTSTRAP_SEED,
                     n_resamples: int = BOOTSTRAP_RESAMPLES) -> ConfigSummary:
    stats = {m: summarize(list(v), confidence, seed=seed, n_resamples=n_resamples) for m, v in rep.values.items()}
    c = stats[prim.column].cv if prim.column in stats else math.nan
    wanted = targets.ci_metric
    ci_col = wanted if wanted and wanted in stats and stats[wanted].n else prim.column
    rel = stats[ci_col].ci95_rel_halfwidth if ci_col in stats else math.inf
    cv_above = bool(isinstance(c, float) and math.isfinite(c) and c > targets.cv_target)
    share = _cv_share_throughput(stats, prim.energy_available)
    ci_stats = stats.get(ci_col)
    too_few = bool(rep.n_ok > 0 and (rep.n_ok < 3 or (ci_stats is not None and ci_stats.ci95_method == "log-t")))
    need = repeats_for_ci_target(ci_stats.cv if ci_stats is not None else math.nan,
                                 targets.ci_target if targets.ci_target is not None else 0.02, confidence)
    return ConfigSummary(
        repeats=rep, metrics=stats, primary_metric=prim.column, ci_metric=ci_col, cv_target=targets.cv_target,
        cv_above_target=cv_above, ci_target=targets.ci_target,
        ci_above_target=bool(targets.ci_target is not None and (not math.isfinite(rel) or rel > targets.ci_target)
                             and rep.n_ok > 0),
        too_few_repeats=too_few, repeats_for_ci_target=need, cv_share_throughput=share, throughput_dominated=bool(cv_above and math.isfinite(share) and share > 0.5))


def summarize_configs_of(configs: Sequence[ConfigRepeats], targets: SummaryTargets = SummaryTargets(), *,
                         confidence: float = 0.95, seed: int = BOOTSTRAP_SEED,
                         n_resamples: int = BOOTSTRAP_RESAMPLES) -> list[ConfigSummary]:
    prim = primary_metric_of(configs)
    return [summarize_config(c, prim, targets, confidence=confidence, seed=seed, n_resamples=n_resamples)
            for c in configs]


def summary_frame(summaries: Sequence[ConfigSummary], param_columns: Sequence[str]) -> pd.DataFrame:
    """``summary.csv``: one row per configuration."""
    if not summaries:
        return pd.DataFrame(columns=["config_id", "n_trials", "n_ok", "n_failed"])
    return pd.DataFrame([s.row(param_columns) for s in summaries])


def param_columns(trials: pd.DataFrame, axes: Sequence[str] | None) -> list[str]:
    """``param.<axis>`` columns of the trial table: the axes given, else every parameter."""
    cols = [f"param.{a}" for a in axes] if axes is not None else [c for c in trials.columns if c.startswith("param.")]
    return [c for c in cols if c in trials.columns]


def summarize_configs(trials: pd.DataFrame, *, axes: Sequence[str] | None = None,
                      cv_target: float = DEFAULT_CV_TARGET, ci_target: float | None = None,
                      ci_metric: str | None = None, confidence: float = 0.95, seed: int = BOOTSTRAP_SEED,
                      n_resamples: int = BOOTSTRAP_RESAMPLES) -> pd.DataFrame:
    """One row per configuration: its parameters and, per metric, the ``MetricSummary`` fields.

    Columns: ``config_id``, ``param.<axis>`` for each axis, ``n_trials``, ``n_ok``, ``n_failed``,
    ``<metric>_<stat>`` for each metric of ``METRICS`` present in the table, and for the
    primary metric (J/output-token, else tokens/s) ``primary_metric``, ``cv_above_target``
    (CV > ``cv_target``) and ``ci_above_target`` (relative t-CI half-width > ``ci_target``).
    ``ci_target`` bounds ``ci_metric`` (the study's ``repeats.metric``) where the table has values of
    it, else the primary metric; the column ``ci_metric`` names the one checked.
    """
    targets = SummaryTargets(cv_target=cv_target, ci_target=ci_target, ci_metric=ci_metric)
    summaries = summarize_configs_of(summarize_table(trials), targets, confidence=confidence, seed=seed,
                                     n_resamples=n_resamples)
    return summary_frame(summaries, param_columns(trials, axes))


# ---------------------------------------------------------------------------
# the judgement of a configuration's repeats: one source for the report and the console
# ---------------------------------------------------------------------------

CONFIG_ADVICE = {
    "high_cv": "Repeats of this configuration vary more than the target; add repeats (repeats.max) or find "
               "the noise source.",
    "throughput_dominated": "J/token spread comes from tokens/s noise (host-bound work), not from power; more "
                            "repeats tighten the mean, a faster host loop removes it.",
    "ci_above_target": "The 95 % CI of the mean is wider than the study's target; more repeats narrow it "
                       "(about as 1/sqrt(n)).",
    "too_few_repeats": "Too few finished repeats to say anything about the spread: the interval is wide or "
                       "undefined. Run more repeats (repeats: N, or repeats.max with a ci_target).",
}


@dataclass(frozen=True)
class ConfigFlag:
    code: str
    advice: str
    detail: str


def _pct(x: Any) -> str:
    try:
        return f"{float(x) * 100:.1f} %"
    except (TypeError, ValueError):
        return "n/a"


def config_flags(row: Mapping[str, Any]) -> list[ConfigFlag]:
    """The flags a configuration's summary row (``ConfigSummary.row``, a row of summary.csv) raises, with
    their advice and the figures behind them, in a fixed order."""
    out: list[ConfigFlag] = []
    prim = row.get("primary_metric")
    if row.get("too_few_repeats"):
        need = row.get("repeats_for_ci_target")
        target = row.get("ci_target")
        target = target if isinstance(target, (int, float)) and math.isfinite(target) else 0.02
        more = (f"; about {int(need)} repeats would reach a {target * 100:g} % CI"
                if isinstance(need, (int, float)) and math.isfinite(need) else "")
        out.append(ConfigFlag("too_few_repeats", CONFIG_ADVICE["too_few_repeats"],
                              f"n = {int(row.get('n_ok') or 0)} finished repeat(s){more}"))
    if row.get("cv_above_target"):
        out.append(ConfigFlag("high_cv", CONFIG_ADVICE["high_cv"],
                              f"CV of {prim} = {_pct(row.get(f'{prim}_cv'))} > target {_pct(row.get('cv_target'))} "
                              f"(n = {row.get(f'{prim}_n')})"))
    if row.get("throughput_dominated"):
        out.append(ConfigFlag("throughput_dominated", CONFIG_ADVICE["throughput_dominated"],
                              f"{float(row['cv_share_throughput']) * 100:.0f} % of the J/token variance comes from "
                              f"tokens/s (CV {_pct(row.get('throughput_tok_s_cv'))}) vs power "
                              f"(CV {_pct(row.get('mean_power_w_cv'))})"))
    if row.get("ci_above_target"):
        ci_col = row.get("ci_metric") or prim
        rel = row.get(f"{ci_col}_ci95_rel_halfwidth", math.inf)
        out.append(ConfigFlag("ci_above_target", CONFIG_ADVICE["ci_above_target"],
                              f"CI half-width of {ci_col} {rel * 100:.1f} % of the mean > target "
                              f"{row['ci_target'] * 100:.1f} %" if math.isfinite(rel)
                              else "fewer than 2 finished repeats: no CI"))
    return out
