"""Device identity and the narrow interface every energy meter reads (SI units)."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DeviceInfo:
    """Identity of one metered device. ``kind`` is ``gpu``, ``cpu-package`` or ``dram``."""

    index: int                     # NVML index on this host (RAPL: package index)
    uuid: str                      # NVML UUID ("GPU-..."); RAPL: "rapl:<zone>"
    name: str
    kind: str = "gpu"
    power_limit_w: float | None = None
    memory_total_bytes: int | None = None
    pci_bus_id: str | None = None
    counter_period_s: float | None = None   # update period of the energy counter (H100: 0.1 s)

    def to_dict(self) -> dict:
        return asdict(self)


class Device:
    """A thin adapter over one vendor device. Readings return None when unsupported.

    Vendor errors other than "not supported" are translated to
    :class:`joulebench.errors.DeviceError` at this boundary.
    """

    info: DeviceInfo
    simulated: bool = False        # a test double (joulebench.testing), not hardware: results get ``fake_device``

    def energy_counter_j(self) -> float | None:
        """Monotonic total energy (J) since an arbitrary origin; None without a counter."""
        return None

    def power_w(self) -> float | None:
        """Power as the vendor reports it (NVML: a 1 s moving average on H100)."""
        return None

    def instant_power_w(self) -> float | None:
        return None

    def temperature_c(self) -> float | None:
        return None

    def memory_used_bytes(self) -> int | None:
        return None

    def sample(self) -> dict:
        """One timeline row (see :data:`SAMPLE_KEYS`); never raises for a missing reading."""
        row = dict.fromkeys(SAMPLE_KEYS)
        return row

    def foreign_processes(self, own_pids: set[int]) -> list[dict]:
        return []

    def state(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.info.kind} {self.info.index} {self.info.uuid} {self.info.name!r}>"


SAMPLE_KEYS = ("power_w", "power_instant_w", "temperature_c", "sm_clock_mhz", "mem_clock_mhz",
               "gpu_util_pct", "mem_util_pct", "memory_used_bytes", "throttle_reasons", "energy_j")
