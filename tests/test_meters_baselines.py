"""Idle baselines: counter power over an interval; staleness and drift."""
from __future__ import annotations

import pytest

from joulebench.devices import resolve_gpus
from joulebench.testing.fake_nvml import FakeClock, FakeNVML
from joulebench.meters import IdleBaseline, baseline_drifted, baseline_is_stale, energy_above, measure_idle_power

U0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
U1 = "GPU-bbbbbbbb-0000-0000-0000-000000000000"


@pytest.fixture
def clock():
    return FakeClock()


def test_idle_power_per_device_and_total(clock):
    fake = FakeNVML([{"uuid": U0, "power_w": 72.0, "temperature_c": 33},
                     {"uuid": U1, "power_w": 121.0, "temperature_c": 36}], clock=clock)
    devs = resolve_gpus(cuda_visible_devices=None, nvml=fake)
    synced = []
    b = measure_idle_power(devs, 10.0, sync=lambda: synced.append(1), sleep=clock.sleep, clock=clock,
                           wall_clock=clock)
    assert b.per_device_w == pytest.approx({U0: 72.0, U1: 121.0})
    assert b.power_w == pytest.approx(193.0)
    assert b.duration_s == pytest.approx(10.0)
    assert b.measured_at == pytest.approx(clock.now)
    assert b.pstates == {U0: 0, U1: 0}
    assert b.temperatures_c == {U0: 33.0, U1: 36.0}
    assert b.source == "nvml-counter"
    assert synced == [1, 1]
    assert IdleBaseline.from_dict(b.to_dict()) == b
    assert b.subset([U1]).power_w == pytest.approx(121.0)


def test_idle_uses_counter_not_polled_power(clock):
    """A 2 s spike in the middle: the counter sees it, a 1 s-average poll at the ends would not."""
    fake = FakeNVML([{"uuid": U0, "power_w": 70.0}], clock=clock)
    (d,) = resolve_gpus(cuda_visible_devices=None, nvml=fake)

    def sleep(s):
        clock.advance(4.0)
        fake.gpus[0].set_power(370.0)
        clock.advance(2.0)
        fake.gpus[0].set_power(70.0)
        clock.advance(s - 6.0)

    b = measure_idle_power([d], 10.0, sleep=sleep, clock=clock, wall_clock=clock)
    assert b.power_w == pytest.approx(70.0 + 300.0 * 2 / 10)


def test_idle_without_counter_averages_polled_power(clock):
    fake = FakeNVML([{"uuid": U0, "power_w": 90.0, "energy_counter": False}], clock=clock)
    (d,) = resolve_gpus(cuda_visible_devices=None, nvml=fake)
    b = measure_idle_power([d], 2.0, sleep=clock.sleep, clock=clock, wall_clock=clock)
    assert b.power_w == pytest.approx(90.0)
    assert b.source == "nvml-power-average"


def test_staleness():
    b = IdleBaseline(72.0, {U0: 72.0}, 10.0, measured_at=1000.0)
    assert not baseline_is_stale(b, max_age_s=3600, now=1000.0 + 3599)
    assert baseline_is_stale(b, max_age_s=3600, now=1000.0 + 3601)


def test_drift_on_total_or_any_device():
    ref = IdleBaseline(200.0, {U0: 100.0, U1: 100.0}, 10.0, 0.0)
    same = IdleBaseline(204.0, {U0: 102.0, U1: 102.0}, 5.0, 60.0)
    one_moved = IdleBaseline(200.0, {U0: 120.0, U1: 80.0}, 5.0, 60.0)   # total unchanged, devices moved
    assert not baseline_drifted(ref, same, threshold_rel=0.05)
    assert baseline_drifted(ref, one_moved, threshold_rel=0.05)
    assert baseline_drifted(ref, IdleBaseline(230.0, {}, 5.0, 60.0), threshold_rel=0.1)
    assert not baseline_drifted(ref, IdleBaseline(None, {U0: None}, 5.0, 60.0), threshold_rel=0.05)


def test_energy_above():
    assert energy_above(1000.0, 70.0, 10.0) == pytest.approx(300.0)
    assert energy_above(None, 70.0, 10.0) is None
    assert energy_above(1000.0, None, 10.0) is None
