"""NVML adapter: mapping CUDA ordinals to NVML devices by UUID, units, error translation."""
from __future__ import annotations

import json

import pytest

from joulebench.devices import gpu_environment, nvml_available, resolve_gpus
from joulebench.testing.fake_nvml import NVML_ERROR_GPU_IS_LOST, FakeClock, FakeNVML, NVMLError
from joulebench.devices.nvml import FAKE_ENV, gpus_by_uuid, load_nvml
from joulebench.errors import DeviceError

U = ["GPU-11111111-aaaa-0000-0000-000000000000",
     "GPU-22222222-bbbb-0000-0000-000000000000",
     "GPU-33333333-cccc-0000-0000-000000000000",
     "GPU-33334444-dddd-0000-0000-000000000000"]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def four(clock):
    """Four GPUs drawing 100, 200, 300, 400 W: energy identifies which GPU was metered."""
    return FakeNVML([{"uuid": u, "power_w": 100.0 * (i + 1)} for i, u in enumerate(U)], clock=clock)


def _watts(devs, clock):
    e0 = [d.energy_counter_j() for d in devs]
    clock.advance(10.0)
    return [round((d.energy_counter_j() - e) / 10.0) for d, e in zip(devs, e0)]


@pytest.mark.parametrize("cvd, selection, expected_w", [
    (None, None, [100, 200, 300, 400]),
    ("3,1", None, [400, 200]),
    ("3,1", [0], [400]),
    ("3,1", [1], [200]),
    ("3,1", [1, 0], [200, 400]),
    (f"{U[2]},{U[0]}", None, [300, 100]),            # full UUIDs
    ("GPU-2222,GPU-1111", [0], [200]),                # UUID prefixes
    ("22222222-bbbb", None, [200]),                   # prefix without the GPU- tag
])
def test_cuda_visible_devices_maps_by_uuid(four, clock, cvd, selection, expected_w):
    devs = resolve_gpus(selection, cuda_visible_devices=cvd, nvml=four)
    assert _watts(devs, clock) == expected_w
    # identity comes from NVML, not from the CUDA ordinal
    assert [d.info.uuid for d in devs] == [U[w // 100 - 1] for w in expected_w]
    assert [d.info.index for d in devs] == [w // 100 - 1 for w in expected_w]


def test_empty_cuda_visible_devices_means_no_gpu(four):
    assert resolve_gpus(None, cuda_visible_devices="", nvml=four) == []
    with pytest.raises(DeviceError, match="sees 0 GPU"):
        resolve_gpus([0], cuda_visible_devices="", nvml=four)


def test_cuda_stops_at_first_empty_entry(four):
    devs = resolve_gpus(None, cuda_visible_devices="1,,3", nvml=four)
    assert [d.info.uuid for d in devs] == [U[1]]


@pytest.mark.parametrize("cvd, message", [
    ("7", "no GPU with that index"),
    ("GPU-3333", "ambiguous"),
    ("GPU-9999", "matches no GPU"),
    ("2,0,bogus,1", "'bogus' matches no GPU"),
    ("MIG-1234abcd-0000", "MIG"),
    ("1,1", "same GPU twice"),
])
def test_bad_visible_devices_raise_clear_errors(four, cvd, message):
    with pytest.raises(DeviceError, match=message):
        resolve_gpus(None, cuda_visible_devices=cvd, nvml=four)


def test_selection_out_of_range_names_visible_devices(four):
    with pytest.raises(DeviceError, match=r"sees 2 GPU.*CUDA_VISIBLE_DEVICES='0,1'"):
        resolve_gpus([2], cuda_visible_devices="0,1", nvml=four)


def test_no_nvml_gives_no_devices_and_never_raises():
    assert resolve_gpus(nvml=None) == []
    assert gpu_environment(nvml=None) == {}
    assert nvml_available(nvml=None) is False
    broken = FakeNVML([{}], broken="driver")
    assert resolve_gpus(nvml=broken) == []
    assert nvml_available(broken) is False
    assert gpu_environment(nvml=broken) == {}
    with pytest.raises(DeviceError, match="not available"):
        resolve_gpus([0], nvml=FakeNVML([{}], broken="library"))


def test_si_units_and_readings(clock):
    fake = FakeNVML([{"power_w": 250.0, "temperature_c": 41, "memory_used_bytes": 2 << 30,
                      "power_limit_w": 700}], clock=clock)
    (d,) = resolve_gpus(nvml=fake, cuda_visible_devices=None)
    assert d.info.power_limit_w == 700.0
    assert d.info.counter_period_s == 0.1
    clock.advance(5.0)
    assert d.power_w() == pytest.approx(250.0)
    assert d.instant_power_w() == pytest.approx(250.0)
    assert d.temperature_c() == 41.0
    assert d.memory_used_bytes() == 2 << 30
    row = d.sample()
    assert set(row) >= {"power_w", "power_instant_w", "temperature_c", "sm_clock_mhz", "mem_clock_mhz",
                        "gpu_util_pct", "mem_util_pct", "memory_used_bytes", "throttle_reasons", "energy_j"}
    assert row["energy_j"] == pytest.approx(d.energy_counter_j())


def test_power_usage_is_a_one_second_average_and_instant_is_not(clock):
    fake = FakeNVML([{"power_w": 100.0}], clock=clock)
    (d,) = resolve_gpus(nvml=fake, cuda_visible_devices=None)
    clock.advance(5.0)
    fake.gpus[0].set_power(500.0)
    clock.advance(0.25)
    assert d.instant_power_w() == pytest.approx(500.0)
    assert d.power_w() == pytest.approx(100 * 0.75 + 500 * 0.25)


def test_counter_updates_every_100_ms(clock):
    fake = FakeNVML([{"power_w": 300.0}], clock=clock)
    (d,) = resolve_gpus(nvml=fake, cuda_visible_devices=None)
    e0 = d.energy_counter_j()
    clock.advance(0.05)
    assert d.energy_counter_j() == e0            # not yet updated
    clock.advance(0.06)
    assert d.energy_counter_j() == pytest.approx(e0 + 30.0)


def test_unsupported_readings_are_none_and_other_errors_translated(clock):
    fake = FakeNVML([{"energy_counter": False, "instant_power": False}], clock=clock)
    (d,) = resolve_gpus(nvml=fake, cuda_visible_devices=None)
    assert d.energy_counter_j() is None
    assert d.instant_power_w() is None
    assert d.power_w() is not None
    fake.gpus[0].lost = True
    with pytest.raises(DeviceError, match=r"GPU 0 .*GPU is lost"):
        d.power_w()
    row = d.sample()                                # the sampler must survive a lost GPU
    assert all(v is None for v in row.values())


def test_foreign_processes_and_state(clock):
    fake = FakeNVML([{"processes": [{"pid": 10, "used_memory_bytes": 1 << 30},
                                    {"pid": 11, "used_memory_bytes": 2 << 30}], "mig_mode": 0,
                      "persistence_mode": 0}], clock=clock)
    (d,) = resolve_gpus(nvml=fake, cuda_visible_devices=None)
    assert d.foreign_processes({10}) == [{"pid": 11, "used_memory_bytes": 2 << 30}]
    assert d.foreign_processes({10, 11}) == []
    st = d.state()
    assert st["persistence_mode"] is False and st["mig_mode"] == 0 and st["pstate"] == 0
    assert st["max_sm_clock_mhz"] == 1980 and st["energy_counter"] is True


def test_gpu_environment_snapshot(four):
    env = gpu_environment(nvml=four)
    assert env["driver_version"] == "580.159.04"
    assert env["cuda_driver_version"] == "13.0"
    assert env["nvml_version"].startswith("13.")
    assert [g["uuid"] for g in env["gpus"]] == U
    assert {"power_limit_w", "persistence_mode", "ecc_mode", "mig_mode", "sm_clock_mhz"} <= set(env["gpus"][0])
    json.dumps(env)


def test_gpus_by_uuid(four):
    assert [d.info.index for d in gpus_by_uuid([U[3], U[0]], nvml=four)] == [3, 0]
    with pytest.raises(DeviceError, match="no GPU with UUID"):
        gpus_by_uuid(["GPU-nope"], nvml=four)


def test_env_var_selects_the_fake(tmp_path, monkeypatch):
    spec = tmp_path / "fake.json"
    spec.write_text(json.dumps({"gpus": [{"uuid": U[0], "power_w": 123.0}]}))
    monkeypatch.setenv(FAKE_ENV, str(spec))
    nv = load_nvml()
    assert isinstance(nv, FakeNVML)
    assert load_nvml() is nv                         # one fake per spec in a process
    (d,) = resolve_gpus(cuda_visible_devices=None)
    assert d.info.uuid == U[0]
    assert d.power_w() == pytest.approx(123.0)
    assert gpu_environment()["fake_nvml"] is True
    monkeypatch.setenv(FAKE_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(DeviceError, match="cannot load the fake NVML spec"):
        load_nvml()


def test_fake_raises_nvml_error_shape(clock):
    fake = FakeNVML([{}], clock=clock)
    with pytest.raises(NVMLError) as e:
        fake.nvmlDeviceGetCount()                   # before nvmlInit
    assert e.value.value == 1
    fake.nvmlInit()
    fake.gpus[0].lost = True
    with pytest.raises(NVMLError) as e:
        fake.nvmlDeviceGetPowerUsage(fake.nvmlDeviceGetHandleByIndex(0))
    assert e.value.value == NVML_ERROR_GPU_IS_LOST


def test_fake_processes_can_come_and_go(clock):
    fake = FakeNVML([{"processes": [{"pid": 99, "used_memory_bytes": 1 << 30, "from_s": 5, "until_s": 10}]}],
                    clock=clock)
    (d,) = resolve_gpus(nvml=fake, cuda_visible_devices=None)
    base = d.memory_used_bytes()
    assert d.foreign_processes(set()) == []
    clock.advance(6)
    assert d.foreign_processes(set()) == [{"pid": 99, "used_memory_bytes": 1 << 30}]
    assert d.memory_used_bytes() == base + (1 << 30)
    clock.advance(5)
    assert d.foreign_processes(set()) == []
