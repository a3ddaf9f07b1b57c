"""NVIDIA GPUs through NVML (``nvidia-ml-py``): a thin adapter, SI units out.

* The NVML module is injectable (``nvml=``); by default it is the real
  ``pynvml``, or the library the caller chose with :func:`use_nvml_library` /
  :func:`select_nvml_library` (the entry points call
  :func:`joulebench.testing.install_from_environment`, which picks the fake of
  :mod:`joulebench.testing.fake_nvml` when ``JOULEBENCH_FAKE_NVML`` names a spec file).
* Devices are mapped from the process's CUDA ordinals to NVML handles **by
  UUID** (``CUDA_VISIBLE_DEVICES`` may hold indices, UUIDs or UUID prefixes).
* "Not supported" readings become ``None``; every other NVML error becomes a
  :class:`~joulebench.errors.DeviceError` naming the GPU. A machine without
  NVML or without GPUs yields no devices and never raises.
"""
from __future__ import annotations

import os
import weakref
from typing import Any, Callable

from joulebench.errors import DeviceError
from joulebench.devices.base import SAMPLE_KEYS, Device, DeviceInfo

FAKE_ENV = "JOULEBENCH_FAKE_NVML"     # read by joulebench.testing.install_from_environment, never here
_UNSET: Any = object()

# NVML return codes that mean "this reading does not exist here", not "something broke".
_UNSUPPORTED = {3, 4, 13}          # NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND
_NO_NVML = {9, 12}                 # DRIVER_NOT_LOADED, LIBRARY_NOT_FOUND
NVML_FI_DEV_POWER_INSTANT = 186

# Clock-event (throttle) reason bits, from nvml.h.
THROTTLE_GPU_IDLE = 0x1
THROTTLE_APP_CLOCKS = 0x2
THROTTLE_SW_POWER_CAP = 0x4
THROTTLE_HW_SLOWDOWN = 0x8
THROTTLE_SYNC_BOOST = 0x10
THROTTLE_SW_THERMAL = 0x20
THROTTLE_HW_THERMAL = 0x40
THROTTLE_HW_POWER_BRAKE = 0x80
THROTTLE_NAMES = {
    THROTTLE_SW_POWER_CAP: "sw-power-cap", THROTTLE_HW_SLOWDOWN: "hw-slowdown",
    THROTTLE_SW_THERMAL: "sw-thermal", THROTTLE_HW_THERMAL: "hw-thermal",
    THROTTLE_HW_POWER_BRAKE: "hw-power-brake",
}
THROTTLE_MASK = sum(THROTTLE_NAMES)   # bits that mean "clocks were cut by power or heat"

_chooser: Callable[[], Any] | None = None
_initialised: "weakref.WeakSet" = weakref.WeakSet()


def select_nvml_library(chooser: Callable[[], Any] | None) -> None:
    """From now on :func:`load_nvml` asks ``chooser()`` for this process's NVML: a module-like object with
    pynvml's names, or None for the real ``pynvml``. ``None`` as the chooser: always ``pynvml``."""
    global _chooser
    _chooser = chooser


def use_nvml_library(library: Any | None) -> None:
    """Make ``library`` (a module-like object with pynvml's names, e.g. a fake) this process's NVML;
    None: the real ``pynvml`` again."""
    select_nvml_library(None if library is None else (lambda: library))


def load_nvml():
    """The NVML module to use: the one chosen by the caller (:func:`use_nvml_library`), else ``pynvml``;
    None if absent."""
    chosen = _chooser() if _chooser is not None else None
    if chosen is not None:
        return chosen
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _init(nvml) -> bool:
    """nvmlInit once per module object. False when NVML or its driver is absent."""
    if nvml is None:
        return False
    if nvml in _initialised:
        return True
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        if getattr(e, "value", None) in _NO_NVML:
            return False
        raise DeviceError(f"NVML failed to initialise: {e}. Check the NVIDIA driver "
                          "(nvidia-smi should work) or unset GPU use.") from e
    except OSError:
        return False
    _initialised.add(nvml)
    return True


def nvml_available(nvml=_UNSET) -> bool:
    """True when NVML loads and initialises (a GPU may still be absent)."""
    nvml = load_nvml() if nvml is _UNSET else nvml
    try:
        return _init(nvml)
    except DeviceError:
        return False


def _str(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class NvmlDevice(Device):
    """One NVIDIA GPU. Create with :func:`resolve_gpus` (or ``NvmlDevice.from_handle``)."""

    def __init__(self, nvml, handle, info: DeviceInfo):
        self.nvml = nvml
        self.handle = handle
        self.info = info
        self._instant_ok = True
        self._counter_ok = True

    @property
    def simulated(self) -> bool:
        return bool(getattr(self.nvml, "simulated", False))

    @classmethod
    def from_handle(cls, nvml, handle, index: int) -> "NvmlDevice":
        def opt(fn, *a):
            try:
                return fn(handle, *a)
            except nvml.NVMLError as e:
                if getattr(e, "value", None) in _UNSUPPORTED:
                    return None
                raise DeviceError(f"GPU {index}: NVML {fn.__name__} failed: {e}") from e

        uuid = _str(opt(nvml.nvmlDeviceGetUUID))
        name = _str(opt(nvml.nvmlDeviceGetName))
        limit = opt(nvml.nvmlDeviceGetEnforcedPowerLimit)
        if limit is None:
            limit = opt(nvml.nvmlDeviceGetPowerManagementLimit)
        mem = opt(nvml.nvmlDeviceGetMemoryInfo)
        pci = opt(nvml.nvmlDeviceGetPciInfo)
        info = DeviceInfo(index=index, uuid=uuid, name=name, kind="gpu",
                          power_limit_w=limit / 1000.0 if limit is not None else None,
                          memory_total_bytes=int(mem.total) if mem is not None else None,
                          pci_bus_id=_str(pci.busId) if pci is not None else None,
                          counter_period_s=0.1)
        return cls(nvml, handle, info)

    # ---- error translation ----
    def _call(self, name: str, *args):
        fn = getattr(self.nvml, name, None)
        if fn is None:
            return None
        try:
            return fn(self.handle, *args)
        except self.nvml.NVMLError as e:
            if getattr(e, "value", None) in _UNSUPPORTED:
                return None
            raise DeviceError(f"GPU {self.info.index} ({self.info.uuid}): NVML {name} failed: {e}") from e

    # ---- readings ----
    def energy_counter_j(self) -> float | None:
        if not self._counter_ok:
            return None
        mj = self._call("nvmlDeviceGetTotalEnergyConsumption")
        if mj is None:
            self._counter_ok = False
            return None
        return mj / 1000.0

    def power_w(self) -> float | None:
        mw = self._call("nvmlDeviceGetPowerUsage")
        return None if mw is None else mw / 1000.0

    def instant_power_w(self) -> float | None:
        if not self._instant_ok:
            return None
        fid = getattr(self.nvml, "NVML_FI_DEV_POWER_INSTANT", NVML_FI_DEV_POWER_INSTANT)
        vals = self._call("nvmlDeviceGetFieldValues", [fid])
        if not vals:
            self._instant_ok = False
            return None
        v = vals[0]
        if getattr(v, "nvmlReturn", 0) != 0:
            self._instant_ok = False
            return None
        value = _field(v)
        return None if value is None else value / 1000.0

    def temperature_c(self) -> float | None:
        t = self._call("nvmlDeviceGetTemperature", getattr(self.nvml, "NVML_TEMPERATURE_GPU", 0))
        return None if t is None else float(t)

    def memory_used_bytes(self) -> int | None:
        m = self._call("nvmlDeviceGetMemoryInfo")
        return None if m is None else int(m.used)

    def throttle_reasons(self) -> int | None:
        r = self._call("nvmlDeviceGetCurrentClocksEventReasons")
        if r is None:
            r = self._call("nvmlDeviceGetCurrentClocksThrottleReasons")
        return None if r is None else int(r)

    def sample(self) -> dict:
        """One timeline row; a reading that fails is None (the sampler must not die)."""
        nvml = self.nvml
        row: dict[str, Any] = dict.fromkeys(SAMPLE_KEYS)
        readers = {
            "energy_j": self.energy_counter_j,
            "power_w": self.power_w,
            "power_instant_w": self.instant_power_w,
            "temperature_c": self.temperature_c,
            "sm_clock_mhz": lambda: self._call("nvmlDeviceGetClockInfo", getattr(nvml, "NVML_CLOCK_SM", 1)),
            "mem_clock_mhz": lambda: self._call("nvmlDeviceGetClockInfo", getattr(nvml, "NVML_CLOCK_MEM", 2)),
            "memory_used_bytes": self.memory_used_bytes,
            "throttle_reasons": self.throttle_reasons,
        }
        for key, fn in readers.items():
            try:
                row[key] = fn()
            except DeviceError:
                row[key] = None
        try:
            u = self._call("nvmlDeviceGetUtilizationRates")
            if u is not None:
                row["gpu_util_pct"], row["mem_util_pct"] = int(u.gpu), int(u.memory)
        except DeviceError:
            pass
        return row

    def foreign_processes(self, own_pids: set[int]) -> list[dict]:
        procs = []
        seen = set()
        for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            for p in self._call(name) or []:
                pid = int(p.pid)
                if pid in own_pids or pid in seen:
                    continue
                seen.add(pid)
                used = getattr(p, "usedGpuMemory", None)
                procs.append({"pid": pid, "used_memory_bytes": int(used) if used is not None else None})
        return procs

    def state(self) -> dict:
        nvml = self.nvml
        sm = getattr(nvml, "NVML_CLOCK_SM", 1)
        mem = getattr(nvml, "NVML_CLOCK_MEM", 2)
        mig = self._call("nvmlDeviceGetMigMode")
        ecc = self._call("nvmlDeviceGetEccMode")
        persistence = self._call("nvmlDeviceGetPersistenceMode")
        return {
            "index": self.info.index,
            "uuid": self.info.uuid,
            "name": self.info.name,
            "pci_bus_id": self.info.pci_bus_id,
            "persistence_mode": None if persistence is None else bool(persistence),
            "power_limit_w": self.info.power_limit_w,
            "pstate": self._call("nvmlDeviceGetPerformanceState"),
            "sm_clock_mhz": self._call("nvmlDeviceGetClockInfo", sm),
            "mem_clock_mhz": self._call("nvmlDeviceGetClockInfo", mem),
            "max_sm_clock_mhz": self._call("nvmlDeviceGetMaxClockInfo", sm),
            "max_mem_clock_mhz": self._call("nvmlDeviceGetMaxClockInfo", mem),
            "mig_mode": None if mig is None else int(mig[0]),
            "ecc_mode": None if ecc is None else int(ecc[0]),
            "temperature_c": self.temperature_c(),
            "memory_used_bytes": self.memory_used_bytes(),
            "memory_total_bytes": self.info.memory_total_bytes,
            "energy_counter": self.energy_counter_j() is not None,
            "instant_power": self.instant_power_w() is not None,
        }


def _field(v) -> float | None:
    vt = getattr(v, "valueType", 1)
    attr = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}.get(vt)
    return None if attr is None else float(getattr(v.value, attr))


def _all_gpus(nvml) -> list[NvmlDevice]:
    try:
        n = nvml.nvmlDeviceGetCount()
        return [NvmlDevice.from_handle(nvml, nvml.nvmlDeviceGetHandleByIndex(i), i) for i in range(n)]
    except nvml.NVMLError as e:
        raise DeviceError(f"NVML could not list GPUs: {e}") from e


def _parse_visible(value: str, gpus: list[NvmlDevice]) -> list[NvmlDevice]:
    """CUDA_VISIBLE_DEVICES -> NVML devices, in CUDA ordinal order."""
    out: list[NvmlDevice] = []
    for raw in value.split(","):
        tok = raw.strip()
        if not tok:
            # CUDA stops at the first empty or invalid entry
            break
        if tok.upper().startswith("MIG-") or tok.upper().startswith("GPU-") and "/" in tok:
            raise DeviceError(
                f"CUDA_VISIBLE_DEVICES entry {tok!r} names a MIG instance; joulebench meters whole GPUs "
                "(NVML energy counters are per GPU). Use a whole GPU's index or UUID.")
        if tok.lstrip("-").isdigit():
            idx = int(tok)
            if idx < 0:
                break
            if idx >= len(gpus):
                raise DeviceError(f"CUDA_VISIBLE_DEVICES entry {tok!r}: no GPU with that index "
                                  f"(NVML sees {len(gpus)}). Fix CUDA_VISIBLE_DEVICES.")
            out.append(gpus[idx])
            continue
        prefix = tok if tok.upper().startswith("GPU-") else f"GPU-{tok}"
        matches = [g for g in gpus if g.info.uuid.lower().startswith(prefix.lower())]
        if len(matches) != 1:
            what = "matches no GPU" if not matches else f"is ambiguous ({len(matches)} GPUs match)"
            known = ", ".join(g.info.uuid for g in gpus) or "none"
            raise DeviceError(f"CUDA_VISIBLE_DEVICES entry {tok!r} {what}; GPUs here: {known}.")
        out.append(matches[0])
    uuids = [g.info.uuid for g in out]
    if len(set(uuids)) != len(uuids):
        raise DeviceError(f"CUDA_VISIBLE_DEVICES={value!r} names the same GPU twice.")
    return out


def resolve_gpus(selection: list[int] | None = None, *, cuda_visible_devices: str | None = _UNSET,
                 nvml=_UNSET) -> list[NvmlDevice]:
    """The GPUs a trial uses, as NVML devices mapped by UUID from CUDA ordinals.

    ``selection`` holds CUDA ordinals as the (worker) process sees them; None
    means every visible GPU. ``cuda_visible_devices`` defaults to the
    environment; indices in it are taken in NVML (PCI bus) order, so set
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` when cards of different models share a host.
    Returns [] without NVML or GPUs.
    """
    nvml = load_nvml() if nvml is _UNSET else nvml
    if not _init(nvml):
        if selection:
            raise DeviceError(f"GPUs {selection} were asked for, but NVML is not available here "
                              "(no NVIDIA driver). Remove the GPU selection or run on a GPU machine.")
        return []
    gpus = _all_gpus(nvml)
    if cuda_visible_devices is _UNSET:
        cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = gpus if cuda_visible_devices is None else _parse_visible(cuda_visible_devices, gpus)
    if selection is None:
        return visible
    out = []
    for ordinal in selection:
        if not 0 <= int(ordinal) < len(visible):
            raise DeviceError(
                f"GPU {ordinal} was asked for, but this process sees {len(visible)} GPU(s)"
                + (f" (CUDA_VISIBLE_DEVICES={cuda_visible_devices!r})" if cuda_visible_devices is not None else "")
                + ". Use CUDA ordinals as the process sees them.")
        out.append(visible[int(ordinal)])
    if len({d.info.uuid for d in out}) != len(out):
        raise DeviceError(f"GPU selection {selection} names the same GPU twice.")
    return out


def gpus_by_uuid(uuids: list[str], *, nvml=_UNSET) -> list[NvmlDevice]:
    """NVML devices for exact UUIDs (used by the sampler process); unknown UUIDs raise."""
    nvml = load_nvml() if nvml is _UNSET else nvml
    if not uuids:
        return []
    if not _init(nvml):
        raise DeviceError(f"GPUs {uuids} were asked for, but NVML is not available here.")
    by = {g.info.uuid: g for g in _all_gpus(nvml)}
    missing = [u for u in uuids if u not in by]
    if missing:
        raise DeviceError(f"no GPU with UUID {missing} on this host; GPUs here: {sorted(by)}")
    return [by[u] for u in uuids]


def gpu_environment(*, nvml=_UNSET) -> dict:
    """Driver, CUDA driver and NVML versions and every GPU's state; {} without NVML."""
    nvml = load_nvml() if nvml is _UNSET else nvml
    try:
        if not _init(nvml):
            return {}
    except DeviceError as e:
        return {"error": str(e)}

    def sys(name):
        fn = getattr(nvml, name, None)
        if fn is None:
            return None
        try:
            return fn()
        except nvml.NVMLError:
            return None

    cuda = sys("nvmlSystemGetCudaDriverVersion")
    env: dict[str, Any] = {
        "driver_version": _str(sys("nvmlSystemGetDriverVersion")) if sys("nvmlSystemGetDriverVersion") else None,
        "nvml_version": _str(sys("nvmlSystemGetNVMLVersion")) if sys("nvmlSystemGetNVMLVersion") else None,
        "cuda_driver_version": f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None,
        "fake_nvml": bool(getattr(nvml, "simulated", False)),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpus": [],
    }
    try:
        env["gpus"] = [d.state() for d in _all_gpus(nvml)]
    except DeviceError as e:
        env["error"] = str(e)
    return env
