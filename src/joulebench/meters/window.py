"""The energy window: hardware counters read at both edges, after device synchronisation.

    with EnergyWindow(devices, sync=backend.synchronize) as w:
        run_the_workload()
    w.result  # WindowMeasurement: per-device and total energy, duration, source, flags

Energy is the difference of each device's counter (NVML total energy, RAPL
``energy_uj``). A device without a counter (pre-Volta GPUs) falls back to
integrating instant power polled by a background thread at 20 Hz; that
figure is flagged COUNTER_UNAVAILABLE and labelled ``nvml-power-integral``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from joulebench.devices.base import Device, DeviceInfo
from joulebench.meters.flags import Flag, QualityFlag

GPU_SOURCE = "nvml-counter"
INTEGRAL_SOURCE = "nvml-power-integral"
RAPL_SOURCE = "rapl"


@dataclass(frozen=True)
class DeviceEnergy:
    info: DeviceInfo
    energy_j: float | None
    source: str | None
    start_temperature_c: float | None = None
    end_temperature_c: float | None = None

    @property
    def uuid(self) -> str:
        return self.info.uuid

    def mean_power_w(self, duration_s: float) -> float | None:
        if self.energy_j is None or duration_s <= 0:
            return None
        return self.energy_j / duration_s

    def to_dict(self, duration_s: float | None = None) -> dict:
        d = {"index": self.info.index, "uuid": self.info.uuid, "name": self.info.name, "kind": self.info.kind,
             "energy_j": self.energy_j, "energy_source": self.source,
             "start_temperature_c": self.start_temperature_c, "end_temperature_c": self.end_temperature_c}
        if duration_s:
            d["mean_power_w"] = self.mean_power_w(duration_s)
        return d


@dataclass(frozen=True)
class WindowMeasurement:
    """Immutable result of one window. ``energy_j`` totals the GPUs (the CPU domains when no GPU is metered)."""

    duration_s: float
    energy_j: float | None
    energy_source: str | None
    devices: tuple[DeviceEnergy, ...]
    flags: tuple[QualityFlag, ...]
    start_time_s: float
    end_time_s: float
    cpu_energy_j: float | None = None
    cpu_energy_source: str | None = None

    @property
    def mean_power_w(self) -> float | None:
        if self.energy_j is None or self.duration_s <= 0:
            return None
        return self.energy_j / self.duration_s

    def device(self, uuid: str) -> DeviceEnergy:
        for d in self.devices:
            if d.info.uuid == uuid:
                return d
        raise KeyError(uuid)

    def to_dict(self) -> dict:
        return {"duration_s": self.duration_s, "energy_j": self.energy_j, "energy_source": self.energy_source,
                "mean_power_w": self.mean_power_w, "cpu_energy_j": self.cpu_energy_j,
                "cpu_energy_source": self.cpu_energy_source, "start_time_s": self.start_time_s,
                "end_time_s": self.end_time_s, "devices": [d.to_dict(self.duration_s) for d in self.devices],
                "flags": [f.to_dict() for f in self.flags]}


def _source(device: Device) -> str:
    return RAPL_SOURCE if device.info.kind in ("cpu-package", "dram") else GPU_SOURCE


def _sum(items: list[DeviceEnergy]) -> tuple[float | None, str | None]:
    """Total of devices; None if any device has no figure (a partial total would under-count)."""
    if not items or any(d.energy_j is None for d in items):
        return None, None
    sources = sorted({d.source for d in items if d.source})
    return sum(d.energy_j for d in items), (sources[0] if len(sources) == 1 else "+".join(sources))


class _PowerIntegrator:
    """Background thread sampling instant power of counter-less devices (fallback only).

    The integral over exactly [window start, window end] is taken at the end with a
    zero-order hold (each sample holds until the next; the first is held back to the
    start), so a late wake-up of the thread never stretches the window.
    """

    def __init__(self, devices: list[Device], hz: float = 20.0, clock=time.perf_counter):
        self.devices = devices
        self.period = 1.0 / hz
        self.clock = clock
        self.samples: dict[str, list[tuple[float, float]]] = {d.info.uuid: [] for d in devices}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="joulebench-power-integral", daemon=True)

    def _read(self, d: Device) -> float | None:
        try:
            p = d.instant_power_w()
            return p if p is not None else d.power_w()
        except Exception:
            return None

    def _tick(self) -> None:
        for d in self.devices:
            p = self._read(d)
            if p is not None:
                self.samples[d.info.uuid].append((self.clock(), p))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._tick()

    def start(self) -> None:
        self._tick()
        self._thread.start()

    def stop(self, start_t: float, end_t: float) -> dict[str, float | None]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        out: dict[str, float | None] = {}
        for u, samples in self.samples.items():
            inside = [(t, p) for t, p in samples if t <= end_t]
            if len(inside) < 2 and end_t - start_t > 2 * self.period:
                out[u] = None          # too few samples to stand for the window
                continue
            if not inside:
                out[u] = None
                continue
            energy = 0.0
            for i, (t, p) in enumerate(inside):
                lo = start_t if i == 0 else max(start_t, t)
                hi = inside[i + 1][0] if i + 1 < len(inside) else end_t
                if hi > lo:
                    energy += p * (min(hi, end_t) - lo)
            out[u] = energy
        return out


class _WrapKeeper:
    """Reads wrapping counters (RAPL) every ``period_s`` so a long window sees every wrap.

    RAPL's ``energy_uj`` wraps after ~262 kJ (about 20 minutes at 200 W); a window
    that only read its two edges would lose whole wraps. One read every 30 s is
    far inside the wrap period and costs nothing measurable.
    """

    def __init__(self, devices: list[Device], period_s: float):
        self.devices = devices
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="joulebench-counter-keeper", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            for d in self.devices:
                try:
                    d.energy_counter_j()
                except Exception:
                    pass

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class EnergyWindow:
    """Context manager metering a block over ``devices`` (a GPU list, RAPL domains, or both)."""

    def __init__(self, devices: list[Device], *, sync: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter, wall_clock: Callable[[], float] = time.time,
                 fallback_hz: float = 20.0, keepalive_s: float = 30.0):
        uuids = [d.info.uuid for d in devices]
        if len(set(uuids)) != len(uuids):
            raise ValueError(f"the same device appears twice in the window: {uuids}")
        self.devices = list(devices)
        self.sync = sync
        self.clock = clock
        self.wall_clock = wall_clock
        self.fallback_hz = fallback_hz
        self.keepalive_s = keepalive_s
        self._keeper: _WrapKeeper | None = None
        self.result: WindowMeasurement | None = None
        self._start: dict[str, float | None] = {}
        self._temps: dict[str, float | None] = {}
        self._integrator: _PowerIntegrator | None = None
        self._t0 = 0.0
        self._wall0 = 0.0

    @staticmethod
    def _temp(d: Device) -> float | None:
        try:
            return d.temperature_c()
        except Exception:
            return None

    def __enter__(self) -> "EnergyWindow":
        self.result = None
        if self.sync is not None:
            self.sync()
        self._temps = {d.info.uuid: self._temp(d) for d in self.devices}
        fallback = []
        self._wall0 = self.wall_clock()
        self._t0 = self.clock()
        for d in self.devices:
            e = d.energy_counter_j()
            self._start[d.info.uuid] = e
            if e is None and d.info.kind == "gpu":
                fallback.append(d)
        if fallback:
            self._integrator = _PowerIntegrator(fallback, self.fallback_hz, self.clock)
            self._integrator.start()
        wrapping = [d for d in self.devices if d.info.kind != "gpu" and self._start.get(d.info.uuid) is not None]
        if wrapping and self.keepalive_s > 0:
            self._keeper = _WrapKeeper(wrapping, self.keepalive_s)
            self._keeper.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        t1: float | None = None
        try:
            if exc_type is None and self.sync is not None:
                self.sync()
            if self._keeper is not None:
                self._keeper.stop()
                self._keeper = None
            ends = {d.info.uuid: d.energy_counter_j() for d in self.devices}
            t1 = self.clock()
            wall1 = self.wall_clock()
        finally:
            if self._keeper is not None:
                self._keeper.stop()
                self._keeper = None
            end_t = t1 if t1 is not None else self.clock()
            integrated = self._integrator.stop(self._t0, end_t) if self._integrator is not None else {}
            self._integrator = None
        duration = t1 - self._t0
        flags: list[QualityFlag] = []
        per: list[DeviceEnergy] = []
        for d in self.devices:
            u = d.info.uuid
            e0, e1 = self._start.get(u), ends.get(u)
            if e0 is not None and e1 is not None and e1 >= e0:
                energy, source = e1 - e0, _source(d)
            elif e0 is not None and e1 is not None:
                # a counter that goes backwards was reset (driver reload, GPU reset): no figure
                energy, source = None, None
                flags.append(QualityFlag(Flag.ENERGY_UNAVAILABLE,
                                         f"{d.info.uuid}: energy counter went backwards ({e0:.3f} -> {e1:.3f} J)"))
            elif u in integrated:
                energy, source = integrated[u], INTEGRAL_SOURCE if integrated[u] is not None else None
            else:
                energy, source = None, None
            per.append(DeviceEnergy(d.info, energy, source, self._temps.get(u), self._temp(d)))
        fell_back = [p for p in per if p.source == INTEGRAL_SOURCE]
        if fell_back:
            flags.append(QualityFlag(Flag.COUNTER_UNAVAILABLE,
                                     "power integral for " + ", ".join(f"GPU {p.info.index}" for p in fell_back)))
        fakes = [d for d in self.devices if getattr(d, "simulated", False)]
        if fakes:
            flags.append(QualityFlag(Flag.FAKE_DEVICE, ", ".join(d.info.uuid for d in fakes)))
        gpus = [p for p in per if p.info.kind == "gpu"]
        cpus = [p for p in per if p.info.kind != "gpu"]
        gpu_total, gpu_src = _sum(gpus)
        cpu_total, cpu_src = _sum(cpus)
        if gpus:
            total, source = gpu_total, gpu_src
        else:
            total, source = cpu_total, cpu_src
        if total is None:
            missing = [p.info.uuid for p in (gpus or cpus) if p.energy_j is None]
            flags.append(QualityFlag(Flag.ENERGY_UNAVAILABLE,
                                     "no devices metered" if not per else f"no energy reading from {missing}"))
        self.result = WindowMeasurement(
            duration_s=duration, energy_j=total, energy_source=source, devices=tuple(per), flags=tuple(flags),
            start_time_s=self._wall0, end_time_s=wall1,
            cpu_energy_j=cpu_total if gpus else None, cpu_energy_source=cpu_src if gpus else None)
        return False
