"""joulebench.measure: the public context manager, end to end over the fake NVML (env var)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import joulebench
from joulebench.devices.nvml import FAKE_ENV
from joulebench.meters import Flag, IdleBaseline

U0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
U1 = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
TRACE = Path(__file__).parent / "fixtures" / "nvml" / "h100_trace.json.gz"


@pytest.fixture
def two_gpus(tmp_path, monkeypatch):
    spec = tmp_path / "fake_nvml.json"
    spec.write_text(json.dumps({"epoch_unix": time.time() - 10,
                                "gpus": [{"uuid": U0, "power_w": 100.0}, {"uuid": U1, "power_w": 300.0}]}))
    monkeypatch.setenv(FAKE_ENV, str(spec))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    return spec


def test_measure_meters_exactly_the_named_gpu(two_gpus):
    with joulebench.measure(devices=[0], loaded_idle_s=0.3, cpu=False) as m:    # CUDA 0 = NVML 1
        time.sleep(1.2)
    r = m.result
    assert [d.info.uuid for d in r.window.devices] == [U1]
    assert r.energy_source == "nvml-counter"
    assert r.mean_power_w == pytest.approx(300.0, rel=0.1)       # 100 ms counter steps on a 1.2 s window
    assert r.loaded_idle.power_w == pytest.approx(300.0, rel=0.4)
    codes = [f.flag for f in r.flags]
    assert Flag.SHORT_WINDOW in codes and Flag.FAKE_DEVICE in codes
    assert set(r.timeline["device_uuid"]) == {U1}
    tl = r.timeline
    inside = tl[(tl["t_s"] >= r.window.start_time_s) & (tl["t_s"] <= r.window.end_time_s)]
    assert 6 <= len(inside) <= 16                                 # 10 Hz over the 1.2 s window (loaded-host slack)
    with pytest.raises(Exception):
        r.window = None                                           # immutable
    d = r.to_dict()
    json.dumps(d)
    assert d["energy_above_loaded_idle_j"] == pytest.approx(r.energy_j - r.loaded_idle.power_w * r.duration_s)
    # the visible GPU that was not named is reported apart, not summed
    assert [x.info.uuid for x in r.unused.devices] == [U0]
    assert r.unused.devices[0].energy_j == pytest.approx(100.0 * r.duration_s, rel=0.15)
    assert r.energy_j == pytest.approx(r.window.devices[0].energy_j)
    assert d["unused_devices"][0]["uuid"] == U0


def test_measure_all_visible_and_device_idle(two_gpus):
    idle = IdleBaseline(400.0, {U0: 100.0, U1: 300.0}, 10.0, time.time())
    with joulebench.measure(sampler=False, cpu=False, device_idle=idle) as m:
        time.sleep(0.5)
    r = m.result
    assert {d.info.uuid for d in r.window.devices} == {U0, U1}
    assert r.timeline is None and r.unused is None
    assert r.energy_above_device_idle_j == pytest.approx(0.0, abs=45.0)   # the fake draws exactly "idle"


def test_measure_without_any_meter(monkeypatch, tmp_path):
    spec = tmp_path / "none.json"
    spec.write_text(json.dumps({"broken": "library"}))
    monkeypatch.setenv(FAKE_ENV, str(spec))
    with joulebench.measure(cpu=False) as m:
        pass
    assert m.result.energy_j is None
    assert [f.flag for f in m.result.flags] == [Flag.ENERGY_UNAVAILABLE]


def test_measure_propagates_errors(two_gpus):
    with pytest.raises(ZeroDivisionError):
        with joulebench.measure(devices=[1], cpu=False) as m:
            1 / 0
    assert m.result is not None and m.result.energy_j is not None
    assert not m._sampler.process.is_alive()


def test_measure_with_replayed_h100_trace(tmp_path, monkeypatch):
    """The env-var fake replays the real H100 steady phase against wall-clock time."""
    spec = tmp_path / "fake_nvml.json"
    spec.write_text(json.dumps({"epoch_unix": time.time(),
                                "gpus": [{"uuid": U0, "trace": str(TRACE), "trace_phase": "steady"}]}))
    monkeypatch.setenv(FAKE_ENV, str(spec))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with joulebench.measure(devices=[0], cpu=False) as m:
        time.sleep(1.5)
    r = m.result
    assert 550 < r.mean_power_w < 800
    assert r.timeline["power_instant_w"].between(100, 1000).all()
