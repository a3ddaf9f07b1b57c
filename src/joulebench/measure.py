"""``joulebench.measure``: meter any block of Python code with the trial's meters.

    import joulebench
    with joulebench.measure(devices=[0], loaded_idle_s=5) as m:
        model.generate(...)
    r = m.result                    # immutable Measurement
    r.energy_j, r.energy_above_loaded_idle_j, r.duration_s, r.flags, r.timeline

Same counters, baselines, sampler and quality flags as a study trial: energy
from the NVML counters of exactly the GPUs named (CUDA ordinals as this
process sees them; None = all visible), CPU/DRAM from RAPL where readable,
a 10 Hz timeline from a separate sampler process.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from joulebench.devices import FAKE_ENV, cpu_devices, resolve_gpus
from joulebench.meters.baselines import IdleBaseline, energy_above, measure_idle_power
from joulebench.meters.flags import QualityFlag, window_flags
from joulebench.meters.sampler import Sampler
from joulebench.meters.window import EnergyWindow, WindowMeasurement

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


@dataclass(frozen=True)
class Measurement:
    window: WindowMeasurement
    flags: tuple[QualityFlag, ...]
    timeline: "pd.DataFrame | None" = field(default=None, compare=False, repr=False)
    loaded_idle: IdleBaseline | None = None
    device_idle: IdleBaseline | None = None
    unused: WindowMeasurement | None = None     # visible GPUs not named: reported apart, never summed

    @property
    def energy_j(self) -> float | None:
        return self.window.energy_j

    @property
    def energy_source(self) -> str | None:
        return self.window.energy_source

    @property
    def duration_s(self) -> float:
        return self.window.duration_s

    @property
    def mean_power_w(self) -> float | None:
        return self.window.mean_power_w

    @property
    def energy_above_loaded_idle_j(self) -> float | None:
        idle = self.loaded_idle.power_w if self.loaded_idle else None
        return energy_above(self.energy_j, idle, self.duration_s)

    @property
    def energy_above_device_idle_j(self) -> float | None:
        idle = self.device_idle.power_w if self.device_idle else None
        return energy_above(self.energy_j, idle, self.duration_s)

    def to_dict(self) -> dict:
        d = self.window.to_dict()
        d["flags"] = [f.to_dict() for f in self.flags]
        d["energy_above_loaded_idle_j"] = self.energy_above_loaded_idle_j
        d["energy_above_device_idle_j"] = self.energy_above_device_idle_j
        d["loaded_idle"] = self.loaded_idle.to_dict() if self.loaded_idle else None
        d["device_idle"] = self.device_idle.to_dict() if self.device_idle else None
        d["unused_devices"] = ([x.to_dict(self.unused.duration_s) for x in self.unused.devices]
                               if self.unused else [])
        return d


def auto_sync() -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` on every initialised device, if torch is in use; else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return None
    except Exception:
        return None

    def sync() -> None:
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)

    return sync


class Meter:
    """The context manager returned by :func:`measure`; ``result`` is set on exit."""

    def __init__(self, devices: list[int] | None = None, *, loaded_idle_s: float = 0.0, sync="auto",
                 sampler: bool = True, cpu: bool = True, hz: float = 10.0,
                 device_idle: IdleBaseline | None = None, rapl_root: str | None = None):
        self.gpus = resolve_gpus(devices)
        used = {g.info.uuid for g in self.gpus}
        self.unused_gpus = [g for g in resolve_gpus(None) if g.info.uuid not in used] if devices is not None else []
        self.cpus = (cpu_devices(rapl_root) if rapl_root else cpu_devices()) if cpu else []
        self.loaded_idle_s = loaded_idle_s
        self._sync_arg = sync
        self.use_sampler = sampler
        self.hz = hz
        self.device_idle = device_idle
        self.rapl_root = rapl_root
        self.result: Measurement | None = None
        self._window: EnergyWindow | None = None
        self._sampler: Sampler | None = None
        self._loaded_idle: IdleBaseline | None = None
        self._unused_window: EnergyWindow | None = None

    @property
    def devices(self):
        return self.gpus + self.cpus

    def _sync(self):
        return auto_sync() if self._sync_arg == "auto" else self._sync_arg

    def __enter__(self) -> "Meter":
        sync = self._sync()
        if self.loaded_idle_s > 0 and self.devices:
            self._loaded_idle = measure_idle_power(self.devices, self.loaded_idle_s, sync=sync)
        if self.use_sampler and self.devices:
            self._sampler = Sampler([g.info.uuid for g in self.gpus], hz=self.hz, cpu=bool(self.cpus),
                                    rapl_root=self.rapl_root)
            self._sampler.start()
        self._window = EnergyWindow(self.devices, sync=sync)
        self._unused_window = EnergyWindow(self.unused_gpus) if self.unused_gpus else None
        try:
            if self._unused_window is not None:
                self._unused_window.__enter__()
            self._window.__enter__()
        except BaseException:
            if self._sampler is not None:
                self._sampler.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._window is not None
        try:
            self._window.__exit__(exc_type, exc, tb)
            if self._unused_window is not None:
                self._unused_window.__exit__(exc_type, exc, tb)
        finally:
            timeline = self._sampler.stop() if self._sampler is not None else None
        w = self._window.result
        if w is not None:
            flags = list(w.flags) + window_flags(w, timeline, device_idle=self.device_idle, sampler_hz=self.hz)
            unused = self._unused_window.result if self._unused_window is not None else None
            self.result = Measurement(w, tuple(flags), timeline, self._loaded_idle, self.device_idle, unused)
        return False


def measure(devices: list[int] | None = None, *, loaded_idle_s: float = 0.0, sync="auto",
            sampler: bool = True, cpu: bool = True, hz: float = 10.0,
            device_idle: IdleBaseline | None = None) -> Meter:
    """Meter a block: ``with measure(devices=[0]) as m: work()``; then ``m.result``.

    ``devices``: CUDA ordinals as this process sees them (None: all visible GPUs).
    ``loaded_idle_s``: measure loaded-idle power for that long before the window.
    ``sync``: callable run before reading counters at both edges ("auto": torch.cuda
    synchronise when torch has a CUDA context; None: no synchronisation).
    """
    return Meter(devices, loaded_idle_s=loaded_idle_s, sync=sync, sampler=sampler, cpu=cpu, hz=hz,
                 device_idle=device_idle)


__all__ = ["measure", "Measurement", "Meter", "auto_sync", "FAKE_ENV"]
