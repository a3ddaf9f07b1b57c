"""Warm-up convergence, the thermal gate (fake clock) and pre-flight with foreign processes."""
from __future__ import annotations

import json
import os

import pytest

from joulebench.devices import resolve_gpus
from joulebench.testing.fake_nvml import FakeClock, FakeNVML
from joulebench.errors import DeviceError
from joulebench.meters import Flag, preflight, preflight_flags, thermal_gate, warmup_converged, warmup_state
from joulebench.meters.warmup import warmup_step

U0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
U1 = "GPU-bbbbbbbb-0000-0000-0000-000000000000"


# ---- warm-up ----
def test_warmup_converges_on_stable_last_k():
    ok, cv = warmup_converged([50, 80, 100, 101, 99], k=3, cv_target=0.02)
    assert ok and cv == pytest.approx(0.01)


def test_warmup_not_converged_while_rising():
    ok, cv = warmup_converged([50, 80, 100], k=3, cv_target=0.02)
    assert not ok and cv > 0.3


def test_warmup_needs_k_passes():
    assert warmup_converged([100, 100], k=3) == (False, None)
    with pytest.raises(ValueError):
        warmup_converged([1, 2, 3], k=1)


def test_warmup_threshold_is_strict():
    ok, cv = warmup_converged([100, 102, 104], k=3, cv_target=0.02)
    assert cv == pytest.approx(0.0196, abs=1e-4) and ok
    assert not warmup_converged([100, 102, 104], k=3, cv_target=0.019)[0]


def test_warmup_plateau_stops_on_noise_around_a_level_that_stopped_moving():
    # +-8 % pass-to-pass noise around 100 tok/s: the CV rule (2 %) never passes, the level is flat
    noisy = [92, 108, 100, 93, 107, 101]
    assert not warmup_converged(noisy, k=3, cv_target=0.02)[0]
    st = warmup_state(noisy, k=3, cv_target=0.02)
    assert st.converged and st.how == "plateau" and st.cv > 0.05
    assert not warmup_state(noisy, k=3, cv_target=0.02, plateau=False).converged
    assert not warmup_state(noisy[:5], k=3, cv_target=0.02).converged          # needs 2k passes


def test_warmup_plateau_does_not_hide_a_warming_trend():
    rising = [60, 70, 80, 95, 100, 105]              # still climbing, beyond its own noise
    st = warmup_state(rising, k=3, cv_target=0.02)
    assert not st.converged and st.how is None
    first_call_slow = [20, 98, 101, 99, 102, 100]    # a slow first call in the earlier block
    assert warmup_state(first_call_slow, k=3, cv_target=0.02).how == "cv"   # the last k are tight already
    assert not warmup_state([20, 60, 101, 99, 102, 100][:6], k=3, cv_target=0.005, plateau=True).converged


def test_warmup_state_prefers_the_cv_rule():
    st = warmup_state([50, 80, 100, 101, 99], k=3, cv_target=0.02)
    assert st.converged and st.how == "cv" and st.cv == pytest.approx(0.01)


def test_warmup_step_rules_in_a_long_lived_worker():
    kw = dict(k=3, cv_target=0.02, min_passes=2)
    # a fresh configuration: at least k passes, then cv or plateau
    assert not warmup_step([100, 101], **kw).converged
    assert warmup_step([100, 101, 100.5], **kw).how == "cv"
    # noisy host, but the worker knows its steady-state pass CV (10 %): a new configuration whose last k
    # passes (after a slow first pass with new shapes) vary no more than that is warm after k + 1 passes
    noisy = [40, 95, 105, 100]
    assert not warmup_step(noisy, **kw).converged                                # cv/plateau alone: not yet
    st = warmup_step(noisy, noise_floor_cv=0.10, **kw)
    assert st.converged and st.how == "noise-floor" and st.cv <= 0.10
    assert not warmup_step([40, 95, 105], noise_floor_cv=0.10, **kw).converged   # the slow pass is in the last k
    assert not warmup_step([70, 85, 100, 115], noise_floor_cv=0.10, **kw).converged   # still climbing
    # a repeat of a configuration warmed to stability in an earlier round: the switch back costs one pass
    st = warmup_step([98], history=[100, 101, 99], warmed_before=True, **kw)
    assert st.converged and st.how == "earlier" and st.cv == pytest.approx(0.0125, abs=1e-3)
    assert not warmup_step([], history=[100], warmed_before=True, rewarm_passes=1, **kw).converged
    assert warmup_step([98, 99], history=[100], warmed_before=True, rewarm_passes=2, **kw).converged
    # ... unless that pass lands away from the earlier ones: then an ordinary warm-up, old passes included
    assert warmup_step([104], history=[90, 110, 100], warmed_before=True, **kw).how == "earlier"  # inside 2 sd
    assert not warmup_step([70], history=[100, 101, 99], warmed_before=True, **kw).converged
    st = warmup_step([70, 100.2], history=[100, 101, 99], warmed_before=True, **kw)   # the next pass is back
    assert st.converged and st.how == "earlier"
    # history that never stabilised keeps being tested, new passes included
    assert warmup_step([100.2, 100.1], history=[60, 80, 100], **kw).how == "cv"
    assert not warmup_step([100.2], history=[60, 80, 100], min_passes=2, k=3).converged


def test_rewarm_check_holds_a_skipped_rewarm_to_the_earlier_windows():
    from joulebench.meters.warmup import rewarm_check

    earlier = [1000.0, 1010.0, 990.0]
    ok, rel = rewarm_check(995.0, earlier, cv_target=0.02)
    assert ok and rel == pytest.approx(-0.005)
    ok, rel = rewarm_check(900.0, earlier, cv_target=0.02)          # 10 % slow: not warm
    assert not ok and rel == pytest.approx(-0.1)
    assert rewarm_check(1050.0, [900.0, 1100.0, 1000.0], cv_target=0.02)[0]   # inside 2 sd of noisy windows
    assert not rewarm_check(1030.0, [1000.0], cv_target=0.02)[0]     # one earlier pass: cv_target alone
    assert rewarm_check(1030.0, [], cv_target=0.02) == (True, None)  # nothing to hold it to


# ---- thermal gate ----
@pytest.fixture
def clock():
    return FakeClock()


def cooling(clock, start_c, rate_c_per_s, floor_c):
    fake = FakeNVML([{"uuid": U0, "power_w": 100.0}], clock=clock)
    t0 = clock.now
    fake.gpus[0].temperature = lambda t: max(floor_c, start_c - rate_c_per_s * (t - t0))
    return fake


def test_thermal_gate_waits_until_within_band(clock):
    fake = cooling(clock, 60.0, 1.0, 30.0)
    devs = resolve_gpus(cuda_visible_devices=None, nvml=fake)
    r = thermal_gate(devs, reference_c=40.0, band_c=3.0, timeout_s=120, poll_s=0.5, clock=clock, sleep=clock.sleep)
    assert r.within_band and not r.timed_out
    assert r.start_temperature_c == 60.0
    assert r.waited_s == pytest.approx(17.0)        # 60 -> 43 C at 1 C/s
    assert r.end_temperature_c <= 43.0


def test_thermal_gate_times_out(clock):
    fake = cooling(clock, 80.0, 0.1, 70.0)
    devs = resolve_gpus(cuda_visible_devices=None, nvml=fake)
    r = thermal_gate(devs, reference_c=40.0, band_c=3.0, timeout_s=10, poll_s=0.5, clock=clock, sleep=clock.sleep)
    assert r.timed_out and not r.within_band and r.waited_s == pytest.approx(10.0)


def test_thermal_gate_without_reference_or_when_cold(clock):
    fake = FakeNVML([{"uuid": U0, "temperature_c": 30}], clock=clock)
    devs = resolve_gpus(cuda_visible_devices=None, nvml=fake)
    r = thermal_gate(devs, reference_c=None, band_c=3.0, timeout_s=10, clock=clock, sleep=clock.sleep)
    assert r.within_band and r.waited_s == 0 and r.start_temperature_c == 30.0
    cold = thermal_gate(devs, reference_c=40.0, band_c=3.0, timeout_s=10, clock=clock, sleep=clock.sleep)
    assert not cold.within_band and not cold.timed_out and cold.waited_s == 0   # waiting cannot warm it


def test_thermal_gate_uses_the_hottest_gpu(clock):
    fake = FakeNVML([{"uuid": U0, "temperature_c": 41}, {"uuid": U1, "temperature_c": 55}], clock=clock)
    devs = resolve_gpus(cuda_visible_devices=None, nvml=fake)
    r = thermal_gate(devs, reference_c=40.0, band_c=3.0, timeout_s=5, clock=clock, sleep=clock.sleep)
    assert r.timed_out and r.start_temperature_c == 55.0


# ---- pre-flight ----
def test_preflight_clean_gpu_records_state(clock):
    fake = FakeNVML([{"uuid": U0, "persistence_mode": 1, "power_limit_w": 700}], clock=clock)
    rep = preflight(resolve_gpus(cuda_visible_devices=None, nvml=fake), allow_foreign=False, own_pids=set())
    assert rep["foreign_processes"] == [] and rep["flags"] == []
    (d,) = rep["devices"]
    assert d["uuid"] == U0 and d["persistence_mode"] is True and d["power_limit_w"] == 700.0
    assert {"pstate", "sm_clock_mhz", "max_sm_clock_mhz", "mig_mode", "ecc_mode"} <= set(d)
    json.dumps(rep)


def test_preflight_foreign_process_is_an_error_naming_gpu_and_pid(clock):
    fake = FakeNVML([{"uuid": U0}, {"uuid": U1, "processes": [{"pid": 4242, "used_memory_bytes": 3 << 30}]}],
                    clock=clock)
    devs = resolve_gpus(cuda_visible_devices=None, nvml=fake)
    with pytest.raises(DeviceError) as e:
        preflight(devs, allow_foreign=False, own_pids=set())
    msg = str(e.value)
    assert "GPU 1" in msg and U1 in msg and "pid 4242" in msg and "3072 MiB" in msg and "allow" in msg
    # only the measured GPUs matter
    assert preflight(devs[:1], allow_foreign=False, own_pids=set())["flags"] == []


def test_preflight_own_and_allowed_processes(clock):
    fake = FakeNVML([{"uuid": U0, "processes": [{"pid": os.getpid(), "used_memory_bytes": 1 << 20},
                                                 {"pid": 777, "used_memory_bytes": 1 << 20}]}], clock=clock)
    devs = resolve_gpus(cuda_visible_devices=None, nvml=fake)
    assert preflight(devs, allow_foreign=False, own_pids={777})["flags"] == []   # our pid is always own
    rep = preflight(devs, allow_foreign=True, own_pids=set())
    assert [f.flag for f in preflight_flags(rep)] == [Flag.FOREIGN_PROCESS]
    assert rep["foreign_processes"][0]["pid"] == 777


def test_preflight_residual_memory(clock):
    fake = FakeNVML([{"uuid": U0, "memory_used_bytes": 6 << 30}], clock=clock)
    rep = preflight(resolve_gpus(cuda_visible_devices=None, nvml=fake), allow_foreign=False)
    assert [f["code"] for f in rep["flags"]] == ["residual_memory"]


def test_preflight_own_model_memory_is_not_residual(clock):
    """The trial's pre-flight runs with the model loaded: memory held by our own worker is not residual
    (seen as a false residual_memory flag on every trial on H100/H200 before the fix)."""
    fake = FakeNVML([{"uuid": U0, "memory_used_bytes": 6 << 30,
                      "processes": [{"pid": os.getpid(), "used_memory_bytes": 6 << 30}]}], clock=clock)
    rep = preflight(resolve_gpus(cuda_visible_devices=None, nvml=fake), allow_foreign=False)
    assert rep["flags"] == [] and rep["foreign_processes"] == []
