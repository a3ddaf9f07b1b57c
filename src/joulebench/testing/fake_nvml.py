"""A deterministic stand-in for ``pynvml``, at the hardware boundary.

It exposes the subset of ``pynvml`` names that :mod:`joulebench.devices.nvml`
uses, with the same calling conventions (handles, ``NVMLError`` with a
``value``, milliwatts, millijoules, MHz, bytes). Its clock is injectable: unit
tests pass a :class:`FakeClock` and advance it; the environment-variable mode
uses wall-clock time, so separate processes (the sampler, a spawned worker)
see the same GPUs with the same counters.

Power of each fake GPU comes from one of three sources:

* ``power_w``: constant power (W);
* ``power_schedule``: ``[[t_s, watts], ...]`` piecewise-constant power,
  ``t_s`` in seconds since the epoch of the fake (see below); tests can also
  call :meth:`FakeGpu.set_power` to change power from "now" on;
* ``trace``: replay of an NVML trace recorded on a real GPU by
  ``scripts/record_nvml_trace.py`` (e.g. ``tests/fixtures/nvml/h100_trace.json.gz``),
  optionally restricted to one recorded phase (``trace_phase``) or to
  ``trace_window_s: [start, end]``, looped forever.

For power sources the energy counter advances like an H100's: exact integral
of power, updated every ``counter_period_s`` (default 0.1 s);
``nvmlDeviceGetPowerUsage`` returns the 1 s moving average (as on H100) and the
``NVML_FI_DEV_POWER_INSTANT`` field the instantaneous value. For traces every
reading comes from the recorded row at the replayed time.

JSON spec (the file named by ``JOULEBENCH_FAKE_NVML``; every key optional)::

    {
      "epoch_unix": 1767225600.0,     # t = 0 of schedules and traces; default: the file's mtime
      "driver_version": "580.159.04", "nvml_version": "13.580.159.04", "cuda_driver_version": 13000,
      "gpus": [
        {
          "uuid": "GPU-0000...",        # default: a stable UUID from the index
          "name": "NVIDIA H100 80GB HBM3",
          "pci_bus_id": "00000000:00:06.0",
          "minor_number": 0,            # the device node /dev/nvidia<minor>; default: the index
          "power_limit_w": 700, "memory_total_bytes": 85520809984,
          "memory_used_bytes": 524288000,
          "power_w": 120.0,             # or "power_schedule": [[0, 70], [5, 300]]
          "trace": "h100_trace.json.gz", "trace_phase": "steady",   # path relative to the spec file
          "counter_period_s": 0.1,
          "temperature_c": 35,          # or "temperature_schedule": [[t_s, c], ...]
          "sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "max_sm_clock_mhz": 1980, "max_mem_clock_mhz": 2619,
          "gpu_util_pct": 0, "mem_util_pct": 0, "throttle_reasons": 0, "pstate": 0,
          "persistence_mode": 1, "mig_mode": 0, "ecc_mode": 1,
          "processes": [{"pid": 4242, "used_memory_bytes": 1073741824,
                         "from_s": 0, "until_s": 30}],   # optional: present only in [from_s, until_s)
                                                        # "while_alive": true: only while that pid runs here
          "energy_counter": true,       # false: the counter raises NOT_SUPPORTED (pre-Volta)
          "instant_power": true         # false: the instant-power field is not supported
        }
      ]
    }

A trace file (gzip JSON, schema ``joulebench-nvml-trace/1``) holds ``device`` (identity
and state at recording time), ``phases`` (``name``, ``start_s``, ``end_s``),
``columns`` (``t_s``, ``energy_mj``, ``power_mw``, ``power_instant_mw``,
``temperature_c``, ``sm_clock_mhz``, ``mem_clock_mhz``, ``gpu_util_pct``,
``mem_util_pct``, ``memory_used_bytes``, ``throttle_reasons``, ``pstate``) and
``rows`` (one list per poll, raw NVML units).

A spec with ``"broken": "driver"`` makes ``nvmlInit`` fail as with a missing
driver; ``"broken": "library"`` as with a missing library.
"""
from __future__ import annotations

import bisect
import gzip
import hashlib
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable

from joulebench.system.proc import pid_alive

# --- constants (same values as pynvml) ---------------------------------------------------------
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186
NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1

_ERROR_NAMES = {
    1: "Uninitialized", 2: "Invalid Argument", 3: "Not Supported", 4: "Insufficient Permissions",
    6: "Not Found", 9: "Driver Not Loaded", 12: "NVML Shared Library Not Found",
    13: "Function Not Found", 15: "GPU is lost", 999: "Unknown Error",
}


class NVMLError(Exception):
    """Same shape as ``pynvml.NVMLError``: the error code is ``.value``."""

    def __init__(self, value: int):
        self.value = value
        super().__init__(value)

    def __str__(self) -> str:
        return _ERROR_NAMES.get(self.value, f"NVML error {self.value}")


class FakeClock:
    """A clock that only moves when the test says so (seconds, unix-like)."""

    def __init__(self, start: float = 1_767_225_600.0):
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += float(seconds)

    def sleep(self, seconds: float) -> None:
        """Use as an injectable ``sleep``: advances instead of waiting."""
        self.advance(max(0.0, seconds))


def load_trace(path: str | Path) -> dict:
    """Read a trace written by ``scripts/record_nvml_trace.py`` (gzip or plain JSON)."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt") as f:
        doc = json.load(f)
    if doc.get("schema") != "joulebench-nvml-trace/1":
        raise ValueError(f"{p}: not a joulebench NVML trace (schema {doc.get('schema')!r})")
    return doc


class _Trace:
    """Column access to a recorded trace, replayed in a loop over [start, end)."""

    def __init__(self, doc: dict, phase: str | None = None, window_s: list[float] | None = None):
        cols = doc["columns"]
        rows = doc["rows"]
        if phase is not None:
            match = [p for p in doc.get("phases", []) if p["name"] == phase]
            if not match:
                names = [p["name"] for p in doc.get("phases", [])]
                raise ValueError(f"trace has no phase {phase!r}; phases: {names}")
            window_s = [match[0]["start_s"], match[0]["end_s"]]
        if window_s is not None:
            rows = [r for r in rows if window_s[0] <= r[0] <= window_s[1]]
        rows = [r for r in rows if r[cols.index("energy_mj")] is not None]
        if len(rows) < 2:
            raise ValueError("trace segment has fewer than 2 rows")
        self.col = {c: i for i, c in enumerate(cols)}
        self.t0 = rows[0][0]
        self.t = [r[0] - self.t0 for r in rows]
        self.rows = rows
        self.duration = self.t[-1]
        e = self.col["energy_mj"]
        self.e_first = rows[0][e]
        self.e_span = rows[-1][e] - rows[0][e]

    def _locate(self, t: float) -> tuple[int, int]:
        loops, rem = divmod(max(0.0, t), self.duration)
        i = bisect.bisect_right(self.t, rem) - 1
        return int(loops), max(0, i)

    def value(self, t: float, column: str):
        _, i = self._locate(t)
        return self.rows[i][self.col[column]]

    def energy_mj(self, t: float) -> float:
        loops, i = self._locate(t)
        return loops * self.e_span + (self.rows[i][self.col["energy_mj"]] - self.e_first)


def _stable_uuid(index: int) -> str:
    h = hashlib.sha1(f"joulebench-fake-gpu-{index}".encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


class FakeGpu:
    """One fake GPU; readings are functions of the fake's clock."""

    def __init__(self, index: int, spec: dict, *, clock: Callable[[], float], epoch: float,
                 base_dir: Path | None):
        self.index = index
        self.spec = dict(spec)
        self.clock = clock
        self.epoch = epoch
        self.uuid = spec.get("uuid") or _stable_uuid(index)
        self.name = spec.get("name", "NVIDIA H100 80GB HBM3")
        self.pci_bus_id = spec.get("pci_bus_id", f"00000000:{index + 6:02X}:00.0")
        self.minor_number = int(spec.get("minor_number", index))   # /dev/nvidia<minor>
        self.power_limit_w = float(spec.get("power_limit_w", 700.0))
        self.memory_total_bytes = int(spec.get("memory_total_bytes", 85_520_809_984))
        self.memory_used_bytes = spec.get("memory_used_bytes", 524_288_000)
        self.counter_period_s = float(spec.get("counter_period_s", 0.1))
        self.energy_counter = bool(spec.get("energy_counter", True))
        self.instant_power = bool(spec.get("instant_power", True))
        self.processes: list[dict] = [dict(p) for p in spec.get("processes", [])]
        self.throttle_reasons = int(spec.get("throttle_reasons", 0))
        self.lost = False
        self.trace: _Trace | None = None
        if spec.get("trace"):
            tp = Path(spec["trace"])
            if not tp.is_absolute() and base_dir is not None:
                tp = base_dir / tp
            self.trace = _Trace(load_trace(tp), spec.get("trace_phase"), spec.get("trace_window_s"))
        sched = spec.get("power_schedule") or [[0.0, float(spec.get("power_w", 70.0))]]
        self._power: list[tuple[float, float]] = sorted((epoch + float(t), float(w)) for t, w in sched)
        tsched = spec.get("temperature_schedule") or [[0.0, float(spec.get("temperature_c", 35.0))]]
        self._temp: list[tuple[float, float]] = sorted((epoch + float(t), float(c)) for t, c in tsched)
        self._lock = threading.Lock()

    # ---- test controls ----
    def set_power(self, watts: float, at: float | None = None) -> None:
        """Power is ``watts`` from ``at`` (default: now) on."""
        t = self.clock() if at is None else at
        with self._lock:
            self._power = [(ts, w) for ts, w in self._power if ts < t] + [(t, float(watts))]

    def set_temperature(self, celsius: float, at: float | None = None) -> None:
        t = self.clock() if at is None else at
        with self._lock:
            self._temp = [(ts, c) for ts, c in self._temp if ts < t] + [(t, float(celsius))]

    def live_processes(self) -> list[dict]:
        """Processes present now (each may have ``from_s``/``until_s`` relative to the epoch)."""
        t = self.clock() - self.epoch
        return [p for p in self.processes
                if float(p.get("from_s", -math.inf)) <= t < float(p.get("until_s", math.inf))
                and (not p.get("while_alive") or pid_alive(int(p["pid"])))]

    # ---- physics ----
    def _rel(self, t: float) -> float:
        return t - self.epoch

    def energy_exact_mj(self, t: float) -> float:
        """Exact integral of power from the epoch to ``t`` (mJ)."""
        if self.trace is not None:
            return self.trace.energy_mj(self._rel(t))
        total = 0.0
        segs = self._power
        for i, (ts, w) in enumerate(segs):
            end = segs[i + 1][0] if i + 1 < len(segs) else math.inf
            lo, hi = max(ts, self.epoch), min(end, t)
            if hi > lo:
                total += w * (hi - lo) * 1000.0
        return total

    def counter_mj(self, t: float) -> int:
        if self.trace is not None:
            return int(1_000_000_000 + self.trace.energy_mj(self._rel(t)))
        if self.counter_period_s > 0:
            q = self.epoch + math.floor((t - self.epoch) / self.counter_period_s) * self.counter_period_s
        else:
            q = t
        return int(1_000_000_000 + self.energy_exact_mj(q))

    def instant_w(self, t: float) -> float:
        if self.trace is not None:
            v = self.trace.value(self._rel(t), "power_instant_mw")
            return (v or 0) / 1000.0
        i = bisect.bisect_right([ts for ts, _ in self._power], t) - 1
        return self._power[max(0, i)][1] if i >= 0 else 0.0

    def average_w(self, t: float) -> float:
        """The 1 s moving average that nvmlDeviceGetPowerUsage reports on H100."""
        if self.trace is not None:
            return (self.trace.value(self._rel(t), "power_mw") or 0) / 1000.0
        lo = max(self.epoch, t - 1.0)
        if t <= lo:
            return self.instant_w(t)
        return (self.energy_exact_mj(t) - self.energy_exact_mj(lo)) / 1000.0 / (t - lo)

    def temperature(self, t: float) -> float:
        if self.trace is not None:
            return self.trace.value(self._rel(t), "temperature_c")
        i = bisect.bisect_right([ts for ts, _ in self._temp], t) - 1
        return self._temp[max(0, i)][1]

    def reading(self, column: str, default=None):
        if self.trace is not None and column in self.trace.col:
            return self.trace.value(self._rel(self.clock()), column)
        return self.spec.get(column, default)


class _Handle:
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __repr__(self) -> str:
        return f"<fake nvml handle {self.index}>"


class _Util:
    def __init__(self, gpu, memory):
        self.gpu = gpu
        self.memory = memory


class _Mem:
    def __init__(self, total, used):
        self.total = total
        self.used = used
        self.free = total - used


class _Proc:
    def __init__(self, pid, used):
        self.pid = pid
        self.usedGpuMemory = used


class _PciInfo:
    def __init__(self, bus_id):
        self.busId = bus_id


class _Value:
    def __init__(self, ui):
        self.uiVal = ui
        self.dVal = float(ui)
        self.ullVal = ui


class _FieldValue:
    def __init__(self, field_id, ret, value):
        self.fieldId = field_id
        self.nvmlReturn = ret
        self.valueType = NVML_VALUE_TYPE_UNSIGNED_INT
        self.value = _Value(value)


class FakeNVML:
    """Module-like object with pynvml's function names. Build with :meth:`from_spec`."""

    simulated = True           # not hardware: devices on it say so (Device.simulated), results get fake_device
    NVMLError = NVMLError
    # constants, so ``nvml.NVML_CLOCK_SM`` works on the object as on the module
    NVML_SUCCESS = NVML_SUCCESS
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = NVML_ERROR_NO_PERMISSION
    NVML_ERROR_FUNCTION_NOT_FOUND = NVML_ERROR_FUNCTION_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = NVML_ERROR_GPU_IS_LOST
    NVML_ERROR_DRIVER_NOT_LOADED = NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_INVALID_ARGUMENT = NVML_ERROR_INVALID_ARGUMENT
    NVML_ERROR_NOT_FOUND = NVML_ERROR_NOT_FOUND
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_CLOCK_GRAPHICS = NVML_CLOCK_GRAPHICS
    NVML_CLOCK_SM = NVML_CLOCK_SM
    NVML_CLOCK_MEM = NVML_CLOCK_MEM
    NVML_FI_DEV_POWER_INSTANT = NVML_FI_DEV_POWER_INSTANT
    NVML_FI_DEV_POWER_AVERAGE = NVML_FI_DEV_POWER_AVERAGE

    def __init__(self, gpus: list[dict] | None = None, *, clock: Callable[[], float] = time.time,
                 epoch: float | None = None, base_dir: str | Path | None = None,
                 driver_version: str = "580.159.04", nvml_version: str = "13.580.159.04",
                 cuda_driver_version: int = 13000, broken: str | None = None):
        self.clock = clock
        self.epoch = float(clock() if epoch is None else epoch)
        base = Path(base_dir) if base_dir is not None else None
        self.gpus = [FakeGpu(i, g, clock=clock, epoch=self.epoch, base_dir=base) for i, g in enumerate(gpus or [])]
        self.driver_version = driver_version
        self.nvml_version = nvml_version
        self.cuda_driver_version = cuda_driver_version
        self.broken = broken
        self.initialized = 0
        self.calls: dict[str, int] = {}

    @classmethod
    def from_spec(cls, spec: dict | str | Path, *, clock: Callable[[], float] = time.time) -> "FakeNVML":
        base_dir = None
        epoch = None
        if not isinstance(spec, dict):
            path = Path(spec)
            with open(path) as f:
                data = json.load(f)
            base_dir = path.parent
            epoch = data.get("epoch_unix", path.stat().st_mtime)
        else:
            data = spec
            epoch = data.get("epoch_unix")
            base_dir = data.get("base_dir")
        return cls(data.get("gpus", []), clock=clock, epoch=epoch, base_dir=base_dir,
                   driver_version=data.get("driver_version", "580.159.04"),
                   nvml_version=data.get("nvml_version", "13.580.159.04"),
                   cuda_driver_version=int(data.get("cuda_driver_version", 13000)),
                   broken=data.get("broken"))

    # ---- helpers ----
    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _gpu(self, handle) -> FakeGpu:
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if not isinstance(handle, _Handle) or not 0 <= handle.index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        g = self.gpus[handle.index]
        if g.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return g

    # ---- library ----
    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        if self.broken == "driver":
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        if self.broken == "library":
            raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        self.initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver_version

    def nvmlSystemGetNVMLVersion(self) -> str:
        return self.nvml_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda_driver_version

    def nvmlDeviceGetCount(self) -> int:
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if not 0 <= int(index) < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(int(index))

    def nvmlDeviceGetHandleByUUID(self, uuid) -> _Handle:
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        u = uuid.decode() if isinstance(uuid, bytes) else uuid
        for g in self.gpus:
            if g.uuid == u:
                return _Handle(g.index)
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    # ---- identity ----
    def nvmlDeviceGetUUID(self, h) -> str:
        return self._gpu(h).uuid

    def nvmlDeviceGetName(self, h) -> str:
        return self._gpu(h).name

    def nvmlDeviceGetIndex(self, h) -> int:
        return self._gpu(h).index

    def nvmlDeviceGetMinorNumber(self, h) -> int:
        return self._gpu(h).minor_number

    def nvmlDeviceGetPciInfo(self, h) -> _PciInfo:
        return _PciInfo(self._gpu(h).pci_bus_id)

    def nvmlDeviceGetMemoryInfo(self, h) -> _Mem:
        g = self._gpu(h)
        used = g.reading("memory_used_bytes", g.memory_used_bytes)
        used = int(used if used is not None else 0) + sum(int(p.get("used_memory_bytes") or 0)
                                                          for p in g.live_processes())
        return _Mem(g.memory_total_bytes, min(used, g.memory_total_bytes))

    # ---- energy and power ----
    def nvmlDeviceGetTotalEnergyConsumption(self, h) -> int:
        self._count("nvmlDeviceGetTotalEnergyConsumption")
        g = self._gpu(h)
        if not g.energy_counter:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return g.counter_mj(self.clock())

    def nvmlDeviceGetPowerUsage(self, h) -> int:
        g = self._gpu(h)
        return int(round(g.average_w(self.clock()) * 1000))

    def nvmlDeviceGetFieldValues(self, h, field_ids):
        g = self._gpu(h)
        out = []
        for fid in field_ids:
            if fid == NVML_FI_DEV_POWER_INSTANT and g.instant_power:
                out.append(_FieldValue(fid, NVML_SUCCESS, int(round(g.instant_w(self.clock()) * 1000))))
            elif fid == NVML_FI_DEV_POWER_AVERAGE:
                out.append(_FieldValue(fid, NVML_SUCCESS, int(round(g.average_w(self.clock()) * 1000))))
            else:
                out.append(_FieldValue(fid, NVML_ERROR_NOT_SUPPORTED, 0))
        return out

    def nvmlDeviceGetPowerManagementLimit(self, h) -> int:
        return int(self._gpu(h).power_limit_w * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, h) -> int:
        return int(self._gpu(h).power_limit_w * 1000)

    # ---- thermal, clocks, state ----
    def nvmlDeviceGetTemperature(self, h, sensor) -> int:
        g = self._gpu(h)
        return int(round(g.temperature(self.clock())))

    def nvmlDeviceGetClockInfo(self, h, clock_type) -> int:
        g = self._gpu(h)
        if clock_type == NVML_CLOCK_MEM:
            return int(g.reading("mem_clock_mhz", 2619))
        return int(g.reading("sm_clock_mhz", 1980))

    def nvmlDeviceGetMaxClockInfo(self, h, clock_type) -> int:
        g = self._gpu(h)
        if clock_type == NVML_CLOCK_MEM:
            return int(g.spec.get("max_mem_clock_mhz", 2619))
        return int(g.spec.get("max_sm_clock_mhz", 1980))

    def nvmlDeviceGetUtilizationRates(self, h) -> _Util:
        g = self._gpu(h)
        return _Util(int(g.reading("gpu_util_pct", 0) or 0), int(g.reading("mem_util_pct", 0) or 0))

    def nvmlDeviceGetCurrentClocksEventReasons(self, h) -> int:
        g = self._gpu(h)
        if g.trace is not None:
            return int(g.reading("throttle_reasons", 0) or 0)
        return g.throttle_reasons

    nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons

    def nvmlDeviceGetPerformanceState(self, h) -> int:
        return int(self._gpu(h).reading("pstate", 0) or 0)

    def nvmlDeviceGetPersistenceMode(self, h) -> int:
        return int(self._gpu(h).spec.get("persistence_mode", 1))

    def nvmlDeviceGetMigMode(self, h) -> list[int]:
        m = int(self._gpu(h).spec.get("mig_mode", 0))
        return [m, m]

    def nvmlDeviceGetEccMode(self, h) -> list[int]:
        m = int(self._gpu(h).spec.get("ecc_mode", 1))
        return [m, m]

    def nvmlDeviceGetComputeRunningProcesses(self, h) -> list[_Proc]:
        g = self._gpu(h)
        return [_Proc(int(p["pid"]), p.get("used_memory_bytes")) for p in g.live_processes()]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h) -> list[_Proc]:
        self._gpu(h)
        return []


def from_env(var: str = "JOULEBENCH_FAKE_NVML") -> FakeNVML | None:
    """The fake named by the environment variable, or None when it is unset."""
    path = os.environ.get(var)
    if not path:
        return None
    return FakeNVML.from_spec(path)


__all__ = ["FakeNVML", "FakeClock", "FakeGpu", "NVMLError", "load_trace", "from_env"]
