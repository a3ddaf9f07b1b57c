"""CPU package and DRAM energy from Intel/AMD RAPL through the Linux powercap sysfs tree.

Zones are ``<root>/intel-rapl:<p>`` (a package, name ``package-<p>``) and its
children ``intel-rapl:<p>:<c>`` (``core``, ``uncore``, ``dram``). Core and
uncore are *inside* the package figure, so only packages and DRAM are
metered (never summed with their nested domains). ``psys`` (the platform,
which contains the packages) and the ``intel-rapl-mmio`` duplicates are
skipped. ``energy_uj`` wraps at ``max_energy_range_uj``; each device keeps
its own running offset, so reads at least once per wrap period (minutes at
full power) give a monotonic counter. Unreadable files (recent kernels make
``energy_uj`` root-only) mean no device, not an error.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

from joulebench.devices.base import SAMPLE_KEYS, Device, DeviceInfo

DEFAULT_ROOT = "/sys/class/powercap"
_TOP = re.compile(r"^intel-rapl:(\d+)$")
_SUB = re.compile(r"^intel-rapl:(\d+):(\d+)$")


class RaplDevice(Device):
    """One RAPL zone (a CPU package or its DRAM domain) with wrap-around handling."""

    def __init__(self, zone: Path, info: DeviceInfo, max_range_uj: int):
        self.zone = Path(zone)
        self.info = info
        self.max_range_uj = int(max_range_uj)
        self._last_raw: int | None = None
        self._offset_uj = 0
        self._lock = threading.Lock()
        self._last_sample: tuple[float, float] | None = None

    def _raw(self) -> int | None:
        try:
            return int((self.zone / "energy_uj").read_text().strip())
        except (OSError, ValueError):
            return None

    def energy_counter_j(self) -> float | None:
        raw = self._raw()
        if raw is None:
            return None
        with self._lock:
            if self._last_raw is not None and raw < self._last_raw:
                # the counter wrapped (once; reads must come more often than the wrap period)
                self._offset_uj += self.max_range_uj + 1
            self._last_raw = raw
            return (self._offset_uj + raw) / 1e6

    def sample(self) -> dict:
        import time

        row = dict.fromkeys(SAMPLE_KEYS)
        e = self.energy_counter_j()
        row["energy_j"] = e
        now = time.time()
        if e is not None and self._last_sample is not None and now > self._last_sample[0]:
            row["power_w"] = (e - self._last_sample[1]) / (now - self._last_sample[0])
        if e is not None:
            self._last_sample = (now, e)
        return row

    def state(self) -> dict:
        return {"uuid": self.info.uuid, "name": self.info.name, "kind": self.info.kind,
                "zone": self.zone.name, "max_energy_range_uj": self.max_range_uj}


def _zone_device(zone: Path, index: int, kind: str, name: str) -> RaplDevice | None:
    try:
        raw = int((zone / "energy_uj").read_text().strip())
        max_range = int((zone / "max_energy_range_uj").read_text().strip())
    except (OSError, ValueError):
        return None
    del raw
    info = DeviceInfo(index=index, uuid=f"rapl:{zone.name}", name=name, kind=kind, counter_period_s=0.001)
    return RaplDevice(zone, info, max_range)


def cpu_devices(root: str | Path = DEFAULT_ROOT) -> list[RaplDevice]:
    """Package and DRAM RAPL domains under ``root``; [] where absent or unreadable."""
    root = Path(root)
    if not root.is_dir():
        return []
    out: list[RaplDevice] = []
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    for zone in entries:
        m = _TOP.match(zone.name)
        if not m:
            continue
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            continue
        if not name.startswith("package"):
            continue   # psys (platform) contains the packages: never add it to them
        pkg = int(m.group(1))
        pkg_index = int(name.split("-")[1]) if name.split("-")[-1].isdigit() else pkg
        dev = _zone_device(zone, pkg_index, "cpu-package", name)
        if dev is not None:
            out.append(dev)
        # DRAM is a sibling measurement filed under the package zone; core/uncore are inside the package
        for sub in sorted(zone.iterdir(), key=lambda p: p.name):
            if not _SUB.match(sub.name):
                continue
            try:
                sub_name = (sub / "name").read_text().strip()
            except OSError:
                continue
            if sub_name == "dram":
                d = _zone_device(sub, pkg_index, "dram", f"dram-{pkg_index}")
                if d is not None:
                    out.append(d)
    return out
