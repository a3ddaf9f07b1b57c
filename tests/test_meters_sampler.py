"""The sampler is a real separate process: started, stopped, and gone when its parent dies."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from joulebench.devices.nvml import FAKE_ENV
from joulebench.errors import DeviceError
from joulebench.meters import Sampler, write_timeseries

U0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
U1 = "GPU-bbbbbbbb-0000-0000-0000-000000000000"


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    spec = tmp_path / "fake_nvml.json"
    spec.write_text(json.dumps({"epoch_unix": time.time(),
                                "gpus": [{"uuid": U0, "power_w": 100.0}, {"uuid": U1, "power_w": 300.0}]}))
    monkeypatch.setenv(FAKE_ENV, str(spec))
    return spec


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return False


def test_sampler_runs_in_another_process_and_returns_the_timeline(fake_env):
    s = Sampler([U1], hz=20.0, cpu=False)
    s.start()
    assert s.pid is not None and s.pid != os.getpid()
    t0 = time.time()
    time.sleep(1.0)
    df = s.stop()
    t1 = time.time()
    assert not s.process.is_alive()
    assert s.stop() is df                               # idempotent
    assert list(df.columns[:4]) == ["t_s", "device_uuid", "device_index", "kind"]
    assert set(df["device_uuid"]) == {U1}               # only the GPU asked for
    assert 10 <= len(df) <= 30                          # ~20 Hz for ~1 s (slack for a loaded host)
    assert df["t_s"].is_monotonic_increasing and df["t_s"].iloc[-1] <= t1 and df["t_s"].iloc[0] <= t0 + 0.5
    assert (df["power_instant_w"] == 300.0).all()
    e = df["energy_j"].to_numpy()
    assert e[-1] - e[0] == pytest.approx(300.0 * (df["t_s"].iloc[-1] - df["t_s"].iloc[0]), abs=35.0)
    assert df.attrs["hz"] == 20.0


def test_sampler_context_manager_and_two_gpus(fake_env):
    with Sampler([U0, U1], hz=10.0, cpu=False) as s:
        time.sleep(0.5)
    df = s.stop()
    assert set(df["device_uuid"]) == {U0, U1}
    assert df.groupby("device_uuid")["power_w"].first().to_dict() == pytest.approx({U0: 100.0, U1: 300.0}, rel=0.01)


def test_sampler_reports_unknown_device(fake_env):
    with pytest.raises(DeviceError, match="could not open its devices.*GPU-nope"):
        Sampler(["GPU-nope"], cpu=False).start()


def test_sampler_reads_rapl(tmp_path, monkeypatch):
    monkeypatch.delenv(FAKE_ENV, raising=False)
    z = tmp_path / "pc" / "intel-rapl:0"
    z.mkdir(parents=True)
    (z / "name").write_text("package-0")
    (z / "energy_uj").write_text("5000000")
    (z / "max_energy_range_uj").write_text("262143328850")
    with Sampler([], hz=20.0, cpu=True, rapl_root=tmp_path / "pc") as s:
        time.sleep(0.3)
    df = s.stop()
    assert set(df["kind"]) == {"cpu-package"}
    assert (df["energy_j"] == 5.0).all()


def test_child_exits_when_parent_is_killed(fake_env, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from joulebench.meters import Sampler
        s = Sampler([{U0!r}], hz=10.0, cpu=False)
        s.start()
        print(s.pid, flush=True)
        time.sleep(120)
    """)
    _assert_sampler_dies_with_its_parent(script)


def _assert_sampler_dies_with_its_parent(script: str) -> None:
    """Run ``script`` (prints its sampler's pid, then sleeps), SIGKILL it, and wait for the sampler to go."""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ))
    try:
        child_pid = int(parent.stdout.readline())
        assert _alive(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.time() + 10
        while _alive(child_pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(child_pid), "the sampler outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_one_process_records_many_segments(fake_env):
    """A worker keeps one sampler: each segment holds only its own rows, the process idles between."""
    s = Sampler([U1], hz=20.0, cpu=False)
    s.open()
    try:
        pid = s.pid
        time.sleep(0.3)                                  # idle: nothing recorded
        bounds = []
        frames = []
        for _ in range(3):
            t0 = time.time()
            s.begin()
            time.sleep(0.4)
            frames.append(s.end())
            bounds.append((t0, time.time()))
            time.sleep(0.2)
        assert s.pid == pid and s.alive                  # the same process served every segment
        for df, (t0, t1) in zip(frames, bounds):
            assert 4 <= len(df) <= 14                    # ~20 Hz for ~0.4 s
            assert df["t_s"].min() >= t0 and df["t_s"].max() <= t1   # no rows from idle time or other segments
            assert set(df["device_uuid"]) == {U1}
        assert len(s.end()) == 0                         # no segment open: empty timeline
    finally:
        s.close()
    assert not s.process.is_alive()
    with pytest.raises(DeviceError, match="not running"):
        s.begin()


def test_idle_sampler_exits_when_parent_is_killed(fake_env):
    script = textwrap.dedent(f"""
        import time
        from joulebench.meters import Sampler
        s = Sampler([{U0!r}], hz=10.0, cpu=False)
        s.open()
        s.begin(); time.sleep(0.2); s.end()
        print(s.pid, flush=True)
        time.sleep(120)
    """)
    _assert_sampler_dies_with_its_parent(script)


def test_write_timeseries_is_atomic_parquet(fake_env, tmp_path):
    with Sampler([U0], hz=20.0, cpu=False) as s:
        time.sleep(0.3)
    df = s.stop()
    out = tmp_path / "timeseries" / "trial-1.parquet"
    write_timeseries(df, out)
    back = pd.read_parquet(out)
    assert len(back) == len(df) and list(back.columns) == list(df.columns)
    assert back["throttle_reasons"].dtype.name == "Int64"
    assert [p.name for p in out.parent.iterdir()] == ["trial-1.parquet"]    # no temp file left


def test_device_window_stats_sum_up_a_device_over_its_window():
    import pandas as pd

    from joulebench.devices.nvml import THROTTLE_SW_POWER_CAP, THROTTLE_SW_THERMAL
    from joulebench.meters.sampler import device_window_stats

    rows = [  # t, uuid, power, clock, util, reasons
        (0.5, "GPU-a", 100.0, 1000, 10, 0),                       # before the window: left out
        (1.0, "GPU-a", 600.0, 1980, 100, THROTTLE_SW_POWER_CAP),
        (1.1, "GPU-a", 700.0, 1500, 100, THROTTLE_SW_POWER_CAP | 0x1),
        (1.2, "GPU-a", 500.0, 1980, 70, THROTTLE_SW_THERMAL),
        (1.3, "GPU-a", 400.0, 1980, 50, 0x1),                     # GPU idle bit only: not a clock limit
        (1.0, "GPU-b", None, None, None, None),                   # a device whose reads failed
    ]
    df = pd.DataFrame(rows, columns=["t_s", "device_uuid", "power_w", "sm_clock_mhz", "gpu_util_pct",
                                     "throttle_reasons"])
    st = device_window_stats(df, 1.0, 1.3)
    a = st["GPU-a"]
    assert a["samples"] == 4 and a["power_w_mean"] == 550.0
    assert a["sm_clock_mhz_mean"] == 1860.0 and a["sm_clock_mhz_min"] == 1500.0 and a["gpu_util_pct_mean"] == 80.0
    assert a["power_cap_share"] == 0.5 and a["clock_limited_share"] == 0.75
    assert st["GPU-b"] == {"samples": 1, "power_w_mean": None, "sm_clock_mhz_mean": None, "sm_clock_mhz_min": None,
                           "gpu_util_pct_mean": None, "power_cap_share": None, "clock_limited_share": None}
    assert device_window_stats(None, 0, 1) == {} and device_window_stats(df.iloc[:0], 0, 1) == {}


def test_device_window_stats_on_a_recorded_h100_window():
    """The long class alone on vLLM, H100: sampled power agrees with the counter's window power, and the card
    spent most of the window at its 700 W software power cap, clocks down to 1140 MHz."""
    import json
    from pathlib import Path

    import pandas as pd

    from joulebench.meters.sampler import device_window_stats

    root = Path(__file__).parent / "fixtures" / "vllm" / "h100_two_class"
    rec = json.loads((root / "trials" / "e984780f2a-r1.json").read_text())
    df = pd.read_parquet(root / "timeseries" / "e984780f2a-r1.parquet")
    (st,) = device_window_stats(df, float(df["t_s"].min()), float(df["t_s"].max())).values()
    whole = rec["whole_window"]
    assert st["power_w_mean"] == pytest.approx(whole["energy_j"] / whole["duration_s"], rel=0.01)
    assert st["samples"] == 168 and st["sm_clock_mhz_min"] == 1140.0 and 1800 < st["sm_clock_mhz_mean"] < 1900
    assert st["gpu_util_pct_mean"] > 95 and 0.55 < st["power_cap_share"] == st["clock_limited_share"] < 0.65
