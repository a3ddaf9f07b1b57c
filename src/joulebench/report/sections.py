"""The content of each section of ``report.html``, from a ``ReportModel`` (``report/build.py``).

Each section returns its HTML parts; ``render`` puts them in order inside the page (``report/html.py``).
The per-trial detail sections (flags, devices, environment, methodology) are in ``report/details.py``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from joulebench.analysis.effects import describe_contrast
from joulebench.analysis.pareto import pareto_table
from joulebench.analysis.stats import BOOTSTRAP_RESAMPLES, MAD_MIN_REL_SCALE, MAD_THRESHOLD, METRIC_INFO, METRICS
from joulebench.report import details, plots
from joulebench.report.html import bullets, ci, esc, fmt, img, page, pct, table

if TYPE_CHECKING:
    from joulebench.report.build import ReportModel

NAV = ('<nav><a href="#headline">Headline</a><a href="#effects">Effects</a><a href="#configs">Configurations</a>'
       '<a href="#pareto">Pareto</a><a href="#outliers">Outliers</a><a href="#flags">Quality flags</a>'
       '<a href="#failed">Failed trials</a><a href="#devices">Devices</a><a href="#timelines">Timelines</a>'
       '<a href="#environment">Environment</a><a href="#methodology">Methodology</a></nav>')


def title(m: ReportModel) -> list[str]:
    trials = m.trials
    n_ok = int((trials["status"] == "ok").sum()) if not trials.empty else 0
    n_failed = int((trials["status"] != "ok").sum()) if not trials.empty else 0
    n_planned = len(m.plan.get("trials") or []) or None
    return [f"<h1>joulebench report: {esc(m.name)}</h1>",
            f'<p class="meta">{n_ok} finished and {n_failed} failed trial(s)'
            + (f" of {n_planned} planned" if n_planned else "")
            + f", {len(m.summary)} configuration(s); generated {m.generated} from <code>{esc(m.study_dir.name)}</code>.</p>",
            NAV]


def headline(m: ReportModel) -> list[str]:
    prim, summary = m.prim, m.summary
    out = ['<h2 id="headline">Headline</h2>']
    if prim is not None and not prim.energy_available:
        out.append('<div class="notice"><b>No energy meter on this machine.</b> Every energy field is null '
                   '(no NVML GPU counter and no readable RAPL), so this report ranks configurations by '
                   'throughput (output tokens/s) and latency instead of J/output-token. Run the same study on a '
                   'machine with a GPU (or RAPL) to get energy figures.</div>')
    text = m.effects.headline if m.effects is not None else "No trial records in this study directory yet."
    out.append(f'<div class="headline" id="headline-text">{esc(text)}</div>')
    if not summary.empty and prim is not None and f"{prim.column}_mean" in summary:
        col = f"{prim.column}_mean"
        s = summary[pd.to_numeric(summary[col], errors="coerce").notna()]
        if len(s):
            best = s.sort_values(col, ascending=not prim.higher_is_better).iloc[0]
            unit = METRIC_INFO[prim.column][2]
            out.append(f"<p>Best configuration by {esc(METRIC_INFO[prim.column][1])}: "
                       f"<b>{esc(plots.config_label(best, m.axes))}</b> at {fmt(best[col])} {esc(unit)} "
                       f"(95 % CI {ci(best[f'{prim.column}_ci95_t_low'], best[f'{prim.column}_ci95_t_high'])}, "
                       f"n = {int(best[f'{prim.column}_n'])}).</p>")
    return out


def _effects_tables(m: ReportModel) -> list[str]:
    effects = m.effects
    out = [f"<p>OLS fit of log {esc(effects.label)} on the sweep axes (categorical), "
           f"n = {effects.n} trials in {effects.n_configs} configurations, R&sup2; = {fmt(effects.r_squared, 3)}, "
           f"residual df = {fmt(effects.df_resid)}. Type II ANOVA; eta&sup2; is the axis's share of the "
           "total variance of the log response.</p>"]
    rows = []
    for _, r in effects.axes.iterrows():
        c = effects.strongest.get(r["axis"])
        rows.append([esc(r["axis"]), esc(r.get("levels", "")), pct(r["eta_sq"]), pct(r["partial_eta_sq"]),
                     fmt(r["F"]), fmt(r["p_value"], 3),
                     esc(describe_contrast(c, effects.label)) if c else "&mdash;"])
    out.append(table(["axis", "levels", "eta&sup2; (share of variance)", "partial eta&sup2;", "F", "p",
                      "largest main effect (95 % CI)"], rows))
    if not effects.interactions.empty:
        out.append("<h3>Interactions</h3>")
        out.append(table(["interaction", "eta&sup2;", "partial eta&sup2;", "F", "p"],
                         [[esc(r["axis"]), pct(r["eta_sq"]), pct(r["partial_eta_sq"]), fmt(r["F"]),
                           fmt(r["p_value"], 3)] for _, r in effects.interactions.iterrows()]))
    if not effects.main_effects.empty:
        out.append("<h3>Main effects: ratio to the first level, other axes held fixed</h3>")
        out.append(table(["axis", "reference", "level", f"ratio of {esc(effects.label)}", "95 % CI", "p"],
                         [[esc(r["axis"]), esc(r["reference"]), esc(r["level"]), fmt(r["ratio"], 3),
                           ci(r["ratio_ci95_low"], r["ratio_ci95_high"]), fmt(r["p_value"], 3)]
                          for _, r in effects.main_effects.iterrows()]))
    out.append(img(m.figs.get("main_effects"), f"Main effects on {effects.label}"))
    return out


def effects(m: ReportModel) -> list[str]:
    out = ['<h2 id="effects">Which choices matter most</h2>']
    eff = m.effects
    if eff is not None and not eff.axes.empty:
        out.extend(_effects_tables(m))
    if eff is not None:
        if eff.constant_axes:
            out.append(f"<p>Axes with a single level among finished trials (not estimable): "
                       f"{esc(', '.join(eff.constant_axes))}.</p>")
        if eff.notes:
            out.append(bullets(esc(n) for n in eff.notes))
    return out


def _metric_rows(m: ReportModel, metric: str) -> list[list[str]]:
    rows = []
    for _, r in m.summary.iterrows():
        marks = []
        if metric == r.get("primary_metric") and r.get("cv_above_target"):
            marks.append("<span class='bad'>CV&gt;</span>")
        if metric == r.get("ci_metric", r.get("primary_metric")) and r.get("ci_above_target"):
            marks.append("<span class='bad'>CI&gt;</span>")
        n_out = r.get(f"{metric}_n_outliers", 0) or 0
        rows.append([esc(plots.config_label(r, m.axes)), fmt(r[f"{metric}_n"]), fmt(r[f"{metric}_mean"]),
                     fmt(r[f"{metric}_median"]), fmt(r[f"{metric}_std"]), pct(r[f"{metric}_cv"]),
                     ci(r[f"{metric}_ci95_t_low"], r[f"{metric}_ci95_t_high"]),
                     ci(r[f"{metric}_ci95_boot_low"], r[f"{metric}_ci95_boot_high"]),
                     (f"<span class='bad'>{int(n_out)}</span>" if n_out else "0"),
                     " ".join(marks), fmt(r["n_failed"])])
    return rows


def configurations(m: ReportModel) -> list[str]:
    prim, summary = m.prim, m.summary
    out = ['<h2 id="configs">Configurations</h2>',
           img(m.figs.get("per_config"), f"{METRIC_INFO[prim.column][1]} per configuration" if prim else "")]
    if summary.empty:
        return out
    out.append(f"<p>Mean over finished repeats with 95 % confidence intervals by Student's t and by bootstrap "
               f"(BCa, {BOOTSTRAP_RESAMPLES} seeded resamples). <span class='bad'>CV&gt;</span> marks a "
               f"configuration whose coefficient of variation of the primary metric exceeds the target "
               f"({m.cv_target * 100:.1f} %)"
               + (f"; <span class='bad'>CI&gt;</span> one whose CI half-width exceeds {m.ci_target * 100:.1f} % of "
                  "the mean (the study's adaptive-repeats target)." if m.ci_target is not None else
                  ". The study has a fixed repeat count, so no CI target is checked.") + "</p>")
    for metric, label, unit, _ in METRICS:
        if f"{metric}_mean" not in summary or pd.to_numeric(summary[f"{metric}_mean"], errors="coerce").isna().all():
            continue
        out.append(f"<h3>{esc(label)} ({esc(unit)})</h3>")
        out.append(table(["configuration", "n", "mean", "median", "std", "CV", "95 % CI (t)",
                          "95 % CI (bootstrap)", "MAD outliers", "marks", "failed"], _metric_rows(m, metric)))
    out.append(img(m.figs.get("throughput"), "Throughput per configuration"))
    out.append("<p>Full table: <code>summary.csv</code>; per trial: <code>results.csv</code>, "
               "<code>results.parquet</code>.</p>")
    return out


def pareto(m: ReportModel) -> list[str]:
    out = ['<h2 id="pareto">Pareto fronts</h2>']
    if not m.fronts:
        out.append("<p>No pair of objectives with values in this study (need at least energy or throughput "
                   "and a latency figure).</p>")
        return out
    summary, axes = m.summary, m.axes
    out.append(img(m.figs.get("pareto"), "Pareto fronts (front in blue, dominated in grey)"))
    label = {r["config_id"]: plots.config_label(r, axes) for _, r in summary.iterrows()}
    for x, y in m.fronts:
        rows = []
        for r in pareto_table(summary, x, y).to_dict("records"):
            rows.append([esc(label[r["config_id"]]), fmt(r[x.column]), fmt(r[y.column]),
                         "<b class='good'>front</b>" if r["on_front"] else esc(r["status"]),
                         esc(label[r["dominated_by"]]) if r["dominated_by"] in label else ""])
        out.append(f"<h3>{esc(x.label)} vs {esc(y.label)}</h3>")
        out.append(table(["configuration", esc(x.label), esc(y.label), "status", "dominated by"], rows))
    return out


def outliers(m: ReportModel) -> list[str]:
    trials = m.trials
    out = ['<h2 id="outliers">Outliers (MAD rule, flagged, never dropped)</h2>',
           f"<p>Within each configuration, a trial is an outlier on a metric when its modified z-score "
           f"0.6745&middot;|x &minus; median| / MAD exceeds {MAD_THRESHOLD} (Iglewicz and Hoaglin, 1993), with the "
           f"MAD floored at {MAD_MIN_REL_SCALE * 100:g} % of the median so that closely agreeing repeats do not turn "
           "ordinary noise into outliers. "
           "Outliers stay in every statistic above; they are listed here so you can look at them.</p>"]
    outl = trials[trials.get("outlier_metrics", pd.Series(dtype=str)).fillna("") != ""] \
        if "outlier_metrics" in trials else trials.iloc[0:0]
    if len(outl):
        out.append(table(["trial", "configuration", "repeat", "metrics", "flags"],
                         [[esc(r["trial_id"]), esc(plots.config_label(r, m.axes)), fmt(r["repeat"]),
                           esc(r["outlier_metrics"].replace(";", ", ")), esc(r.get("flags") or "")]
                          for _, r in outl.iterrows()]))
    else:
        out.append("<p>None.</p>")
    return out


def flags(m: ReportModel) -> list[str]:
    return ['<h2 id="flags">Quality flags</h2>',
            "<h3>Per configuration (from the repeats)</h3>", details.config_flags_table(m.summary, m.axes),
            "<h3>Per trial (raised by the measurement protocol)</h3>", details.trial_flags(m.records, m.trials, m.axes)]


def failed(m: ReportModel) -> list[str]:
    trials = m.trials
    out = ['<h2 id="failed">Failed trials</h2>']
    bad = trials[trials["status"] != "ok"] if not trials.empty else trials
    if len(bad):
        out.append(table(["trial", "configuration", "repeat", "kind", "error"],
                         [[esc(r["trial_id"]), esc(plots.config_label(r, m.axes)), fmt(r["repeat"]),
                           esc(r.get("error_kind")), f"<pre>{esc(r.get('error'))}</pre>"]
                          for _, r in bad.iterrows()]))
    else:
        out.append("<p>None.</p>")
    return out


def devices(m: ReportModel) -> list[str]:
    return ['<h2 id="devices">Energy per device</h2>', details.devices_table(m.records, m.trials, m.axes)]


def timelines(m: ReportModel) -> list[str]:
    out = ['<h2 id="timelines">Power and temperature timelines</h2>']
    if m.figs.get("timelines"):
        more = f" (first {m.max_timelines} shown of {m.n_timelines})" if m.n_timelines > m.max_timelines else ""
        out.append(img(m.figs["timelines"], f"Device power and temperature over each measured window{more}"))
        out.append("<p>One figure per trial: <code>plots/timelines/&lt;trial_id&gt;.png</code> and <code>.pdf</code>."
                   "</p>")
    else:
        out.append("<p>No device timeline was recorded (no GPU sampler on this machine, or empty timelines).</p>")
    return out


def environment(m: ReportModel) -> list[str]:
    return ['<h2 id="environment">Environment</h2>', details.environment_table(m.records, m.manifest)]


def methodology(m: ReportModel) -> list[str]:
    return ['<h2 id="methodology">Methodology notes</h2>', details.inputs(m.plan, m.manifest, m.records),
            details.methodology(m.trials, m.min_window_s, m.prim)]


SECTIONS = (title, headline, effects, configurations, pareto, outliers, flags, failed, devices, timelines,
            environment, methodology)


def render(m: ReportModel) -> str:
    """The whole ``report.html``."""
    return page(m.name, [part for section in SECTIONS for part in section(m)])
