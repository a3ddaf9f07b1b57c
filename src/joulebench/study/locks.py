"""Sharing a GPU box: one joulebench per set of GPUs, and no measuring on busy GPUs.

* :class:`DeviceLock` takes one ``flock`` per device key (a GPU UUID, or ``cpu`` for
  CPU-only studies) in a lock folder (``$JOULEBENCH_LOCK_DIR``, default
  ``<tmp>/joulebench-locks``). A second joulebench on an overlapping set waits (bounded),
  skips or fails, by the user's choice, with a message naming the holder's pid, study
  and start time. The kernel drops an flock when its process dies, so a lock file
  left by a dead process is never an obstacle: it is detected (its pid is gone),
  reported and overwritten.
* :class:`BusyGpuGate` looks at the GPUs of an experiment just before it starts:
  other users' processes, or memory in use above a threshold, make it wait (bounded,
  polling), defer the experiment to a later round, stop the study (resumable), or
  go ahead with a ``foreign_process`` flag, by ``runner_options.busy_gpu``.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from joulebench.errors import JoulebenchError
from joulebench.config.device import DeviceSpec
from joulebench.system.proc import pid_alive

EXIT_BUSY = 75                   # sysexits EX_TEMPFAIL: "try again later"
LOCK_DIR_ENV = "JOULEBENCH_LOCK_DIR"
CPU_KEY = "cpu"
BUSY_MEMORY_BYTES = 1 << 30

Log = Callable[[str], None]


class GpuBusy(JoulebenchError):
    """The devices are taken (by another joulebench or another user): try again later."""

    exit_code = EXIT_BUSY


class LockSkipped(GpuBusy):
    """``--on-busy-lock skip``: another joulebench holds the devices; nothing ran, by request."""

    exit_code = 0


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "joulebench-locks")


def _stamp(t: float | None) -> str:
    if not t:
        return "?"
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _key_file(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", key) + ".lock"


def describe_holder(h: dict) -> str:
    if not h:
        return "an unknown process"
    where = "" if h.get("host") in (None, socket.gethostname()) else f" on {h['host']}"
    return (f"pid {h.get('pid', '?')}{where} (study {h.get('study', '?')!s}, started {_stamp(h.get('started_at'))}"
            + (f", results in {h['study_dir']}" if h.get("study_dir") else "") + ")")


class DeviceLock:
    """flock-based lock over a set of device keys; a context manager.

    ``policy``: ``wait`` (poll every ``poll_s`` up to ``wait_s``, then :class:`GpuBusy`),
    ``skip`` (:class:`LockSkipped`, exit 0) or ``fail`` (:class:`GpuBusy`, exit 75).
    """

    def __init__(self, keys: list[str], *, study: str, study_dir: str | Path | None = None,
                 policy: str = "wait", wait_s: float = 3600.0, poll_s: float = 1.0,
                 directory: Path | None = None, log: Log | None = None):
        if policy not in ("wait", "skip", "fail"):
            raise ValueError(f"unknown lock policy {policy!r} (wait | skip | fail)")
        self.keys = sorted(set(keys)) or [CPU_KEY]
        self.study = study
        self.study_dir = str(study_dir) if study_dir else None
        self.policy = policy
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.dir = Path(directory) if directory else lock_dir()
        self.log = log or (lambda m: None)
        self._held: list[tuple[str, Any]] = []
        self.stale_cleared: list[dict] = []
        self.waited_s = 0.0

    # -------------------------------------------------------------- files
    def _open(self, key: str):
        self.dir.mkdir(parents=True, exist_ok=True)
        try:   # other users on the box must be able to create and lock files here
            if self.dir.stat().st_uid == os.getuid():
                os.chmod(self.dir, 0o1777)
        except OSError:
            pass
        path = self.dir / _key_file(key)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        return os.fdopen(fd, "r+")

    @staticmethod
    def read_holder(fh) -> dict:
        fh.seek(0)
        text = fh.read().strip()
        if not text:
            return {}
        try:
            doc = json.loads(text)
            return doc if isinstance(doc, dict) else {}
        except ValueError:
            return {"pid": text} if text.isdigit() else {}

    def _try_all(self) -> tuple[str, dict] | None:
        """Lock every key or none; returns (key, holder) of the first busy key."""
        for key in self.keys:
            fh = self._open(key)
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    fh.close()
                    self.release()
                    raise JoulebenchError(f"cannot lock {self.dir / _key_file(key)}: {e}. Set "
                                          f"{LOCK_DIR_ENV} to a local folder every user can write") from e
                holder = self.read_holder(fh)
                fh.close()
                self.release()
                return key, holder
            self._held.append((key, fh))
        return None

    def _claim(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "study": self.study,
              "study_dir": self.study_dir, "started_at": time.time(), "keys": self.keys}
        for key, fh in self._held:
            prev = self.read_holder(fh)
            if prev.get("pid"):
                try:
                    pid = int(prev["pid"])
                except (TypeError, ValueError):
                    pid = None
                same_host = prev.get("host") in (None, socket.gethostname())
                if pid is not None and same_host and not pid_alive(pid):
                    self.stale_cleared.append({"key": key, **prev})
                    self.log(f"cleared a stale lock on {key}: {describe_holder(prev)} is no longer running")
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(me))
            fh.flush()

    # -------------------------------------------------------------- api
    def acquire(self) -> "DeviceLock":
        t0 = time.monotonic()
        announced = False
        while True:
            busy = self._try_all()
            if busy is None:
                self.waited_s = time.monotonic() - t0
                if announced:
                    self.log(f"got the lock on {', '.join(self.keys)} after {self.waited_s:.0f} s")
                self._claim()
                return self
            key, holder = busy
            what = (f"the {'CPU' if key == CPU_KEY else 'GPU ' + key} lock is held by another joulebench: "
                    f"{describe_holder(holder)}")
            if holder.get("pid") and holder.get("host") in (None, socket.gethostname()):
                try:
                    if not pid_alive(int(holder["pid"])):
                        what += (" - that pid is gone, but a process it started still holds the lock; "
                                 "stop that process")
                except (TypeError, ValueError):
                    pass
            if self.policy == "skip":
                raise LockSkipped(f"skipped: {what}")
            if self.policy == "fail":
                raise GpuBusy(f"{what}. Run again later, or use --on-busy-lock wait")
            waited = time.monotonic() - t0
            if waited >= self.wait_s:
                raise GpuBusy(f"gave up after waiting {waited:.0f} s: {what}. Raise the wait bound "
                              "(--lock-wait-s / runner_options.lock_wait_s) or run later")
            if not announced:
                self.log(f"waiting up to {self.wait_s:.0f} s: {what}")
                announced = True
            time.sleep(min(self.poll_s, max(0.05, self.wait_s - waited)))

    def release(self) -> None:
        while self._held:
            _key, fh = self._held.pop()
            try:
                fh.seek(0)
                fh.truncate()       # an empty file: nobody holds it
                fh.flush()
            except OSError:
                pass
            try:
                fcntl.flock(fh, fcntl.LOCK_UN)
            finally:
                fh.close()

    def __enter__(self) -> "DeviceLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------- which devices
class StudyLock:
    """One orchestrator per study directory (flock: released when the process dies)."""

    def __init__(self, study_dir: Path):
        self.path = Path(study_dir) / ".lock"
        self.fh = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            other = self.fh.read().strip() or "?"
            self.fh.close()
            raise JoulebenchError(f"another joulebench (pid {other}) is running the study in {self.path.parent}; "
                                  "wait for it to finish") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        try:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
        finally:
            self.fh.close()


def experiment_gpus(params: dict[str, Any]) -> list:
    """The NVML devices an experiment with these parameters will use (host view)."""
    return DeviceSpec.of(params).resolve().devices


def study_device_keys(configs) -> list[str]:
    """Lock keys of a plan's configurations: GPU UUIDs, or ``cpu`` when none uses a GPU."""
    uuids: set[str] = set()
    for c in configs:
        params = c.params if hasattr(c, "params") else c
        try:
            uuids.update(d.info.uuid for d in experiment_gpus(params))
        except JoulebenchError:   # GPUs asked for but not resolvable here: lock by the name asked for
            uuids.add(f"device-{DeviceSpec.of(params)}")
    return sorted(uuids) or [CPU_KEY]


def study_lock(plan, cfg, *, study_dir, policy: str | None = None, wait_s: float | None = None,
               log: Log | None = None) -> DeviceLock:
    opts = cfg.runner_options
    return DeviceLock(study_device_keys(plan.configs), study=cfg.name, study_dir=study_dir,
                      policy=policy or opts.on_busy_lock,
                      wait_s=opts.lock_wait_s if wait_s is None else wait_s,
                      poll_s=min(opts.busy_poll_s, 2.0), log=log)


# ---------------------------------------------------------------------- busy GPUs
def gpu_usage(devices, *, own_pids: set[int] | None = None,
              memory_bytes: int = BUSY_MEMORY_BYTES) -> list[dict]:
    """What other users have on these GPUs now: one entry per busy GPU (empty: all free)."""
    own = set(own_pids or ()) | {os.getpid()}
    busy = []
    for d in devices:
        procs = d.foreign_processes(own)
        used = d.memory_used_bytes()
        if used is not None:   # memory our own listed processes hold (this one, a live worker) is not another user's
            mine = [p for p in d.foreign_processes(set()) if p["pid"] in own]
            used -= sum(p.get("used_memory_bytes") or 0 for p in mine)
        if procs or (used is not None and used > memory_bytes):
            busy.append({"index": d.info.index, "uuid": d.info.uuid, "processes": procs,
                         "memory_used_bytes": used})
    return busy


def describe_usage(busy: list[dict]) -> str:
    parts = []
    for b in busy:
        who = ", ".join(f"pid {p['pid']}" + (f" ({p['used_memory_bytes'] / 2**20:.0f} MiB)"
                                               if p.get("used_memory_bytes") else "") for p in b["processes"])
        mem = b.get("memory_used_bytes")
        parts.append(f"GPU {b['index']} ({b['uuid']}): " + (who or f"{(mem or 0) / 2**30:.1f} GiB in use, "
                                                                    "no process listed"))
    return "; ".join(parts)


@dataclass
class BusyDecision:
    action: str                       # run | defer | stop
    note: dict[str, Any] = field(default_factory=dict)   # goes into the records' ``preflight.busy_gpu``


class BusyGpuGate:
    """Decides, before each experiment, what to do about other users on its GPUs."""

    def __init__(self, policy: str = "wait", *, wait_s: float = 600.0, poll_s: float = 5.0,
                 memory_bytes: int = BUSY_MEMORY_BYTES, log: Log | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        if policy not in ("wait", "skip", "stop", "allow"):
            raise ValueError(f"unknown busy_gpu policy {policy!r} (wait | skip | stop | allow)")
        self.policy = policy
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.memory_bytes = memory_bytes
        self.log = log or (lambda m: None)
        self.sleep = sleep
        self.clock = clock

    @classmethod
    def from_config(cls, cfg, log: Log | None = None) -> "BusyGpuGate":
        o = cfg.runner_options
        policy = "allow" if cfg.measurement.allow_foreign_processes else o.busy_gpu
        return cls(policy, wait_s=o.busy_wait_s, poll_s=o.busy_poll_s, memory_bytes=o.busy_memory_bytes, log=log)

    def check(self, devices, *, own_pids: set[int] | None = None, label: str = "experiment") -> BusyDecision:
        if not devices:
            return BusyDecision("run")
        busy = gpu_usage(devices, own_pids=own_pids, memory_bytes=self.memory_bytes)
        if not busy:
            return BusyDecision("run")
        what = describe_usage(busy)
        note = {"policy": self.policy, "seen": busy, "detail": what, "checked_at": time.time()}
        if self.policy == "allow":
            self.log(f"{label}: GPUs in use by others ({what}); measuring anyway (busy_gpu: allow), "
                     "records flagged foreign_process")
            return BusyDecision("run", {**note, "action": "allowed"})
        if self.policy == "skip":
            self.log(f"{label}: GPUs in use by others ({what}); deferred to a later round (busy_gpu: skip)")
            return BusyDecision("defer", {**note, "action": "deferred"})
        if self.policy == "stop":
            self.log(f"{label}: GPUs in use by others ({what}); stopping (busy_gpu: stop)")
            return BusyDecision("stop", {**note, "action": "stopped"})
        # wait
        t0 = self.clock()
        self.log(f"{label}: GPUs in use by others ({what}); waiting up to {self.wait_s:.0f} s (busy_gpu: wait)")
        while True:
            waited = self.clock() - t0
            if waited >= self.wait_s:
                self.log(f"{label}: still busy after {waited:.0f} s ({what}); stopping")
                return BusyDecision("stop", {**note, "action": "stopped", "waited_s": round(waited, 3)})
            self.sleep(min(self.poll_s, max(0.01, self.wait_s - waited)))
            now_busy = gpu_usage(devices, own_pids=own_pids, memory_bytes=self.memory_bytes)
            if not now_busy:
                waited = self.clock() - t0
                self.log(f"{label}: GPUs free after {waited:.1f} s")
                return BusyDecision("run", {**note, "action": "waited", "waited_s": round(waited, 3)})
            busy, what = now_busy, describe_usage(now_busy)
