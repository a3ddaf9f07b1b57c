"""The test doubles are chosen by the caller: devices/nvml.py never reads $JOULEBENCH_FAKE_NVML itself, the
entry points install the fake from it, and a fake device says so by an attribute, not by its class name."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from joulebench.devices.base import Device
from joulebench.devices.nvml import FAKE_ENV, NvmlDevice, load_nvml, resolve_gpus, use_nvml_library
from joulebench.meters.flags import Flag
from joulebench.meters.window import EnergyWindow
from joulebench.testing import fake_nvml_from_environment, install_from_environment
from joulebench.testing.fake_nvml import FakeClock, FakeNVML
from joulebench.testing.faults import FAULT_ENV, inject_fault

UUID = "GPU-12345678-0000-0000-0000-000000000000"


def test_the_variable_counts_only_once_the_caller_installs_it(tmp_path):
    """A fresh interpreter (no test harness): the variable alone leaves pynvml in place."""
    spec = tmp_path / "fake.json"
    spec.write_text(json.dumps({"gpus": [{"uuid": UUID, "power_w": 50.0}]}))
    code = textwrap.dedent("""
        import json
        from joulebench.devices.nvml import load_nvml, use_nvml_library
        from joulebench.testing import install_from_environment
        from joulebench.testing.fake_nvml import FakeNVML

        before = type(load_nvml()).__name__
        install_from_environment()
        installed = load_nvml()
        mine = FakeNVML([{}])
        use_nvml_library(mine)
        chosen = load_nvml() is mine
        use_nvml_library(None)
        print(json.dumps({"before": before, "installed": isinstance(installed, FakeNVML),
                          "simulated": installed.simulated, "chosen": chosen,
                          "restored": not isinstance(load_nvml(), FakeNVML)}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, FAKE_ENV: str(spec)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["before"] != "FakeNVML"
    assert out == {**out, "installed": True, "simulated": True, "chosen": True, "restored": True}


def test_install_follows_the_variable_and_keeps_one_fake_per_spec(tmp_path, monkeypatch):
    spec = tmp_path / "fake.json"
    spec.write_text(json.dumps({"gpus": [{"uuid": UUID}]}))
    install_from_environment()
    monkeypatch.setenv(FAKE_ENV, str(spec))
    fake = load_nvml()
    assert isinstance(fake, FakeNVML) and load_nvml() is fake is fake_nvml_from_environment()
    monkeypatch.setenv(FAKE_ENV, "")
    assert not isinstance(load_nvml(), FakeNVML)


def test_a_device_on_the_fake_is_simulated_and_flagged():
    """Any double that says ``simulated`` is flagged, whatever its class is called."""
    class ReplayNVML(FakeNVML):
        pass

    clock = FakeClock()
    fake = ReplayNVML([{"uuid": UUID, "power_w": 100.0}], clock=clock)
    (gpu,) = resolve_gpus([0], cuda_visible_devices=None, nvml=fake)
    assert isinstance(gpu, NvmlDevice) and gpu.simulated is True
    assert Device.simulated is False
    with EnergyWindow([gpu], clock=clock, wall_clock=clock) as w:
        clock.advance(1.0)
    assert Flag.FAKE_DEVICE in [f.flag for f in w.result.flags]


def test_a_real_nvml_device_is_not_simulated():
    class RealLike:              # any NVML module without the attribute, as pynvml
        pass

    assert NvmlDevice(RealLike(), None, None).simulated is False


def test_fault_injection_targets_one_trial(monkeypatch):
    monkeypatch.delenv(FAULT_ENV, raising=False)
    inject_fault("t-r0")                                  # unset: nothing
    monkeypatch.setenv(FAULT_ENV, "error:t-r1")
    inject_fault("t-r0")                                  # another trial: nothing
    with pytest.raises(RuntimeError, match="injected error in trial t-r1"):
        inject_fault("t-r1")


def test_use_nvml_library_in_this_process():
    fake = FakeNVML([{"uuid": UUID}])
    use_nvml_library(fake)
    try:
        assert load_nvml() is fake
    finally:
        install_from_environment()                        # as the test harness had it
    assert load_nvml() is not fake
