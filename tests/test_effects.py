"""Effects (ANOVA shares, main-effect ratios, headline) against statsmodels on fixed designs."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm

from joulebench.analysis.effects import Contrast, describe_contrast, fit_effects, format_ratio
from joulebench.results.table import load_results

sys.path.insert(0, str(Path(__file__).parent))
from test_table import BATCH_FACTOR, DTYPE_FACTOR, make_study  # noqa: E402

# A fixed 3 x 2 design with 2 repeats, J/token values written out (no randomness).
FIXED = [
    (1, "fp32", 2.10), (1, "fp32", 1.95), (1, "bf16", 1.40), (1, "bf16", 1.48),
    (8, "fp32", 0.41), (8, "fp32", 0.38), (8, "bf16", 0.30), (8, "bf16", 0.27),
    (32, "fp32", 0.15), (32, "fp32", 0.16), (32, "bf16", 0.11), (32, "bf16", 0.095),
]


def fixed_frame(rows=FIXED) -> pd.DataFrame:
    return pd.DataFrame([{"config_id": f"{b}-{d}", "status": "ok", "param.batch_size": b, "param.dtype": d,
                          "param.model": "m", "energy_per_output_token_j": y} for b, d, y in rows])


def reference_anova(df: pd.DataFrame, interaction: bool) -> tuple[pd.DataFrame, float]:
    ref = pd.DataFrame({"y": np.log(df["energy_per_output_token_j"]), "bs": df["param.batch_size"].astype(str),
                        "dt": df["param.dtype"]})
    f = "y ~ C(bs) + C(dt)" + (" + C(bs):C(dt)" if interaction else "")
    aov = anova_lm(smf.ols(f, data=ref).fit(), typ=2)
    return aov, float(((ref["y"] - ref["y"].mean()) ** 2).sum())


def test_eta_squared_equals_statsmodels_type2_anova():
    df = fixed_frame()
    res = fit_effects(df, ["batch_size", "dtype", "model"], axis_levels={"batch_size": [1, 8, 32],
                                                                          "dtype": ["fp32", "bf16"]})
    aov, sst = reference_anova(df, interaction=True)
    axes = res.axes.set_index("axis")
    assert axes.loc["batch_size", "eta_sq"] == pytest.approx(aov.loc["C(bs)", "sum_sq"] / sst, rel=1e-9)
    assert axes.loc["dtype", "eta_sq"] == pytest.approx(aov.loc["C(dt)", "sum_sq"] / sst, rel=1e-9)
    assert axes.loc["batch_size", "F"] == pytest.approx(aov.loc["C(bs)", "F"], rel=1e-9)
    assert axes.loc["dtype", "p_value"] == pytest.approx(aov.loc["C(dt)", "PR(>F)"], rel=1e-6)
    assert list(res.axes["axis"]) == ["batch_size", "dtype"]       # ranked by share
    assert res.constant_axes == ["model"]
    # the design is crossed with 2 repeats: the interaction is estimable and fitted
    inter = res.interactions.set_index("axis")
    assert inter.loc["batch_size x dtype", "eta_sq"] == pytest.approx(aov.loc["C(bs):C(dt)", "sum_sq"] / sst,
                                                                      rel=1e-9)
    assert res.df_resid == 6


def test_main_effect_ratio_and_ci_from_main_effects_model():
    df = fixed_frame()
    res = fit_effects(df, ["batch_size", "dtype"], axis_levels={"batch_size": [1, 8, 32], "dtype": ["fp32", "bf16"]})
    ref = pd.DataFrame({"y": np.log(df["energy_per_output_token_j"]),
                        "bs": pd.Categorical(df["param.batch_size"].astype(str), ["1", "8", "32"]),
                        "dt": pd.Categorical(df["param.dtype"], ["fp32", "bf16"])})
    m = smf.ols("y ~ C(bs) + C(dt)", data=ref).fit()
    ci = m.conf_int(0.05)
    me = res.main_effects.set_index(["axis", "level"])
    row = me.loc[("batch_size", "32")]
    assert row["reference"] == "1"
    assert row["ratio"] == pytest.approx(math.exp(m.params["C(bs)[T.32]"]), rel=1e-9)
    assert row["ratio_ci95_low"] == pytest.approx(math.exp(ci.loc["C(bs)[T.32]", 0]), rel=1e-9)
    assert row["ratio_ci95_high"] == pytest.approx(math.exp(ci.loc["C(bs)[T.32]", 1]), rel=1e-9)
    strongest = res.strongest["batch_size"]
    assert (strongest.level_from, strongest.level_to) == ("1", "32")
    assert res.headline.startswith("batch size explains ")
    assert "going from 1 to 32 cuts J/output-token by" in res.headline


def test_recovers_known_effects_from_study(tmp_path):
    trials = load_results(make_study(tmp_path, repeats=4, outlier=False, noise=0.03, seed=3))
    res = fit_effects(trials, ["batch_size", "dtype"], axis_levels={"batch_size": [1, 4, 16],
                                                                    "dtype": ["float32", "bfloat16"]})
    assert res.energy_available and res.n == 23          # one failed trial left out
    me = res.main_effects.set_index(["axis", "level"])
    true_bs = BATCH_FACTOR[16] / BATCH_FACTOR[1]
    true_dt = DTYPE_FACTOR["bfloat16"] / DTYPE_FACTOR["float32"]
    assert me.loc[("batch_size", "16"), "ratio_ci95_low"] < true_bs < me.loc[("batch_size", "16"), "ratio_ci95_high"]
    assert me.loc[("dtype", "bfloat16"), "ratio_ci95_low"] < true_dt < me.loc[("dtype", "bfloat16"), "ratio_ci95_high"]
    assert res.axes.iloc[0]["axis"] == "batch_size" and res.axes.iloc[0]["eta_sq"] > 0.8


def test_unbalanced_design_matches_statsmodels():
    rows = [r for r in FIXED if not (r[0] == 8 and r[1] == "bf16" and r[2] == 0.27)] + [(32, "bf16", 0.10)]
    df = fixed_frame(rows)
    res = fit_effects(df, ["batch_size", "dtype"])
    aov, sst = reference_anova(df, interaction=True)
    axes = res.axes.set_index("axis")
    assert axes.loc["dtype", "eta_sq"] == pytest.approx(aov.loc["C(dt)", "sum_sq"] / sst, rel=1e-9)
    assert res.n == 12


def test_no_repeats_no_interaction_no_ci_but_shares():
    df = fixed_frame(FIXED[::2])            # one trial per configuration
    res = fit_effects(df, ["batch_size", "dtype"])
    assert res.interactions.empty
    assert any("No interactions fitted" in n for n in res.notes)
    aov, sst = reference_anova(df, interaction=False)
    assert res.axes.set_index("axis").loc["batch_size", "eta_sq"] == pytest.approx(
        aov.loc["C(bs)", "sum_sq"] / sst, rel=1e-9)
    # main-effects model still has 2 residual df here: CIs exist but are wide
    assert res.df_resid == 2 and res.main_effects["ratio_ci95_low"].notna().all()


def test_single_axis_saturated_has_no_ci():
    df = fixed_frame([(1, "fp32", 2.0), (8, "fp32", 0.4), (32, "fp32", 0.15)])
    res = fit_effects(df, ["batch_size", "dtype"])
    assert res.constant_axes == ["dtype"]
    assert res.axes.iloc[0]["eta_sq"] == pytest.approx(1.0)
    assert res.main_effects["ratio_ci95_low"].isna().all()
    assert "no CI" in res.headline
    assert any("No residual degrees of freedom" in n for n in res.notes)


def test_nothing_to_compare():
    res = fit_effects(fixed_frame([(1, "fp32", 2.0), (1, "fp32", 2.1)]), ["batch_size", "dtype"])
    assert res.axes.empty and "Only one configuration" in res.headline
    res = fit_effects(fixed_frame([(1, "fp32", 2.0)]).iloc[0:0], ["batch_size"])
    assert res.n == 0 and "nothing to compare" in res.headline


def test_energy_null_falls_back_to_throughput(tmp_path):
    trials = load_results(make_study(tmp_path, energy=False))
    res = fit_effects(trials, ["batch_size", "dtype"], axis_levels={"batch_size": [1, 4, 16]})
    assert res.response == "throughput_tok_s" and not res.energy_available
    assert res.headline.startswith("No energy meter here, so throughput stands in for energy.")
    assert "raises tokens/s" in res.headline
    assert any("throughput" in n for n in res.notes)


def test_failed_trials_and_nonpositive_values_are_left_out():
    df = fixed_frame()
    df.loc[0, "status"] = "failed"
    df.loc[1, "energy_per_output_token_j"] = 0.0
    res = fit_effects(df, ["batch_size", "dtype"])
    assert res.n == 10


def test_confounded_axes_are_reported():
    rows = [(1, "fp32", 2.0), (1, "fp32", 2.1), (32, "bf16", 0.1), (32, "bf16", 0.11)]
    res = fit_effects(fixed_frame(rows), ["batch_size", "dtype"])
    assert any("confounded" in n for n in res.notes)


def test_describe_contrast_wording():
    c = Contrast("batch_size", "1", "32", 1 / 14, 1 / 16, 1 / 12, 1e-6)
    assert describe_contrast(c, "J/output-token") == "going from 1 to 32 cuts J/output-token by 14x [12x, 16x]"
    up = Contrast("dtype", "bf16", "fp32", 1.3, 0.9, 1.8, 0.2)
    assert describe_contrast(up, "J/output-token").endswith("by 1.30x [0.90x, 1.80x] (the 95 % CI includes no change)")
    assert format_ratio(3.14159) == "3.14x" and format_ratio(9.999) == "10x" and format_ratio(float("nan")) == "?"


def test_null_level_and_float_coded_ints_are_levels():
    rows = []
    for q, f in ((None, 1.0), ("awq", 0.6)):
        for bs, g in ((1.0, 1.0), (4.0, 0.3)):        # batch sizes as floats, as pandas makes them next to NaN
            for y in (0.98, 1.02):
                rows.append({"config_id": f"{q}-{bs}", "status": "ok", "param.quantization": q,
                             "param.batch_size": bs, "energy_per_output_token_j": 2.0 * f * g * y})
    res = fit_effects(pd.DataFrame(rows), ["quantization", "batch_size"],
                      axis_levels={"quantization": [None, "awq"], "batch_size": [1, 4]})
    assert res.n == 8
    me = res.main_effects.set_index(["axis", "level"])
    assert me.loc[("quantization", "awq"), "reference"] == "None"
    assert me.loc[("quantization", "awq"), "ratio"] == pytest.approx(0.6, rel=1e-6)
    assert me.loc[("batch_size", "4"), "reference"] == "1"


def test_units_do_not_change_the_answer():
    """log(k * y) = log k + log y: J or mJ per token gives the same shares and ratios."""
    df = fixed_frame()
    a = fit_effects(df, ["batch_size", "dtype"])
    df2 = df.assign(energy_per_output_token_j=df["energy_per_output_token_j"] * 1000.0)
    b = fit_effects(df2, ["batch_size", "dtype"])
    assert np.allclose(a.axes["eta_sq"], b.axes["eta_sq"])
    assert np.allclose(a.main_effects["ratio"], b.main_effects["ratio"])
    assert a.headline == b.headline
