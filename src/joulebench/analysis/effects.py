"""Which sweep axis matters most: ANOVA on log(J/output-token) and main effects as ratios.

Model (pure functions, statsmodels OLS):

    log(y) = mu + sum_axis effect(axis level) [+ two-way interactions] + error

with every axis treated as categorical (a numeric axis such as batch size gets one
effect per level, no linearity assumed). ``y`` is J/output-token; on machines
without an energy meter (energy fields null) it is output tokens/s, and the
result says so. Working on the log scale turns multiplicative effects ("batch 32
costs 14x less per token") into additive ones and makes the spread comparable
between cheap and expensive configurations.

* Variance shares: type II sums of squares (the definition of ``statsmodels.stats.anova.anova_lm(typ=2)``,
  Langsrud 2003, "ANOVA for unbalanced data: Use Type II instead of Type III sums of
  squares"), reported as eta-squared = SS_axis / SS_total (share of the total variance
  of log y) and partial eta-squared = SS_axis / (SS_axis + SS_residual). In unbalanced
  designs type II shares need not add up to R^2.
* Axes with a single level in the data are reported as constant and left out of the fit.
* Two-way interactions are added, strongest main effects first, only while the design
  keeps full rank and at least 2 residual degrees of freedom (i.e. the cells are
  crossed and there are repeats to separate interaction from noise).
* Main effects: from the main-effects-only model, level b versus level a of an axis is
  exp(beta_b - beta_a), a ratio of geometric means holding the other axes fixed, with a
  95 % CI from the t distribution on the residual degrees of freedom (no CI without
  residual degrees of freedom, i.e. without repeats).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st

from joulebench.analysis.stats import PrimaryMetric, primary_metric


@dataclass
class Contrast:
    axis: str
    level_from: str
    level_to: str
    ratio: float            # y(level_to) / y(level_from), geometric means, other axes fixed
    ratio_low: float
    ratio_high: float
    p_value: float


@dataclass
class EffectsResult:
    response: str                     # column of the trial table
    label: str                        # e.g. "J/output-token"
    energy_available: bool
    higher_is_better: bool
    n: int                            # finished trials used
    n_configs: int
    r_squared: float = math.nan
    df_resid: float = math.nan
    axes: pd.DataFrame = field(default_factory=pd.DataFrame)          # one row per varying axis, ranked
    interactions: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per interaction term
    main_effects: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (axis, level) vs reference
    strongest: dict[str, Contrast] = field(default_factory=dict)      # per axis: its largest contrast
    constant_axes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    headline: str = ""


def _sort_levels(values: Sequence[Any]) -> list[Any]:
    vals = list(dict.fromkeys(values))
    try:
        return sorted(vals, key=lambda v: float(v))
    except (TypeError, ValueError):
        return sorted(vals, key=str)


def level_str(v: Any) -> str:
    """A level as text; 4.0 (an int column that pandas made float) reads as 4, like the plan's 4;
    None and nan (an axis such as ``quantization: [null, awq]``) read as "None"."""
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return "None"
    if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (np.integer,)):
        return str(int(v))
    return str(v)


def level_order(trials: pd.DataFrame, axis: str, plan_levels: Sequence[Any] | None = None) -> list[str]:
    """Levels of an axis present in ``trials``, as text, in the plan's order (else sorted)."""
    col = trials[f"param.{axis}"]
    present = [level_str(v) for v in col]
    ordered = [level_str(v) for v in plan_levels] if plan_levels else \
        [level_str(v) for v in _sort_levels([v for v in col if level_str(v) != "None"])] + ["None"]
    out = [lv for lv in dict.fromkeys(ordered) if lv in set(present)]
    out += [lv for lv in dict.fromkeys(present) if lv not in out]
    return out


def format_ratio(r: float) -> str:
    """14x, 3.20x, 1.37x: whole numbers from 10x up, two decimals below."""
    if not math.isfinite(r):
        return "?"
    return f"{r:.0f}x" if r >= 9.995 else f"{r:.2f}x"


def describe_contrast(c: Contrast, label: str) -> str:
    """'going from 1 to 32 cuts J/output-token by 14x [12x, 16x]'."""
    r, lo, hi = c.ratio, c.ratio_low, c.ratio_high
    if r < 1:
        verb, f, flo, fhi = "cuts", 1 / r, (1 / hi if hi > 0 else math.nan), (1 / lo if lo > 0 else math.nan)
    else:
        verb, f, flo, fhi = "raises", r, lo, hi
    if math.isfinite(flo) and math.isfinite(fhi):
        ci = f" [{format_ratio(flo)}, {format_ratio(fhi)}]"
        if lo < 1 < hi:
            ci += " (the 95 % CI includes no change)"
    else:
        ci = " (no CI: no repeats)"
    return f"going from {c.level_from} to {c.level_to} {verb} {label} by {format_ratio(f)}{ci}"


def fit_effects(trials: pd.DataFrame, axes: Sequence[str] | None = None, *,
                axis_levels: dict[str, Sequence[Any]] | None = None,
                response: PrimaryMetric | None = None, confidence: float = 0.95,
                interactions: bool = True) -> EffectsResult:
    """Fit log(response) on the sweep axes; see the module docstring for the method."""
    import statsmodels.formula.api as smf

    prim = response or primary_metric(trials)
    res, ok = _usable_trials(trials, prim)
    if axes is None:
        axes = [c[len("param."):] for c in ok.columns if c.startswith("param.")
                and len({level_str(v) for v in ok[c]}) > 1]
    axes = [a for a in axes if f"param.{a}" in ok.columns]
    axis_levels = axis_levels or {}
    levels = {a: level_order(ok, a, axis_levels.get(a)) for a in axes} if len(ok) else {}
    varying = [a for a in axes if len(levels.get(a, [])) > 1]
    res.constant_axes = [a for a in axes if a not in varying]
    if res.n < 2 or not varying:
        res.headline = _headline_nothing(res, varying)
        return res

    names = {a: f"x{i}" for i, a in enumerate(varying)}
    d = pd.DataFrame({"y": np.log(pd.to_numeric(ok[prim.column]).to_numpy(dtype=float))})
    for a in varying:
        d[names[a]] = pd.Categorical([level_str(v) for v in ok[f"param.{a}"]], categories=levels[a])
    main_terms = [f"C({names[a]})" for a in varying]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main = smf.ols("y ~ " + " + ".join(main_terms), data=d).fit()
    if main.model.rank < main.model.exog.shape[1]:
        res.notes.append("Some axes are confounded in the finished trials (their levels always change "
                         "together or cells are missing); their separate effects are not identifiable.")
    ss_total = float(((d["y"] - d["y"].mean()) ** 2).sum())
    chosen, final = _choose_interactions(d, main, main_terms, varying, names, res.n) if \
        interactions and len(varying) > 1 else ([], main)
    res.r_squared = float(final.rsquared) if ss_total > 0 else math.nan
    res.df_resid = float(final.df_resid)
    _variance_tables(res, d, main_terms, chosen, varying, names, levels, ss_total)
    _main_effect_ratios(res, main, d, varying, names, levels, confidence)
    if main.df_resid <= 0:
        res.notes.append("No residual degrees of freedom (one trial per configuration and a saturated "
                         "design): variance shares are shown but have no F-test, and effects have no CI.")
    res.headline = _headline(res)
    return res


def _usable_trials(trials: pd.DataFrame, prim: PrimaryMetric) -> tuple[EffectsResult, pd.DataFrame]:
    """The finished trials with a positive, finite response, and the (empty) result they start."""
    label = "J/output-token" if prim.column == "energy_per_output_token_j" else \
        ("tokens/s" if prim.column == "throughput_tok_s" else prim.column)
    ok = trials[(trials["status"] == "ok")] if "status" in trials else trials
    y = pd.to_numeric(ok.get(prim.column), errors="coerce") if prim.column in ok else pd.Series(dtype=float)
    ok = ok[(y > 0) & np.isfinite(y)] if len(y) else ok.iloc[0:0]
    res = EffectsResult(response=prim.column, label=label, energy_available=prim.energy_available,
                        higher_is_better=prim.higher_is_better, n=int(len(ok)),
                        n_configs=int(ok["config_id"].nunique()) if "config_id" in ok and len(ok) else 0)
    if not prim.energy_available:
        res.notes.append("No energy meter was available (energy fields are null): effects are computed on "
                         "throughput (output tokens/s) instead of J/output-token.")
    return res, ok


def _choose_interactions(d: pd.DataFrame, main, main_terms: list[str], varying: list[str],
                         names: dict[str, str], n: int) -> tuple[list[tuple[str, str]], Any]:
    """Interactions, strongest main effects first, while the design allows them; and the final fit."""
    import statsmodels.formula.api as smf

    chosen: list[tuple[str, str]] = []
    final = main
    main_ss = type2_table(d, main_terms, [])
    order = sorted(varying, key=lambda a: -main_ss[f"C({names[a]})"]["sum_sq"])
    for a, b in combinations(order, 2):
        terms = main_terms + [f"C({names[p]}):C({names[q]})" for p, q in chosen + [(a, b)]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cand = smf.ols("y ~ " + " + ".join(terms), data=d).fit()
        k = cand.model.exog.shape[1]
        if cand.model.rank == k and n - k >= 2:
            chosen.append((a, b))
            final = cand
    return chosen, final


def _variance_tables(res: EffectsResult, d: pd.DataFrame, main_terms: list[str], chosen: list[tuple[str, str]],
                     varying: list[str], names: dict[str, str], levels: dict[str, list[str]],
                     ss_total: float) -> None:
    """The axes' and interactions' shares of the variance (Type II), into ``res``."""
    inter_terms = [f"C({names[p]}):C({names[q]})" for p, q in chosen]
    aov = type2_table(d, main_terms, inter_terms)
    rows = []
    for a in varying:
        rows.append(_term_row(a, aov[f"C({names[a]})"], ss_total, n_levels=len(levels[a]),
                              levels=", ".join(levels[a])))
    res.axes = pd.DataFrame(rows).sort_values("eta_sq", ascending=False, na_position="last",
                                              ignore_index=True)
    irows = []
    for (a, b), term in zip(chosen, inter_terms):
        irows.append(_term_row(f"{a} x {b}", aov[term], ss_total))
    res.interactions = pd.DataFrame(irows)
    if len(varying) > 1 and not chosen:
        res.notes.append("No interactions fitted: the design has no residual degrees of freedom for them "
                         "(add repeats or complete the crossing of the axes).")


def _main_effect_ratios(res: EffectsResult, main, d: pd.DataFrame, varying: list[str], names: dict[str, str],
                        levels: dict[str, list[str]], confidence: float) -> None:
    """Main effects as ratios, from the main-effects model, into ``res`` (with each axis's strongest)."""
    tcrit = float(_st.t.ppf(0.5 + confidence / 2, main.df_resid)) if main.df_resid > 0 else math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params, cov = main.params, main.cov_params()
    me_rows = []
    for a in varying:
        coef = {lv: (f"C({names[a]})[T.{lv}]" if i else None) for i, lv in enumerate(levels[a])}
        best: Contrast | None = None
        for i, lv_from in enumerate(levels[a]):
            for lv_to in levels[a][i + 1:]:
                c = _contrast(a, lv_from, lv_to, coef, params, cov, tcrit, main.df_resid)
                if i == 0:
                    me_rows.append({"axis": a, "reference": lv_from, "level": lv_to, "ratio": c.ratio,
                                    "ratio_ci95_low": c.ratio_low, "ratio_ci95_high": c.ratio_high,
                                    "p_value": c.p_value,
                                    "n": int((d[names[a]] == lv_to).sum())})
                if best is None or abs(math.log(c.ratio)) > abs(math.log(best.ratio)):
                    best = c
        if best is not None:
            res.strongest[a] = best
    res.main_effects = pd.DataFrame(me_rows)


def type2_table(d: pd.DataFrame, main_terms: list[str], inter_terms: list[str]) -> dict[str, dict[str, float]]:
    """Type II sums of squares by residual-sum-of-squares differences (same definition as
    ``anova_lm(typ=2)``, which it matches; computed directly so saturated designs still get
    their sums of squares): SS(T) = RSS(model without T and without the interactions that
    contain T) - RSS(that model plus T). F and p use the full model's residual mean square,
    and are nan without residual degrees of freedom."""
    import statsmodels.formula.api as smf

    def fit(terms: list[str]):
        formula = "y ~ " + (" + ".join(terms) if terms else "1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return smf.ols(formula, data=d).fit()

    full = fit(main_terms + inter_terms)
    rss_full, df_resid = float(full.ssr), float(full.df_resid)
    out: dict[str, dict[str, float]] = {}
    for term in main_terms + inter_terms:
        factors = set(term.split(":"))
        if ":" in term:
            reduced_terms = [t for t in main_terms + inter_terms if t != term]
        else:
            reduced_terms = [t for t in main_terms + inter_terms if t != term and not factors & set(t.split(":"))]
        with_terms = reduced_terms + [term]
        reduced, withm = fit(reduced_terms), fit(with_terms)
        ss = max(float(reduced.ssr) - float(withm.ssr), 0.0)
        df_t = float(withm.model.rank - reduced.model.rank)
        if df_resid > 0 and rss_full > 0 and df_t > 0:
            F = (ss / df_t) / (rss_full / df_resid)
            p = float(_st.f.sf(F, df_t, df_resid))
        else:
            F = p = math.nan
        out[term] = {"sum_sq": ss, "df": df_t, "F": F, "p_value": p, "ss_resid": rss_full}
    return out


def _term_row(name: str, t: dict[str, float], ss_total: float, **extra) -> dict:
    ss, ss_resid = t["sum_sq"], t["ss_resid"]
    return {"axis": name, **extra, "df": t["df"], "sum_sq": ss,
            "eta_sq": ss / ss_total if ss_total > 0 else math.nan,
            "partial_eta_sq": ss / (ss + ss_resid) if (ss + ss_resid) > 0 else math.nan,
            "F": t["F"], "p_value": t["p_value"]}


def _contrast(axis, lv_from, lv_to, coef, params, cov, tcrit, df_resid) -> Contrast:
    vec = pd.Series(0.0, index=params.index)
    if coef[lv_to] in vec.index:
        vec[coef[lv_to]] += 1.0
    if coef[lv_from] is not None and coef[lv_from] in vec.index:
        vec[coef[lv_from]] -= 1.0
    with np.errstate(all="ignore"):
        est = float(vec.to_numpy() @ params.to_numpy())
        var = float(vec.to_numpy() @ cov.to_numpy() @ vec.to_numpy())
    se = math.sqrt(var) if var > 0 and math.isfinite(var) else math.nan
    if math.isfinite(se) and math.isfinite(tcrit) and se > 0:
        lo, hi = math.exp(est - tcrit * se), math.exp(est + tcrit * se)
        p = float(2 * _st.t.sf(abs(est / se), df_resid))
    else:
        lo = hi = p = math.nan
    return Contrast(axis, lv_from, lv_to, math.exp(est), lo, hi, p)


def _headline_nothing(res: EffectsResult, varying: list[str]) -> str:
    metric = "J/output-token" if res.energy_available else "throughput"
    why = "" if res.energy_available else " (no energy meter here, so throughput stands in)"
    if res.n == 0:
        return f"No finished trial has a positive {metric} value{why}: nothing to compare."
    if not varying:
        return (f"Only one configuration finished ({res.n} trial(s)); the sweep axes need at least two "
                f"levels in finished trials to compare {metric}{why}.")
    return f"Too few finished trials ({res.n}) to compare {metric}{why}."


def _headline(res: EffectsResult) -> str:
    if res.axes.empty:
        return _headline_nothing(res, [])
    top = res.axes.iloc[0]
    a = str(top["axis"]).replace("_", " ")
    what = f"log {res.label}"
    parts = []
    if not res.energy_available:
        parts.append("No energy meter here, so throughput stands in for energy.")
    eta = top["eta_sq"]
    lead = f"{a} explains {eta * 100:.0f} % of the variance in {what}" if math.isfinite(eta) else \
        f"{a} has the largest effect on {what}"
    if top["axis"] in res.strongest:
        lead += "; " + describe_contrast(res.strongest[top["axis"]], res.label)
    parts.append(lead + ".")
    if len(res.axes) > 1:
        sec = res.axes.iloc[1]
        b = str(sec["axis"]).replace("_", " ")
        s = f"Next: {b} ({sec['eta_sq'] * 100:.0f} %)" if math.isfinite(sec["eta_sq"]) else f"Next: {b}"
        if sec["axis"] in res.strongest:
            s += ", " + describe_contrast(res.strongest[sec["axis"]], res.label)
        parts.append(s + ".")
    if not res.interactions.empty:
        top_i = res.interactions.sort_values("eta_sq", ascending=False).iloc[0]
        p = top_i["p_value"]
        if math.isfinite(top_i["eta_sq"]) and top_i["eta_sq"] >= 0.05 and (not math.isfinite(p) or p < 0.05):
            parts.append(f"The {top_i['axis']} interaction explains {top_i['eta_sq'] * 100:.0f} %: the effect of one "
                         "depends on the other.")
    return " ".join(parts)
