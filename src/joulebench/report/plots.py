"""Figures of a study (matplotlib, Agg backend), each saved as PNG and PDF under ``plots/``.

Every function takes tables (pandas) and an output stem, draws one figure, saves
``<stem>.png`` and ``<stem>.pdf`` and returns the PNG path, or None when there is
nothing to draw. No statistics are computed here beyond what a figure needs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from joulebench.analysis.pareto import Objective, pareto_table  # noqa: E402
from joulebench.analysis.stats import METRIC_INFO  # noqa: E402

DPI = 110
MAX_BARS = 40          # configurations one per-configuration figure shows
_FRONT = "#1f6fb4"
_DOMINATED = "#a0a0a0"
_OUTLIER = "#d62728"


_plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
_plain_minor = matplotlib.ticker.FuncFormatter(
    lambda v, _: f"{v:g}" if f"{v:.1e}"[0] in "25" else "")   # label 2x and 5x minor ticks only


def _save(fig, stem: Path) -> Path:
    stem.parent.mkdir(parents=True, exist_ok=True)
    png = stem.with_suffix(".png")
    # the tight box once (one layout pass), for both files: what bbox_inches="tight" computes per save
    bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)
    fig.savefig(png, dpi=DPI, bbox_inches=bbox)
    fig.savefig(stem.with_suffix(".pdf"), bbox_inches=bbox)
    plt.close(fig)
    return png


def config_label(row: pd.Series, axes: Sequence[str], short: bool = False) -> str:
    """"batch_size=4, dtype=bf16" (or "4/bf16" when short); the config id when there are no axes."""
    if short:
        parts = [str(row.get(f"param.{a}")) for a in axes if f"param.{a}" in row.index]
        return "/".join(parts) if parts else str(row.get("config_id"))[:10]
    parts = [f"{a}={row.get(f'param.{a}')}" for a in axes if f"param.{a}" in row.index]
    return ", ".join(parts) if parts else str(row.get("config_id"))


def plot_metric_per_config(summary: pd.DataFrame, trials: pd.DataFrame, metric: str, axes: Sequence[str],
                           stem: Path) -> Path | None:
    """Horizontal bars: mean per configuration with its 95 % t-CI, the trials as dots, outliers red."""
    mean_col = f"{metric}_mean"
    if mean_col not in summary or pd.to_numeric(summary[mean_col], errors="coerce").notna().sum() == 0:
        return None
    s = summary[pd.to_numeric(summary[mean_col], errors="coerce").notna()].copy()
    higher = METRIC_INFO.get(metric, (metric, metric, "", False))[3]
    s = s.sort_values(mean_col, ascending=higher)
    n_all = len(s)
    if n_all > MAX_BARS:     # a readable figure: the worst and the best configurations (summary.csv has all)
        s = pd.concat([s.head(MAX_BARS // 2), s.tail(MAX_BARS // 2)])
    _, label, unit, _ = METRIC_INFO.get(metric, (metric, metric, "", False))
    labels = [config_label(r, axes) for _, r in s.iterrows()]
    y = np.arange(len(s))
    mean = s[mean_col].to_numpy(float)
    lo = s[f"{metric}_ci95_t_low"].to_numpy(float)
    hi = s[f"{metric}_ci95_t_high"].to_numpy(float)
    err = np.vstack([np.where(np.isfinite(lo), mean - lo, 0), np.where(np.isfinite(hi), hi - mean, 0)])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(s) + 1.4))
    ax.barh(y, mean, xerr=err, color="#9ecae1", edgecolor=_FRONT, capsize=3, label="mean, 95 % CI (t)")
    ok = trials[trials["status"] == "ok"] if "status" in trials else trials
    out_col = f"outlier_{metric}"
    by_config = dict(tuple(ok.groupby("config_id", sort=False))) if len(ok) else {}
    xs, ys, outs = [], [], []                   # every trial as one scatter (two artists, not two per bar)
    for yi, cid in zip(y, s["config_id"]):
        g = by_config.get(cid, ok.iloc[0:0])
        vals = pd.to_numeric(g.get(metric), errors="coerce").to_numpy(float)
        is_out = g[out_col].to_numpy(bool) if out_col in g else np.zeros(len(g), bool)
        jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else np.zeros(len(vals))
        xs.append(vals)
        ys.append(yi + jitter)
        outs.append(is_out)
    if xs:
        xv, yv, ov = np.concatenate(xs), np.concatenate(ys), np.concatenate(outs)
        ax.scatter(xv[~ov], yv[~ov], s=12, color="black", zorder=3)
        if ov.any():
            ax.scatter(xv[ov], yv[ov], s=30, color=_OUTLIER, marker="x", zorder=4)
    ax.scatter([], [], s=12, color="black", label="trials")
    ax.scatter([], [], s=30, color=_OUTLIER, marker="x", label="MAD outlier (kept)")
    ax.set_yticks(y, labels, fontsize=8)
    if np.nanmin(mean) >= 0:
        ax.set_xlim(left=0)
    ax.set_xlabel(f"{label} ({unit})")
    ax.set_title(f"{label} per configuration" + (f" (the {MAX_BARS // 2} best and {MAX_BARS // 2} worst of {n_all})"
                                                 if n_all > MAX_BARS else ""))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / max(len(s), 1)), ncol=3,
              frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, stem)


def plot_main_effects(main_effects: pd.DataFrame, levels: dict[str, list[str]], label: str,
                      stem: Path) -> Path | None:
    """One panel per axis: the model's ratio of each level to the axis's first level (other axes held
    fixed, 95 % CI), on a log scale; the reference level sits at 1. ``main_effects`` is
    ``EffectsResult.main_effects``."""
    if main_effects is None or main_effects.empty:
        return None
    axes = [a for a in levels if len(levels[a]) > 1 and (main_effects["axis"] == a).any()]
    if not axes:
        return None
    fig, axs = plt.subplots(1, len(axes), figsize=(3.2 * len(axes) + 0.8, 3.3), sharey=True, squeeze=False)
    for ax, a in zip(axs[0], axes):
        me = main_effects[main_effects["axis"] == a].set_index("level")
        r, lo, hi = [1.0], [1.0], [1.0]
        for lv in levels[a][1:]:
            row = me.loc[lv] if lv in me.index else None
            r.append(float(row["ratio"]) if row is not None else math.nan)
            lo.append(float(row["ratio_ci95_low"]) if row is not None else math.nan)
            hi.append(float(row["ratio_ci95_high"]) if row is not None else math.nan)
        x = np.arange(len(levels[a]))
        r_a, lo_a, hi_a = np.array(r), np.array(lo), np.array(hi)
        err = np.vstack([np.nan_to_num(r_a - lo_a), np.nan_to_num(hi_a - r_a)])
        ax.axhline(1.0, color=_DOMINATED, lw=0.8, ls="--")
        ax.errorbar(x, r_a, yerr=err, marker="o", color=_FRONT, capsize=4)
        ax.set_xticks(x, levels[a], rotation=30 if max(len(s) for s in levels[a]) > 6 else 0, fontsize=8)
        ax.set_xlabel(a)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_plain)
        ax.yaxis.set_minor_formatter(_plain_minor)
        ax.grid(alpha=0.3, which="both")
    axs[0][0].set_ylabel(f"{label}, ratio to first level")
    fig.suptitle(f"Main effects on {label} (other axes held fixed, 95 % CI)", fontsize=10)
    fig.tight_layout()
    return _save(fig, stem)


def plot_pareto(summary: pd.DataFrame, fronts: list[tuple[Objective, Objective]], axes: Sequence[str],
                stem: Path) -> Path | None:
    """One panel per front: configurations on the front in colour and joined, dominated ones grey."""
    if not fronts:
        return None
    fig, axs = plt.subplots(1, len(fronts), figsize=(4.3 * len(fronts), 3.8), squeeze=False)
    for ax, (x, y) in zip(axs[0], fronts):
        t = pareto_table(summary, x, y)
        dom = t[t["status"] == "dominated"]
        front = t[t["on_front"]].sort_values(x.column)
        ax.scatter(dom[x.column], dom[y.column], color=_DOMINATED, label="dominated", zorder=2)
        ax.plot(front[x.column], front[y.column], "-o", color=_FRONT, label="Pareto front", zorder=3)
        for _, r in front.iterrows():
            row = summary[summary["config_id"] == r["config_id"]].iloc[0]
            ax.annotate(config_label(row, axes, short=True), (r[x.column], r[y.column]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"{x.label} ({'lower' if x.sense == 'min' else 'higher'} is better)", fontsize=8)
        ax.set_ylabel(f"{y.label} ({'lower' if y.sense == 'min' else 'higher'} is better)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title=" / ".join(axes) if axes else None, title_fontsize=7)
    fig.tight_layout()
    return _save(fig, stem)


def read_timeline(path: Path) -> pd.DataFrame | None:
    """A trial's sampler timeline, or None when absent, empty or unreadable."""
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError, ImportError):
        return None
    if df.empty or "t_s" not in df:
        return None
    return df


def plot_timelines(timelines: list[tuple[str, pd.DataFrame]], stem: Path, max_panels: int = 12) -> Path | None:
    """Power (W, left axis) and temperature (deg C, right axis) per trial, one panel each, per device."""
    timelines = [(tid, df) for tid, df in timelines if df is not None and not df.empty][:max_panels]
    if not timelines:
        return None
    cols = 2 if len(timelines) > 1 else 1
    rows = math.ceil(len(timelines) / cols)
    fig, axs = plt.subplots(rows, cols, figsize=(6.2 * cols, 2.5 * rows), squeeze=False)
    for ax, (tid, df) in zip(axs.flat, timelines):
        t0 = float(df["t_s"].min())
        groups = df.groupby("device_uuid", sort=False) if "device_uuid" in df else [("", df)]
        ax2 = ax.twinx() if "temperature_c" in df else None
        for dev, g in groups:
            t = g["t_s"].to_numpy(float) - t0
            tag = f" {str(dev)[:12]}" if dev else ""
            if "power_w" in g:
                ax.plot(t, g["power_w"], color=_FRONT, lw=1, label=f"power{tag}")
            if "power_instant_w" in g and g["power_instant_w"].notna().any():
                ax.plot(t, g["power_instant_w"], color="#6baed6", lw=0.6, alpha=0.7, label=f"instant power{tag}")
            if ax2 is not None:
                ax2.plot(t, g["temperature_c"], color="#e6550d", lw=1, label=f"temperature{tag}")
        if ax2 is not None:   # 1 degree C steps must not look like swings: show at least a 5 degree C span
            lo, hi = ax2.get_ylim()
            if hi - lo < 5:
                mid = (hi + lo) / 2
                ax2.set_ylim(mid - 2.5, mid + 2.5)
        if ax is axs.flat[0]:
            handles = ax.get_legend_handles_labels()[0] + (ax2.get_legend_handles_labels()[0] if ax2 else [])
            ax.legend(handles=handles, fontsize=6, loc="upper left")
        ax.set_title(tid, fontsize=8)
        ax.set_xlabel("time in window (s)", fontsize=8)
        ax.set_ylabel("power (W)", fontsize=8, color=_FRONT)
        if ax2 is not None:
            ax2.set_ylabel("temperature (\N{DEGREE SIGN}C)", fontsize=8, color="#e6550d")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axs.flat)[len(timelines):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, stem)
