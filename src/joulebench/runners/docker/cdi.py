"""CDI (Container Device Interface) device names for the experiment's GPUs.

A CDI spec (JSON or YAML, e.g. ``/etc/cdi/nvidia.yaml`` written by
``nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml``) names devices of one ``kind``
(``nvidia.com/gpu``) and what a container needs for each (device nodes, driver libraries, hooks,
environment). nvidia-ctk names a GPU by its index (``"0"``), by its UUID (``"GPU-..."``) or both,
and usually adds ``"all"``. The engine reads the specs itself; joulebench reads them only to name
exactly the experiment's GPUs: ``nvidia.com/gpu=<UUID>`` where the spec has the UUID name, else
``nvidia.com/gpu=<index>``. ``all`` is never used (it would pass every GPU).

The spec folders are ``/etc/cdi`` and ``/var/run/cdi`` (CDI's defaults, also Podman's), or
``runner_options.docker.cdi_spec_dirs``. A later folder's device overrides an earlier one's of the
same name, as in CDI's registry.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from joulebench.errors import JoulebenchError

log = logging.getLogger(__name__)

DEFAULT_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
GPU_KIND = "nvidia.com/gpu"
ALL = "all"
SPEC_SUFFIXES = (".json", ".yaml", ".yml")
GENERATE_HINT = "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"


class CdiError(JoulebenchError):
    """No CDI spec, or none that names one of the experiment's GPUs."""


@dataclass(frozen=True)
class CdiDevice:
    kind: str
    name: str
    spec_file: str

    @property
    def qualified(self) -> str:
        """The fully-qualified CDI device name, e.g. ``nvidia.com/gpu=GPU-...``."""
        return f"{self.kind}={self.name}"


@dataclass
class CdiSpecs:
    """The CDI devices found in the spec folders, and what was read (for the error messages)."""
    dirs: tuple[str, ...]
    devices: dict[str, dict[str, CdiDevice]] = field(default_factory=dict)   # kind -> name -> device
    files: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)                     # "path: why"

    def names(self, kind: str = GPU_KIND) -> dict[str, CdiDevice]:
        return self.devices.get(kind, {})

    def where(self) -> str:
        read = ", ".join(self.files) if self.files else "no spec file"
        bad = f"; unreadable: {'; '.join(self.unreadable)}" if self.unreadable else ""
        return f"CDI spec folders {', '.join(self.dirs)} ({read}{bad})"


def load_spec_file(path: Path) -> dict[str, Any]:
    """One CDI spec file, JSON or YAML (safe loading only)."""
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("not a mapping")
    return data


def read_specs(dirs: Iterable[str] | None = None) -> CdiSpecs:
    """Every CDI device of every spec file in ``dirs`` (default ``/etc/cdi``, ``/var/run/cdi``).
    Files that do not parse, or are not CDI specs, are listed as unreadable and skipped."""
    specs = CdiSpecs(tuple(str(d) for d in (dirs if dirs is not None else DEFAULT_SPEC_DIRS)))
    for d in specs.dirs:
        folder = Path(d)
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.iterdir() if p.suffix in SPEC_SUFFIXES and p.is_file()):
            try:
                data = load_spec_file(path)
                kind = data.get("kind")
                devices = data.get("devices")
                if not isinstance(kind, str) or "/" not in kind or not isinstance(devices, list):
                    raise ValueError("no 'kind' vendor/class or no 'devices' list")
                names = [str(dev["name"]) for dev in devices if isinstance(dev, dict) and dev.get("name") is not None]
            except Exception as exc:  # noqa: BLE001 - yaml and json errors alike
                log.warning("skipping CDI spec %s: %s", path, exc)
                specs.unreadable.append(f"{path}: {exc}")
                continue
            specs.files.append(str(path))
            by_name = specs.devices.setdefault(kind, {})
            for name in names:
                by_name[name] = CdiDevice(kind, name, str(path))
    return specs


def _host_table():
    from joulebench.runners.docker.gpu import host_gpu_table

    return host_gpu_table()


def device_for(gpu: str, names: dict[str, CdiDevice], table: list) -> CdiDevice | None:
    """The CDI device of one GPU (its NVML UUID or host index): by UUID name where the spec has it, else
    by index (the host's NVML table ties a UUID to its index and back); never ``all``."""
    gpu = str(gpu)
    uuid = index = None
    if gpu.isdigit():
        index = gpu
        hit = next((h for h in table if h.index == int(gpu)), None)
        uuid = hit.uuid if hit is not None else None
    else:
        uuid = gpu
        hit = next((h for h in table if h.uuid == gpu), None)
        index = str(hit.index) if hit is not None else None
    for name in (uuid, index):
        if name is not None and name != ALL and name in names:
            return names[name]
    return None


def device_names(gpus: list[str], *, dirs: Iterable[str] | None = None, table: list | None = None,
                 table_of: Callable[[], list] = _host_table, kind: str = GPU_KIND) -> list[str]:
    """The fully-qualified CDI names of exactly these GPUs (NVML UUIDs or host indices), in order.
    Raises :class:`CdiError` naming the folders read and the fix when there is no spec, or no device
    for one of the GPUs."""
    if not gpus:
        return []
    specs = read_specs(dirs)
    names = specs.names(kind)
    if not names:
        raise CdiError(f"gpu_passthrough cdi: no CDI spec names any {kind} device in {specs.where()}. "
                       f"Fix: `{GENERATE_HINT}` on this host (or set runner_options.docker.cdi_spec_dirs "
                       "to the folders the engine reads)")
    by_uuid = any(n.startswith(("GPU-", "MIG-")) for n in names)
    if table is None and any(g not in names or (g.isdigit() and by_uuid) for g in map(str, gpus)):
        table = table_of()
    out = []
    for g in map(str, gpus):
        dev = device_for(g, names, table or [])
        if dev is None:
            listed = ", ".join(sorted(n for n in names if n != ALL)) or "none"
            raise CdiError(f"gpu_passthrough cdi: GPU {g} has no {kind} device in {specs.where()} "
                           f"(devices there: {listed}). Fix: regenerate the spec for this host's GPUs and "
                           f"driver: `{GENERATE_HINT}`")
        out.append(dev.qualified)
    return out
