"""Each quality flag fires when it should and stays silent when it should not."""
from __future__ import annotations

import pandas as pd
import pytest

from joulebench.devices.base import DeviceInfo
from joulebench.meters import DeviceEnergy, Flag, IdleBaseline, QualityFlag, WindowMeasurement, window_flags
from joulebench.meters.flags import power_integral_j

U0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
INFO = DeviceInfo(0, U0, "NVIDIA H100 80GB HBM3", "gpu", power_limit_w=700.0, counter_period_s=0.1)
T0 = 1_800_000_000.0


def window(duration=20.0, energy=4000.0, t_start=40.0, t_end=41.0, source="nvml-counter", flags=()):
    d = DeviceEnergy(INFO, energy, source, t_start, t_end)
    return WindowMeasurement(duration, energy, source, (d,), tuple(flags), T0, T0 + duration)


def timeline(duration=20.0, hz=10.0, power=200.0, throttle=0, drop=None):
    n = int(duration * hz) + 1
    t = [T0 + i / hz for i in range(n)]
    rows = pd.DataFrame({"t_s": t, "device_uuid": U0, "power_w": power, "power_instant_w": power,
                         "throttle_reasons": throttle, "temperature_c": 40.0})
    if drop is not None:
        rows = rows[(rows["t_s"] < T0 + drop[0]) | (rows["t_s"] > T0 + drop[1])]
    return rows


def codes(flags):
    return [f.flag for f in flags]


def test_clean_window_has_no_flags():
    assert window_flags(window(), timeline()) == []


def test_every_flag_has_advice():
    for f in Flag:
        assert f.advice and len(f.advice) > 20 and "\n" not in f.advice
    q = QualityFlag(Flag.THROTTLING, "x")
    assert q.to_dict() == {"code": "throttling", "advice": Flag.THROTTLING.advice, "detail": "x"}


@pytest.mark.parametrize("duration, fires", [(9.9, True), (10.0, False)])
def test_short_window(duration, fires):
    f = window_flags(window(duration=duration, energy=200.0 * duration), None)
    assert (Flag.SHORT_WINDOW in codes(f)) is fires


def test_short_window_uses_given_counter_period():
    assert Flag.SHORT_WINDOW in codes(window_flags(window(duration=20.0), None, counter_period_s=0.5))


@pytest.mark.parametrize("bits, fires", [(0x4, True), (0x20, True), (0x40, True), (0x1, False), (0x0, False)])
def test_throttling_bits(bits, fires):
    tl = timeline()
    tl.loc[tl.index[50:60], "throttle_reasons"] = bits
    f = window_flags(window(), tl)
    assert (Flag.THROTTLING in codes(f)) is fires
    if fires:
        assert "in 10 samples" in f[codes(f).index(Flag.THROTTLING)].detail


def test_throttling_outside_the_window_is_ignored():
    tl = timeline(duration=30.0)
    tl.loc[tl["t_s"] > T0 + 25, "throttle_reasons"] = 0x40
    assert Flag.THROTTLING not in codes(window_flags(window(), tl))


@pytest.mark.parametrize("end_c, fires", [(45.0, False), (45.5, True), (34.0, True)])
def test_temperature_drift(end_c, fires):
    f = window_flags(window(t_start=40.0, t_end=end_c), None, temp_drift_c=5.0)
    assert (Flag.TEMPERATURE_DRIFT in codes(f)) is fires


@pytest.mark.parametrize("mean_w, fires", [(200.0, False), (60.0, False), (40.0, True), (771.0, True), (769.0, False)])
def test_power_out_of_range(mean_w, fires):
    idle = IdleBaseline(72.0, {U0: 72.0}, 10.0, T0)
    f = window_flags(window(energy=mean_w * 20.0), None, device_idle=idle)
    assert (Flag.POWER_OUT_OF_RANGE in codes(f)) is fires


def test_power_limit_override():
    f = window_flags(window(energy=400.0 * 20), None, power_limits_w={U0: 300.0})
    assert Flag.POWER_OUT_OF_RANGE in codes(f)


def test_counter_integral_disagreement_only_on_long_windows():
    # the counter says 200 W but the sampled power says 230 W (15 %)
    long_bad = window_flags(window(duration=40.0, energy=8000.0), timeline(40.0, power=230.0))
    assert Flag.COUNTER_INTEGRAL_DISAGREE in codes(long_bad)
    long_ok = window_flags(window(duration=40.0, energy=8000.0), timeline(40.0, power=204.0))
    assert Flag.COUNTER_INTEGRAL_DISAGREE not in codes(long_ok)
    short = window_flags(window(duration=20.0, energy=4000.0), timeline(20.0, power=230.0))
    assert Flag.COUNTER_INTEGRAL_DISAGREE not in codes(short)


@pytest.mark.parametrize("drop, fires", [(None, False), ((5.0, 5.15), False), ((5.0, 6.0), True), ((19.5, 21), True)])
def test_sampler_gaps(drop, fires):
    f = window_flags(window(), timeline(drop=drop))
    assert (Flag.SAMPLER_GAPS in codes(f)) is fires


def test_window_own_flags_are_not_repeated():
    w = window(source="nvml-power-integral", flags=(QualityFlag(Flag.COUNTER_UNAVAILABLE, "GPU 0"),))
    assert codes(window_flags(w, None)) == []


def test_power_integral_zero_order_hold():
    tl = pd.DataFrame({"t_s": [T0, T0 + 1, T0 + 2], "power_instant_w": [100.0, 300.0, 0.0],
                       "power_w": [1.0, 1.0, 1.0]})
    assert power_integral_j(tl, T0 + 0.5, T0 + 2.0) == pytest.approx(100 * 0.5 + 300 * 1.0)
    assert power_integral_j(tl, T0, T0 + 2, column="power_w") == pytest.approx(2.0)
    assert power_integral_j(tl.iloc[0:0], T0, T0 + 1) is None


def test_flag_accepts_member_names():
    assert Flag("IDLE_BASELINE_DRIFTED") is Flag.IDLE_BASELINE_DRIFTED
    assert Flag("throttling") is Flag.THROTTLING
    with pytest.raises(ValueError):
        Flag("no_such_flag")
