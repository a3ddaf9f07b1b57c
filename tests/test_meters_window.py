"""The energy window: counters at both edges after sync, per-device and total, fallback flagged."""
from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from joulebench.devices import resolve_gpus
from joulebench.testing.fake_nvml import FakeClock, FakeNVML
from joulebench.meters import EnergyWindow, Flag

U0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
U1 = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
U2 = "GPU-cccccccc-0000-0000-0000-000000000000"


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def fake(clock):
    return FakeNVML([{"uuid": U0, "power_w": 100.0}, {"uuid": U1, "power_w": 250.0},
                     {"uuid": U2, "power_w": 400.0}], clock=clock)


def test_per_device_and_total_energy_only_for_used_gpus(fake, clock):
    devs = resolve_gpus([0, 1], cuda_visible_devices="2,0", nvml=fake)    # GPUs 2 and 0; GPU 1 unused
    with EnergyWindow(devs, clock=clock, wall_clock=clock) as w:
        clock.advance(20.0)
    r = w.result
    assert r.duration_s == pytest.approx(20.0)
    assert {d.info.uuid: d.energy_j for d in r.devices} == pytest.approx({U2: 8000.0, U0: 2000.0})
    assert r.energy_j == pytest.approx(10000.0)
    assert r.energy_j == pytest.approx(sum(d.energy_j for d in r.devices))
    assert r.energy_source == "nvml-counter"
    assert r.mean_power_w == pytest.approx(500.0)
    assert U1 not in {d.info.uuid for d in r.devices}
    assert [f.flag for f in r.flags] == [Flag.FAKE_DEVICE]


def test_sync_runs_before_reading_counters_at_both_edges(fake, clock):
    (d,) = resolve_gpus([0], cuda_visible_devices=None, nvml=fake)
    calls = []
    real_counter = d.energy_counter_j

    def counter():
        calls.append("read")
        return real_counter()

    d.energy_counter_j = counter

    def sync():
        calls.append("sync")
        clock.advance(1.0)     # queued GPU work finishing: must be inside the window

    with EnergyWindow([d], sync=sync, clock=clock, wall_clock=clock) as w:
        clock.advance(3.0)
    assert calls == ["sync", "read", "sync", "read"]
    # start edge: the sync happens before the window opens; end edge: inside it
    assert w.result.duration_s == pytest.approx(4.0)
    assert w.result.energy_j == pytest.approx(400.0)


def test_exceptions_propagate_and_result_is_still_recorded(fake, clock):
    (d,) = resolve_gpus([0], cuda_visible_devices=None, nvml=fake)
    w = EnergyWindow([d], clock=clock, wall_clock=clock)
    with pytest.raises(RuntimeError, match="boom"):
        with w:
            clock.advance(2.0)
            raise RuntimeError("boom")
    assert w.result is not None and w.result.energy_j == pytest.approx(200.0)


def test_result_is_immutable(fake, clock):
    with EnergyWindow(resolve_gpus([0], cuda_visible_devices=None, nvml=fake), clock=clock,
                      wall_clock=clock) as w:
        clock.advance(1.0)
    with pytest.raises(Exception):
        w.result.energy_j = 0.0            # frozen dataclass
    assert isinstance(w.result.devices, tuple) and isinstance(w.result.flags, tuple)


def test_no_devices_gives_null_energy_with_flag():
    with EnergyWindow([]) as w:
        pass
    assert w.result.energy_j is None and w.result.energy_source is None
    assert [f.flag for f in w.result.flags] == [Flag.ENERGY_UNAVAILABLE]


def test_duplicate_devices_refused(fake, clock):
    (d,) = resolve_gpus([0], cuda_visible_devices=None, nvml=fake)
    with pytest.raises(ValueError, match="twice"):
        EnergyWindow([d, d])


def test_power_integral_fallback_is_flagged():
    """A GPU without a counter (pre-Volta) is integrated from instant power, in real time."""
    fake = FakeNVML([{"uuid": U0, "power_w": 200.0, "energy_counter": False}], clock=time.time)
    (d,) = resolve_gpus(cuda_visible_devices=None, nvml=fake)
    with EnergyWindow([d], fallback_hz=50) as w:
        time.sleep(0.6)
    r = w.result
    assert r.energy_source == "nvml-power-integral"
    assert r.devices[0].source == "nvml-power-integral"
    assert r.energy_j == pytest.approx(200.0 * r.duration_s, rel=0.05)
    codes = [f.flag for f in r.flags]
    assert Flag.COUNTER_UNAVAILABLE in codes and Flag.ENERGY_UNAVAILABLE not in codes


def test_mixed_gpu_and_cpu_window_keeps_cpu_separate(fake, clock, tmp_path):
    from joulebench.devices import cpu_devices

    root = tmp_path / "pc" / "intel-rapl:0"
    root.mkdir(parents=True)
    (root / "name").write_text("package-0")
    (root / "energy_uj").write_text("0")
    (root / "max_energy_range_uj").write_text("1000000000")
    cpus = cpu_devices(tmp_path / "pc")
    gpus = resolve_gpus([0], cuda_visible_devices=None, nvml=fake)
    with EnergyWindow(gpus + cpus, clock=clock, wall_clock=clock) as w:
        clock.advance(10.0)
        (root / "energy_uj").write_text("35000000")
    r = w.result
    assert r.energy_j == pytest.approx(1000.0) and r.energy_source == "nvml-counter"
    assert r.cpu_energy_j == pytest.approx(35.0) and r.cpu_energy_source == "rapl"
    d = r.to_dict()
    assert d["devices"][0]["mean_power_w"] == pytest.approx(100.0)


segments = st.lists(st.tuples(st.floats(0.0, 30.0), st.floats(0.0, 1000.0)), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(sched0=segments, sched1=segments, start=st.floats(0.0, 20.0), length=st.floats(0.05, 40.0))
def test_window_energy_within_counter_quantisation(sched0, sched1, start, length):
    """For any power schedule: per-device energies sum to the total, and each is the exact
    integral of power within one counter period of the highest power at each edge."""
    clock = FakeClock()
    fake = FakeNVML([{"uuid": U0, "power_schedule": [[0.0, 50.0]] + [list(s) for s in sched0]},
                     {"uuid": U1, "power_schedule": [[0.0, 50.0]] + [list(s) for s in sched1]}],
                    clock=clock, epoch=clock.now)
    devs = resolve_gpus(cuda_visible_devices=None, nvml=fake)
    clock.advance(start)
    t0 = clock.now
    with EnergyWindow(devs, clock=clock, wall_clock=clock) as w:
        clock.advance(length)
    r = w.result
    assert r.energy_j == pytest.approx(sum(d.energy_j for d in r.devices))
    for d, g in zip(r.devices, fake.gpus):
        exact = (g.energy_exact_mj(t0 + length) - g.energy_exact_mj(t0)) / 1000.0
        p_max = max(w for _, w in g._power)
        assert abs(d.energy_j - exact) <= 2 * p_max * g.counter_period_s + 1e-6


def test_counter_reset_gives_null_energy_not_zero(fake, clock):
    (d,) = resolve_gpus([0], cuda_visible_devices=None, nvml=fake)
    clock.advance(60.0)
    with EnergyWindow([d], clock=clock, wall_clock=clock) as w:
        clock.advance(5.0)
        fake.epoch = fake.gpus[0].epoch = clock.now      # the driver restarted its counter
    r = w.result
    assert r.energy_j is None and r.devices[0].energy_j is None
    assert any(f.flag is Flag.ENERGY_UNAVAILABLE and "backwards" in f.detail for f in r.flags)


def test_power_integral_fallback_holds_samples_over_exact_window(clock):
    """Zero-order hold over [start, end]: ticks after the end are ignored, the first is held back."""
    from joulebench.meters.window import _PowerIntegrator

    fake = FakeNVML([{"uuid": U0, "power_w": 100.0, "energy_counter": False}], clock=clock)
    (d,) = resolve_gpus(cuda_visible_devices=None, nvml=fake)
    integ = _PowerIntegrator([d], hz=10.0, clock=clock)
    t0 = clock.now
    clock.advance(0.02)
    integ._tick()                  # 100 W, held back to t0
    clock.advance(1.0)
    fake.gpus[0].set_power(300.0)
    integ._tick()                  # 300 W from t0 + 1.02
    clock.advance(1.0)
    t1 = clock.now
    clock.advance(0.5)
    fake.gpus[0].set_power(900.0)
    integ._tick()                  # after the window: ignored
    got = integ.stop(t0, t1)[U0]
    assert got == pytest.approx(100.0 * 1.02 + 300.0 * 1.0)
