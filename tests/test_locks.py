"""GPU locks (flock per device key) and the busy-GPU gate, with real processes and the fake NVML."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from joulebench.devices import resolve_gpus
from joulebench.testing.fake_nvml import FakeClock, FakeNVML
from joulebench.study.locks import EXIT_BUSY, BusyGpuGate, DeviceLock, GpuBusy, LockSkipped, gpu_usage
from joulebench.system.proc import pid_alive

UUID_A = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
UUID_B = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
UUID_C = "GPU-cccccccc-0000-0000-0000-000000000000"


def _holder_process(lock_dir, keys, hold_s: float, study="holder") -> subprocess.Popen:
    """A real second process that takes the lock, says so on stdout, holds it for hold_s."""
    code = textwrap.dedent(f"""
        import sys, time
        from joulebench.study.locks import DeviceLock
        with DeviceLock({keys!r}, study={study!r}, directory={str(lock_dir)!r}):
            print("locked", flush=True)
            time.sleep({hold_s})
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not pid_alive(p.pid)
    return p.pid


def test_second_lock_fails_or_skips_with_the_holders_pid_study_and_start(tmp_path):
    holder = _holder_process(tmp_path, [UUID_A], 30, study="night-a")
    try:
        with pytest.raises(GpuBusy) as e:
            DeviceLock([UUID_A], study="b", policy="fail", directory=tmp_path).acquire()
        msg = str(e.value)
        assert f"pid {holder.pid}" in msg and "night-a" in msg and "UTC" in msg and UUID_A in msg
        assert e.value.exit_code == EXIT_BUSY
        with pytest.raises(LockSkipped) as s:
            DeviceLock([UUID_A], study="b", policy="skip", directory=tmp_path).acquire()
        assert s.value.exit_code == 0 and f"pid {holder.pid}" in str(s.value)
    finally:
        holder.kill()
        holder.wait()


def test_wait_gets_the_lock_when_the_holder_ends_and_gives_up_at_the_bound(tmp_path):
    holder = _holder_process(tmp_path, [UUID_A], 1.5)
    try:
        with pytest.raises(GpuBusy, match="gave up after waiting"):
            DeviceLock([UUID_A], study="b", policy="wait", wait_s=0.3, poll_s=0.1, directory=tmp_path).acquire()
        lines = []
        lock = DeviceLock([UUID_A], study="b", policy="wait", wait_s=30, poll_s=0.1, directory=tmp_path,
                          log=lines.append)
        with lock:
            assert lock.waited_s >= 0.8               # the holder kept it 1.5 s; 0.3 s went to the first try
            assert holder.wait(timeout=10) == 0       # ... and it ended normally, having released it
            doc = json.loads((tmp_path / f"{UUID_A}.lock").read_text())
            assert doc["pid"] == os.getpid() and doc["study"] == "b"
        assert any("waiting up to 30 s" in m for m in lines)
        assert (tmp_path / f"{UUID_A}.lock").read_text() == ""    # released: nobody named as holder
    finally:
        holder.kill()
        holder.wait()


def test_overlapping_gpu_sets_conflict_disjoint_ones_do_not(tmp_path):
    holder = _holder_process(tmp_path, [UUID_A, UUID_B], 30)
    try:
        with pytest.raises(GpuBusy, match=UUID_B):
            DeviceLock([UUID_C, UUID_B], study="x", policy="fail", directory=tmp_path).acquire()
        # a failed attempt holds nothing: UUID_C is free for a third run
        with DeviceLock([UUID_C], study="y", policy="fail", directory=tmp_path):
            pass
        with DeviceLock(["cpu"], study="z", policy="fail", directory=tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_file_of_a_dead_pid_is_detected_and_cleared(tmp_path):
    dead = _dead_pid()
    (tmp_path / f"{UUID_A}.lock").write_text(json.dumps(
        {"pid": dead, "host": os.uname().nodename, "study": "old", "started_at": time.time() - 3600}))
    lines = []
    lock = DeviceLock([UUID_A], study="new", policy="fail", directory=tmp_path, log=lines.append)
    with lock:
        assert [s["pid"] for s in lock.stale_cleared] == [dead]
        assert json.loads((tmp_path / f"{UUID_A}.lock").read_text())["pid"] == os.getpid()
    assert any(f"pid {dead}" in m and "stale" in m for m in lines)


def test_a_holder_killed_with_sigkill_leaves_a_lock_that_the_next_run_clears(tmp_path):
    holder = _holder_process(tmp_path, [UUID_A], 60, study="crashed")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = DeviceLock([UUID_A], study="next", policy="fail", directory=tmp_path)
    with lock:
        assert [s["pid"] for s in lock.stale_cleared] == [holder.pid]
        assert lock.stale_cleared[0]["study"] == "crashed"


# ---------------------------------------------------------------------- busy-GPU gate
def _fake(clock, processes=(), memory_used_bytes=524_288_000):
    spec = {"epoch_unix": clock.now, "gpus": [{"uuid": UUID_A, "power_w": 100.0, "processes": list(processes),
                                               "memory_used_bytes": memory_used_bytes}]}
    return FakeNVML.from_spec(spec, clock=clock)


def _gate(clock, policy, **kw):
    return BusyGpuGate(policy, sleep=clock.sleep, clock=clock, poll_s=kw.pop("poll_s", 1.0), **kw)


def test_gate_waits_until_the_foreign_process_leaves():
    clock = FakeClock()
    gpus = resolve_gpus([0], nvml=_fake(clock, [{"pid": 4242, "used_memory_bytes": 2 << 30, "until_s": 7.5}]),
                        cuda_visible_devices=None)
    lines = []
    d = _gate(clock, "wait", wait_s=60, log=lines.append).check(gpus)
    assert d.action == "run" and d.note["action"] == "waited"
    assert d.note["waited_s"] == pytest.approx(8.0)          # polled every 1 s; gone at 7.5 s
    assert d.note["seen"][0]["processes"][0]["pid"] == 4242
    assert any("pid 4242" in m and "waiting up to 60 s" in m for m in lines)


def test_gate_wait_is_bounded_then_stops():
    clock = FakeClock()
    gpus = resolve_gpus([0], nvml=_fake(clock, [{"pid": 4242, "used_memory_bytes": 1 << 30}]),
                        cuda_visible_devices=None)
    d = _gate(clock, "wait", wait_s=5).check(gpus)
    assert d.action == "stop" and d.note["waited_s"] == pytest.approx(5.0)


@pytest.mark.parametrize("policy,action,note", [("skip", "defer", "deferred"), ("stop", "stop", "stopped"),
                                                ("allow", "run", "allowed")])
def test_gate_policies_on_a_busy_gpu(policy, action, note):
    clock = FakeClock()
    gpus = resolve_gpus([0], nvml=_fake(clock, [{"pid": 777, "used_memory_bytes": 1 << 30}]),
                        cuda_visible_devices=None)
    t0 = clock.now
    d = _gate(clock, policy, wait_s=60).check(gpus)
    assert (d.action, d.note["action"]) == (action, note)
    assert clock.now == t0                                     # no waiting for these policies


def test_gate_lets_a_free_gpu_run_without_a_note_and_sees_memory_without_processes():
    clock = FakeClock()
    free = resolve_gpus([0], nvml=_fake(clock), cuda_visible_devices=None)
    assert _gate(clock, "stop").check(free).action == "run"
    assert _gate(clock, "stop").check(free).note == {}
    ghost = resolve_gpus([0], nvml=_fake(clock, memory_used_bytes=3 << 30), cuda_visible_devices=None)
    busy = gpu_usage(ghost)
    assert busy and busy[0]["processes"] == [] and busy[0]["memory_used_bytes"] == 3 << 30
    assert gpu_usage(ghost, memory_bytes=4 << 30) == []
    # our own pids are never "foreign"
    mine = resolve_gpus([0], nvml=_fake(clock, [{"pid": os.getpid(), "used_memory_bytes": 1 << 20}]),
                        cuda_visible_devices=None)
    assert gpu_usage(mine) == []


def test_our_long_lived_worker_is_not_another_user():
    """Between rounds a worker of ours keeps its model on the GPU (8 GiB here): the gate before the next
    round must not call that busy, yet still see a foreign process beside it."""
    clock = FakeClock()
    worker = {"pid": 31337, "used_memory_bytes": 8 << 30}
    gpus = resolve_gpus([0], nvml=_fake(clock, [worker]), cuda_visible_devices=None)
    assert gpu_usage(gpus)                                       # from outside: a user with 8 GiB
    assert gpu_usage(gpus, own_pids={31337}) == []               # it is ours: free
    assert _gate(clock, "stop").check(gpus, own_pids={31337}).action == "run"
    both = resolve_gpus([0], nvml=_fake(clock, [worker, {"pid": 4040, "used_memory_bytes": 1 << 30}]),
                        cuda_visible_devices=None)
    busy = gpu_usage(both, own_pids={31337})
    assert [p["pid"] for p in busy[0]["processes"]] == [4040]    # the other user is still seen
