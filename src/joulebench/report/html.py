"""The report of a study directory: tables, plots and one self-contained ``report.html``.

``build_report(study_dir)`` writes, inside the study directory:

* ``results.parquet``, ``results.csv``: one row per trial (``joulebench.results.table``), with MAD outlier columns
* ``summary.csv``: one row per configuration (``joulebench.analysis.stats.summarize_configs``)
* ``effects.csv``, ``main_effects.csv``: the variance decomposition and the main-effect ratios
* ``plots/*.png`` and ``plots/*.pdf``
* ``report.html``: everything above for a human, images inlined as base64 PNG, CSS inline, no network
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import yaml

from joulebench.analysis.effects import EffectsResult, fit_effects, level_order
from joulebench.analysis.pareto import default_fronts, pareto_table
from joulebench.analysis.stats import (BOOTSTRAP_RESAMPLES, DEFAULT_CV_TARGET, MAD_MIN_REL_SCALE, MAD_THRESHOLD, METRIC_INFO, METRICS,
                              mark_outliers, primary_metric, summarize_configs)
from joulebench.results.store import atomic_write_bytes
from joulebench.results.table import load_results, write_tables
from joulebench.report import plots

DEFAULT_CI_TARGET = 0.02
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _read_study_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def study_ci_metric(study: dict[str, Any]) -> str | None:
    """The figure the study's ``repeats.ci_target`` bounds (``repeats.metric``); None: the default."""
    rep = study.get("repeats")
    m = rep.get("metric") if isinstance(rep, dict) else None
    return m if isinstance(m, str) and m else None


def study_targets(study: dict[str, Any]) -> tuple[float, float | None]:
    """(cv_target, ci_target) from the study's ``repeats`` section.

    A fixed repeat count (``repeats: 3``, or ``ci_target: null``) has no CI target: nothing is
    marked for it. A ``repeats`` mapping without ``ci_target`` gets the config default (2 %).
    """
    raw = study.get("repeats")
    rep = raw if isinstance(raw, dict) else {}

    def num(v: Any, default: float | None) -> float | None:
        try:
            f = float(v)
            return f if f > 0 else default
        except (TypeError, ValueError):
            return default

    cv_t = num(rep.get("cv_target"), DEFAULT_CV_TARGET) or DEFAULT_CV_TARGET
    if raw is not None and not isinstance(raw, dict):
        ci_t = None                                    # repeats: N
    elif "ci_target" in rep:
        ci_t = num(rep["ci_target"], None)             # null: no target
    else:
        ci_t = DEFAULT_CI_TARGET
    return cv_t, ci_t


def sweep_axes(plan: dict[str, Any], trials: pd.DataFrame) -> tuple[list[str], dict[str, list[Any]]]:
    """The sweep axes and their levels in plan order; without a plan, params that vary."""
    axes = plan.get("axes") if isinstance(plan.get("axes"), dict) else None
    if axes:
        return list(axes), {k: list(v) if isinstance(v, list) else [v] for k, v in axes.items()}
    names = [c[len("param."):] for c in trials.columns if c.startswith("param.")
             and trials[c].astype(str).nunique() > 1]
    return names, {}


# ---------------------------------------------------------------------------
# formatting helpers
# ---------------------------------------------------------------------------

def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def fmt(x: Any, digits: int = 4) -> str:
    """Numbers with ``digits`` significant digits; nan/None as an em dash."""
    if x is None:
        return "&mdash;"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    try:
        f = float(x)
    except (TypeError, ValueError):
        return _e(x)
    if not math.isfinite(f):
        return "&mdash;"
    if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e6):
        return f"{f:.{digits - 1}e}"
    return f"{f:.{digits}g}"


def _pct(x: Any) -> str:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return "&mdash;"
    return f"{f * 100:.1f} %" if math.isfinite(f) else "&mdash;"


def _ci(lo: Any, hi: Any) -> str:
    return f"[{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None and \
        all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lo, hi)) else "&mdash;"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escape text with ``_e`` before)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).exists():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    pdf = Path(path).with_suffix(".pdf").name
    return (f'<figure><img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{_e(alt)} (also <code>plots/{_e(pdf)}</code>)</figcaption></figure>')


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fafafa;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:1.2rem 1.5rem 3rem}
h1{font-size:1.6rem;margin:.2rem 0}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:2px solid #1f6fb4;padding-bottom:.2rem}
h3{font-size:1.05rem;margin-top:1.4rem}
.meta{color:#555;font-size:.9rem}
.headline{background:#e8f1fa;border-left:6px solid #1f6fb4;padding:.9rem 1.1rem;font-size:1.12rem;margin:1rem 0}
.notice{background:#fff4e0;border-left:6px solid #e69500;padding:.6rem 1rem;margin:.8rem 0}
.bad{color:#b00020;font-weight:600}.good{color:#1a7f37}
.scroll{overflow-x:auto;margin:.6rem 0}
table{border-collapse:collapse;font-size:.83rem;background:#fff}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f3f6;position:sticky;top:0}
tr.front td{background:#eef7ee}tr:hover td{background:#f5f9ff}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1rem 0}img.plot{max-width:100%;height:auto;border:1px solid #e3e3e3;background:#fff}
figcaption{font-size:.8rem;color:#666}
nav{font-size:.88rem;margin:.6rem 0}nav a{margin-right:.8rem}
code{background:#f0f0f0;padding:0 .2rem;border-radius:3px}
ul.notes li{margin:.25rem 0}
details.flag{margin:.3rem 0}details.flag summary{cursor:pointer}
"""


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------

def build_report(study_dir: Path | str, *, cv_target: float | None = None, ci_target: float | None = None,
                 max_timelines: int = 12, max_trial_timeline_files: int = 60) -> Path:
    """Analyse a study directory and write its tables, plots and ``report.html``; returns the HTML path.

    ``max_timelines``: trial panels in the report's timeline figure; ``max_trial_timeline_files``: trials
    that also get their own ``plots/timelines/<trial_id>.png|pdf``.
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise FileNotFoundError(f"{study_dir}: no such study directory")
    plan = _read_json(study_dir / "plan.json")
    manifest = _read_json(study_dir / "manifest.json")
    study = _read_study_yaml(study_dir / "study.yaml")
    cvt, cit = study_targets(study)
    cv_target = cv_target if cv_target is not None else cvt
    ci_target = ci_target if ci_target is not None else cit

    trials = load_results(study_dir)
    if not trials.empty:
        trials = mark_outliers(trials)
    write_tables(study_dir, trials)
    axes, plan_levels = sweep_axes(plan, trials)
    axes = [a for a in axes if f"param.{a}" in trials.columns]
    summary = summarize_configs(trials, axes=axes, cv_target=cv_target, ci_target=ci_target,
                                ci_metric=study_ci_metric(study)) \
        if not trials.empty else pd.DataFrame(columns=["config_id"])
    atomic_write_bytes(study_dir / "summary.csv", summary.to_csv(index=False).encode())

    prim = primary_metric(trials) if not trials.empty else None
    effects = fit_effects(trials, axes, axis_levels=plan_levels) if prim is not None else None
    if effects is not None:
        atomic_write_bytes(study_dir / "effects.csv",
                           pd.concat([effects.axes, effects.interactions]).to_csv(index=False).encode())
        atomic_write_bytes(study_dir / "main_effects.csv", effects.main_effects.to_csv(index=False).encode())

    ok = trials[trials["status"] == "ok"] if not trials.empty else trials
    levels = {a: level_order(ok, a, plan_levels.get(a)) for a in axes} if len(ok) else {}
    pdir = study_dir / "plots"
    figs: dict[str, Path | None] = {}
    if prim is not None:
        figs["per_config"] = plots.plot_metric_per_config(summary, trials, prim.column, axes,
                                                          pdir / f"{prim.column}_per_config")
        if prim.energy_available:
            figs["throughput"] = plots.plot_metric_per_config(summary, trials, "throughput_tok_s", axes,
                                                              pdir / "throughput_tok_s_per_config")
        figs["main_effects"] = plots.plot_main_effects(effects.main_effects if effects is not None else None,
                                                       levels, effects.label if effects else "", pdir / "main_effects")
    fronts = default_fronts(summary) if not summary.empty else []
    figs["pareto"] = plots.plot_pareto(summary, fronts, axes, pdir / "pareto") if fronts else None
    timelines = []
    if not ok.empty:
        for _, r in ok.iterrows():
            rel = r.get("timeseries") if isinstance(r.get("timeseries"), str) else f"timeseries/{r['trial_id']}.parquet"
            p = (study_dir / rel).resolve()
            if p.is_relative_to(study_dir.resolve()) and p.exists():   # a record cannot point outside the study
                timelines.append((str(r["trial_id"]), plots.config_label(r, axes), plots.read_timeline(p)))
    n_timelines = sum(1 for *_, t in timelines if t is not None)
    figs["timelines"] = plots.plot_timelines([(f"{tid}: {label}", t) for tid, label, t in timelines],
                                             pdir / "timelines", max_panels=max_timelines)
    for tid, label, tl in [t for t in timelines if t[2] is not None][:max_trial_timeline_files]:
        if _SAFE_NAME.fullmatch(tid):                                  # the id becomes a file name
            plots.plot_timelines([(f"{tid}: {label}", tl)], pdir / "timelines" / tid, max_panels=1)

    doc = _render(study_dir, plan, manifest, study, trials, summary, effects, fronts, figs, axes,
                  cv_target, ci_target, n_timelines, max_timelines)
    out = study_dir / "report.html"
    atomic_write_bytes(out, doc.encode("utf-8"))
    return out


def _render(study_dir, plan, manifest, study, trials, summary, effects: EffectsResult | None, fronts, figs,
            axes, cv_target, ci_target, n_timelines, max_timelines) -> str:
    name = plan.get("study") or study.get("name") or manifest.get("study") or study_dir.name
    n_ok = int((trials["status"] == "ok").sum()) if not trials.empty else 0
    n_failed = int((trials["status"] != "ok").sum()) if not trials.empty else 0
    n_planned = len(plan.get("trials") or []) or None
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    prim = primary_metric(trials) if not trials.empty else None
    out: list[str] = []
    out.append(f"<h1>joulebench report: {_e(name)}</h1>")
    out.append(f'<p class="meta">{n_ok} finished and {n_failed} failed trial(s)'
               + (f" of {n_planned} planned" if n_planned else "")
               + f", {len(summary)} configuration(s); generated {generated} from <code>{_e(study_dir.name)}</code>.</p>")
    out.append('<nav><a href="#headline">Headline</a><a href="#effects">Effects</a><a href="#configs">Configurations</a>'
               '<a href="#pareto">Pareto</a><a href="#outliers">Outliers</a><a href="#flags">Quality flags</a>'
               '<a href="#failed">Failed trials</a><a href="#devices">Devices</a><a href="#timelines">Timelines</a>'
               '<a href="#environment">Environment</a><a href="#methodology">Methodology</a></nav>')

    # headline
    out.append('<h2 id="headline">Headline</h2>')
    if prim is not None and not prim.energy_available:
        out.append('<div class="notice"><b>No energy meter on this machine.</b> Every energy field is null '
                   '(no NVML GPU counter and no readable RAPL), so this report ranks configurations by '
                   'throughput (output tokens/s) and latency instead of J/output-token. Run the same study on a '
                   'machine with a GPU (or RAPL) to get energy figures.</div>')
    headline = effects.headline if effects is not None else "No trial records in this study directory yet."
    out.append(f'<div class="headline" id="headline-text">{_e(headline)}</div>')
    if not summary.empty and prim is not None and f"{prim.column}_mean" in summary:
        col = f"{prim.column}_mean"
        s = summary[pd.to_numeric(summary[col], errors="coerce").notna()]
        if len(s):
            best = s.sort_values(col, ascending=not prim.higher_is_better).iloc[0]
            unit = METRIC_INFO[prim.column][2]
            out.append(f"<p>Best configuration by {_e(METRIC_INFO[prim.column][1])}: "
                       f"<b>{_e(plots.config_label(best, axes))}</b> at {fmt(best[col])} {_e(unit)} "
                       f"(95 % CI {_ci(best[f'{prim.column}_ci95_t_low'], best[f'{prim.column}_ci95_t_high'])}, "
                       f"n = {int(best[f'{prim.column}_n'])}).</p>")

    # effects
    out.append('<h2 id="effects">Which choices matter most</h2>')
    if effects is not None and not effects.axes.empty:
        out.append(f"<p>OLS fit of log {_e(effects.label)} on the sweep axes (categorical), "
                   f"n = {effects.n} trials in {effects.n_configs} configurations, R&sup2; = {fmt(effects.r_squared, 3)}, "
                   f"residual df = {fmt(effects.df_resid)}. Type II ANOVA; eta&sup2; is the axis's share of the "
                   "total variance of the log response.</p>")
        rows = []
        for _, r in effects.axes.iterrows():
            c = effects.strongest.get(r["axis"])
            rows.append([_e(r["axis"]), _e(r.get("levels", "")), _pct(r["eta_sq"]), _pct(r["partial_eta_sq"]),
                         fmt(r["F"]), fmt(r["p_value"], 3),
                         _e(plots_safe_contrast(c, effects.label)) if c else "&mdash;"])
        out.append(_table(["axis", "levels", "eta&sup2; (share of variance)", "partial eta&sup2;", "F", "p",
                           "largest main effect (95 % CI)"], rows))
        if not effects.interactions.empty:
            out.append("<h3>Interactions</h3>")
            out.append(_table(["interaction", "eta&sup2;", "partial eta&sup2;", "F", "p"],
                              [[_e(r["axis"]), _pct(r["eta_sq"]), _pct(r["partial_eta_sq"]), fmt(r["F"]),
                                fmt(r["p_value"], 3)] for _, r in effects.interactions.iterrows()]))
        if not effects.main_effects.empty:
            out.append("<h3>Main effects: ratio to the first level, other axes held fixed</h3>")
            out.append(_table(["axis", "reference", "level", f"ratio of {_e(effects.label)}", "95 % CI", "p"],
                              [[_e(r["axis"]), _e(r["reference"]), _e(r["level"]), fmt(r["ratio"], 3),
                                _ci(r["ratio_ci95_low"], r["ratio_ci95_high"]), fmt(r["p_value"], 3)]
                               for _, r in effects.main_effects.iterrows()]))
        out.append(_img(figs.get("main_effects"), f"Main effects on {effects.label}"))
    if effects is not None:
        if effects.constant_axes:
            out.append(f"<p>Axes with a single level among finished trials (not estimable): "
                       f"{_e(', '.join(effects.constant_axes))}.</p>")
        if effects.notes:
            out.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in effects.notes) + "</ul>")

    # per configuration
    out.append('<h2 id="configs">Configurations</h2>')
    out.append(_img(figs.get("per_config"), f"{METRIC_INFO[prim.column][1]} per configuration" if prim else ""))
    if not summary.empty:
        out.append(f"<p>Mean over finished repeats with 95 % confidence intervals by Student's t and by bootstrap "
                   f"(BCa, {BOOTSTRAP_RESAMPLES} seeded resamples). <span class='bad'>CV&gt;</span> marks a "
                   f"configuration whose coefficient of variation of the primary metric exceeds the target "
                   f"({cv_target * 100:.1f} %)"
                   + (f"; <span class='bad'>CI&gt;</span> one whose CI half-width exceeds {ci_target * 100:.1f} % of "
                      "the mean (the study's adaptive-repeats target)." if ci_target is not None else
                      ". The study has a fixed repeat count, so no CI target is checked.") + "</p>")
        for metric, label, unit, _ in METRICS:
            if f"{metric}_mean" not in summary or pd.to_numeric(summary[f"{metric}_mean"], errors="coerce").isna().all():
                continue
            rows = []
            for _, r in summary.iterrows():
                marks = []
                if metric == r.get("primary_metric") and r.get("cv_above_target"):
                    marks.append("<span class='bad'>CV&gt;</span>")
                if metric == r.get("ci_metric", r.get("primary_metric")) and r.get("ci_above_target"):
                    marks.append("<span class='bad'>CI&gt;</span>")
                n_out = r.get(f"{metric}_n_outliers", 0) or 0
                rows.append([_e(plots.config_label(r, axes)), fmt(r[f"{metric}_n"]), fmt(r[f"{metric}_mean"]),
                             fmt(r[f"{metric}_median"]), fmt(r[f"{metric}_std"]), _pct(r[f"{metric}_cv"]),
                             _ci(r[f"{metric}_ci95_t_low"], r[f"{metric}_ci95_t_high"]),
                             _ci(r[f"{metric}_ci95_boot_low"], r[f"{metric}_ci95_boot_high"]),
                             (f"<span class='bad'>{int(n_out)}</span>" if n_out else "0"),
                             " ".join(marks), fmt(r["n_failed"])])
            out.append(f"<h3>{_e(label)} ({_e(unit)})</h3>")
            out.append(_table(["configuration", "n", "mean", "median", "std", "CV", "95 % CI (t)",
                               "95 % CI (bootstrap)", "MAD outliers", "marks", "failed"], rows))
        out.append(_img(figs.get("throughput"), "Throughput per configuration"))
        out.append("<p>Full table: <code>summary.csv</code>; per trial: <code>results.csv</code>, "
                   "<code>results.parquet</code>.</p>")

    # pareto
    out.append('<h2 id="pareto">Pareto fronts</h2>')
    if fronts:
        out.append(_img(figs.get("pareto"), "Pareto fronts (front in blue, dominated in grey)"))
        for x, y in fronts:
            t = pareto_table(summary, x, y)
            rows = []
            for _, r in t.iterrows():
                srow = summary[summary["config_id"] == r["config_id"]].iloc[0]
                dom = summary[summary["config_id"] == r["dominated_by"]]
                rows.append([_e(plots.config_label(srow, axes)), fmt(r[x.column]), fmt(r[y.column]),
                             "<b class='good'>front</b>" if r["on_front"] else _e(r["status"]),
                             _e(plots.config_label(dom.iloc[0], axes)) if len(dom) else ""])
            out.append(f"<h3>{_e(x.label)} vs {_e(y.label)}</h3>")
            out.append(_table(["configuration", _e(x.label), _e(y.label), "status", "dominated by"], rows))
    else:
        out.append("<p>No pair of objectives with values in this study (need at least energy or throughput "
                   "and a latency figure).</p>")

    # outliers
    out.append('<h2 id="outliers">Outliers (MAD rule, flagged, never dropped)</h2>')
    out.append(f"<p>Within each configuration, a trial is an outlier on a metric when its modified z-score "
               f"0.6745&middot;|x &minus; median| / MAD exceeds {MAD_THRESHOLD} (Iglewicz and Hoaglin, 1993), with the MAD "
               f"floored at {MAD_MIN_REL_SCALE * 100:g} % of the median so that closely agreeing repeats do not turn "
               "ordinary noise into outliers. "
               "Outliers stay in every statistic above; they are listed here so you can look at them.</p>")
    outl = trials[trials.get("outlier_metrics", pd.Series(dtype=str)).fillna("") != ""] \
        if "outlier_metrics" in trials else trials.iloc[0:0]
    if len(outl):
        out.append(_table(["trial", "configuration", "repeat", "metrics", "flags"],
                          [[_e(r["trial_id"]), _e(plots.config_label(r, axes)), fmt(r["repeat"]),
                            _e(r["outlier_metrics"].replace(";", ", ")), _e(r.get("flags") or "")]
                           for _, r in outl.iterrows()]))
    else:
        out.append("<p>None.</p>")

    # flags
    out.append('<h2 id="flags">Quality flags</h2>')
    out.append("<h3>Per configuration (from the repeats)</h3>")
    out.append(_config_flags_table(summary, axes))
    out.append("<h3>Per trial (raised by the measurement protocol)</h3>")
    out.append(_flags_table(study_dir, axes, trials))

    # failed
    out.append('<h2 id="failed">Failed trials</h2>')
    failed = trials[trials["status"] != "ok"] if not trials.empty else trials
    if len(failed):
        out.append(_table(["trial", "configuration", "repeat", "kind", "error"],
                          [[_e(r["trial_id"]), _e(plots.config_label(r, axes)), fmt(r["repeat"]),
                            _e(r.get("error_kind")), f"<pre>{_e(r.get('error'))}</pre>"]
                           for _, r in failed.iterrows()]))
    else:
        out.append("<p>None.</p>")

    # devices
    out.append('<h2 id="devices">Energy per device</h2>')
    out.append(_devices_table(study_dir, axes, trials))

    # timelines
    out.append('<h2 id="timelines">Power and temperature timelines</h2>')
    if figs.get("timelines"):
        more = f" (first {max_timelines} shown of {n_timelines})" if n_timelines > max_timelines else ""
        out.append(_img(figs["timelines"], f"Device power and temperature over each measured window{more}"))
        out.append("<p>One figure per trial: <code>plots/timelines/&lt;trial_id&gt;.png</code> and <code>.pdf</code>."
                   "</p>")
    else:
        out.append("<p>No device timeline was recorded (no GPU sampler on this machine, or empty timelines).</p>")

    # environment
    out.append('<h2 id="environment">Environment</h2>')
    out.append(_environment(trials, study_dir, manifest))

    # methodology
    out.append('<h2 id="methodology">Methodology notes</h2>')
    out.append(_methodology(trials, study, prim))

    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>joulebench: {_e(name)}</title><style>{CSS}</style></head><body><main>"
            + "\n".join(out) + "</main></body></html>")


def plots_safe_contrast(c, label: str) -> str:
    from joulebench.analysis.effects import describe_contrast

    return describe_contrast(c, label)


_CONFIG_ADVICE = {
    "high_cv": "Repeats of this configuration vary more than the target; add repeats (repeats.max) or find "
               "the noise source.",
    "throughput_dominated": "J/token spread comes from tokens/s noise (host-bound work), not from power; more "
                            "repeats tighten the mean, a faster host loop removes it.",
    "ci_above_target": "The 95 % CI of the mean is wider than the study's target; more repeats narrow it "
                       "(about as 1/sqrt(n)).",
}


def _advice(code: str) -> str:
    try:  # the protocol's typed flags carry the canonical advice text
        from joulebench.meters.flags import Flag

        return Flag(code).advice
    except (ImportError, ValueError, KeyError):
        return _CONFIG_ADVICE[code]


def _config_flags_table(summary: pd.DataFrame, axes) -> str:
    rows = []
    for _, r in summary.iterrows():
        prim = r.get("primary_metric")
        if r.get("cv_above_target"):
            rows.append([_e(plots.config_label(r, axes)), "<code>high_cv</code>", _e(_advice("high_cv")),
                         _e(f"CV of {prim} = {r.get(f'{prim}_cv', math.nan) * 100:.1f} % > target "
                            f"{r['cv_target'] * 100:.1f} % (n = {r.get(f'{prim}_n')})")])
        if r.get("throughput_dominated"):
            rows.append([_e(plots.config_label(r, axes)), "<code>throughput_dominated</code>",
                         _e(_advice("throughput_dominated")),
                         _e(f"{r['cv_share_throughput'] * 100:.0f} % of the J/token variance comes from tokens/s "
                            f"(CV {r['throughput_tok_s_cv'] * 100:.1f} %) vs power "
                            f"(CV {r['mean_power_w_cv'] * 100:.1f} %)")])
        if r.get("ci_above_target"):
            ci_col = r.get("ci_metric") or prim
            rel = r.get(f"{ci_col}_ci95_rel_halfwidth", math.inf)
            rows.append([_e(plots.config_label(r, axes)), "<code>ci_above_target</code>",
                         _e(_CONFIG_ADVICE["ci_above_target"]),
                         _e(f"CI half-width of {ci_col} {rel * 100:.1f} % of the mean > target "
                            f"{r['ci_target'] * 100:.1f} %"
                            if math.isfinite(rel) else "fewer than 2 finished repeats: no CI")])
    if not rows:
        return "<p>None: every configuration is within its CV and CI targets.</p>"
    return _table(["configuration", "flag", "advice", "detail"], rows)


def _flags_table(study_dir: Path, axes, trials: pd.DataFrame) -> str:
    """One block per flag code: its advice once, how many trials raised it, then every trial with its
    detail (in a native <details> element, so long studies stay readable without a script)."""
    from joulebench.results.table import load_records

    by_id = {r["trial_id"]: r for r in load_records(study_dir)}
    groups: dict[str, dict[str, Any]] = {}
    for _, t in trials.iterrows():
        rec = by_id.get(t["trial_id"], {})
        for f in rec.get("flags") or []:
            if not isinstance(f, dict):
                continue
            g = groups.setdefault(str(f.get("code")), {"advice": f.get("advice"), "rows": []})
            g.setdefault("trials", set()).add(t["trial_id"])
            g["rows"].append([_e(t["trial_id"]), _e(plots.config_label(t, axes)), fmt(t.get("repeat")),
                              _e(f.get("detail") or "")])
    if not groups:
        return "<p>No quality flags were raised.</p>"
    def count(g: dict[str, Any]) -> str:
        n, m = len(g["trials"]), len(g["rows"])
        return f"{n} trial(s)" + (f", raised {m} times" if m != n else "")

    out = [_table(["flag", "trials", "advice"],
                  [[f"<code>{_e(code)}</code>", count(g), _e(g["advice"])]
                   for code, g in sorted(groups.items(), key=lambda kv: -len(kv[1]["rows"]))])]
    for code, g in sorted(groups.items()):
        out.append(f'<details class="flag" id="flag-{_e(code)}"><summary><code>{_e(code)}</code>: '
                   f'{count(g)}</summary>'
                   + _table(["trial", "configuration", "repeat", "detail"], g["rows"]) + "</details>")
    return "\n".join(out)


def _devices_table(study_dir: Path, axes, trials: pd.DataFrame) -> str:
    """Mean energy of each measured device per configuration and its share of the total; visible GPUs
    that the trials did not use are listed apart (their energy is never part of the total)."""
    from joulebench.results.table import load_records

    by_id = {r["trial_id"]: r for r in load_records(study_dir)}
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
                g["total"].append(float(rec.get("energy_j") or 0.0))
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
        rows.append([_e(labels.get(cid, cid)), _e(dev), str(len(g["energy"])), fmt(mean_e), _pct(share)])
    out = [_table(["configuration", "device", "trials", "mean energy J", "share of total"], rows)]
    if unused:
        out.append("<p>Visible GPUs that these trials did not use (metered apart, never summed into the totals):</p>")
        out.append(_table(["configuration", "device", "trials", "mean power W"],
                          [[_e(labels.get(cid, cid)), _e(dev), str(len(v)), fmt(sum(v) / len(v))]
                           for (cid, dev), v in sorted(unused.items())]))
    return "\n".join(out)


def _environment(trials: pd.DataFrame, study_dir: Path, manifest: dict[str, Any]) -> str:
    from joulebench.results.table import load_records

    recs = load_records(study_dir)
    envs = [r.get("environment") or {} for r in recs]
    keys = sorted({k for e in envs for k in e})
    rows = []
    for k in keys:
        vals = {json.dumps(e.get(k), sort_keys=True, default=str) for e in envs if k in e}
        shown = [json.loads(v) for v in sorted(vals)]
        text = "; ".join(v if isinstance(v, str) else json.dumps(v, sort_keys=True) for v in shown)
        if len(text) > 400:
            text = text[:400] + " ..."
        rows.append([f"<code>{_e(k)}</code>", _e(text) + (" <span class='bad'>(differs between trials)</span>"
                                                         if len(vals) > 1 else "")])
    models = {json.dumps(r.get("model") or {}, sort_keys=True, default=str) for r in recs}
    for m in sorted(models):
        if m != "{}":
            rows.append(["<code>model</code>", _e(m)])
    devs = sorted({f"{d.get('name') or d.get('kind')} ({d.get('kind')}, energy source: {d.get('energy_source')})"
                   for r in recs for d in (r.get("devices") or []) if isinstance(d, dict)})
    if devs:
        rows.append(["<code>measured devices</code>", _e("; ".join(devs))])
    for k in ("study_hash", "created_at", "status", "tool_version"):
        if k in manifest:
            rows.append([f"<code>manifest.{_e(k)}</code>", _e(manifest[k])])
    if not rows:
        return "<p>No environment recorded.</p>"
    return _table(["key", "value"], rows)


def _methodology(trials: pd.DataFrame, study: dict[str, Any], prim) -> str:
    sources = sorted({str(s) for s in trials.get("energy_source", pd.Series(dtype=object)).dropna()}) \
        if not trials.empty else []
    dur = pd.to_numeric(trials.get("duration_s"), errors="coerce").dropna() if "duration_s" in trials else pd.Series()
    meas = study.get("measurement") if isinstance(study.get("measurement"), dict) else {}
    items = [
        "<b>Energy</b> comes from the device's cumulative energy counter (NVML "
        "<code>nvmlDeviceGetTotalEnergyConsumption</code>), read at the start and end of each measured window, "
        "per device the trial uses; power samples only draw the timeline. "
        f"Counter sources seen in this study: {_e(', '.join(sources)) if sources else 'none (no meter: energy is null)'}.",
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
        f"({_e(meas.get('min_window_s', 10))} s in this study; 100 counter periods = 10 s on H100 keeps "
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
    return '<ul class="notes">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"
