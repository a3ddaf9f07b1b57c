"""GPUs into containers, the way each container engine takes them.

The runner asks the engine which it is (``client.version()``: Podman names itself in
``Components``/``Platform``) and picks a passthrough method (``runner_options.docker.gpu_passthrough``):

``device-request``
    Docker with the NVIDIA Container Toolkit: one ``DeviceRequest(driver="nvidia")`` for exactly the
    experiment's GPUs, by NVML UUID. Without the toolkit Docker refuses it at start.
``device-nodes``
    Podman through its Docker-compatible API, which *silently ignores* device requests (the container
    would run on the CPU) and answers HTTP 500 to CDI names: the GPUs' device nodes
    ``/dev/nvidia<minor>`` (only the experiment's, minor numbers from NVML), ``/dev/nvidiactl``,
    ``/dev/nvidia-uvm`` (CUDA needs it; NVML does not) and ``/dev/nvidia-uvm-tools`` where present,
    plus a read-only bind of the driver folder (where ``libcuda.so.1`` lives) and ``LD_LIBRARY_PATH``.
``cdi``
    Podman only, and only when asked for (``auto`` never picks it): the experiment's GPUs by their CDI
    device names (``nvidia.com/gpu=<UUID>``, else ``=<index>``, from the CDI specs in ``/etc/cdi`` and
    ``/var/run/cdi`` or ``cdi_spec_dirs``; cdi.py), the container created through Podman's own libpod API
    (libpod.py), which takes CDI names where its Docker API does not. The engine applies the spec's
    device nodes, driver libraries and hooks. Refused on Docker (use ``device-request`` there).
``auto``
    ``device-request`` on Docker, ``device-nodes`` on Podman.

The worker learns the method (``JOULEBENCH_GPU_PASSTHROUGH``) to name the missing piece when its GPU
did not arrive (worker/gpus.py ``missing_piece``), and the records keep it.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joulebench.spec import (ENV_CONTAINER_ENGINE as ENV_ENGINE, ENV_GPU_PASSTHROUGH as ENV_PASSTHROUGH,  # noqa: F401
                             ENV_IMAGE, ENV_IMAGE_ID, ENV_RUNNER, GpuPassthrough)

AUTO = "auto"
DEVICE_REQUEST = GpuPassthrough.DEVICE_REQUEST.value
DEVICE_NODES = GpuPassthrough.DEVICE_NODES.value
CDI = GpuPassthrough.CDI.value
METHODS = (AUTO, DEVICE_REQUEST, DEVICE_NODES, CDI)

CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")   # the last is optional
DEFAULT_DRIVER_DIRS = ("/usr/local/nvidia",)


@dataclass(frozen=True)
class EngineInfo:
    """The container engine that answers: ``Docker`` or ``Podman``, its version and API version."""
    name: str
    version: str | None = None
    api_version: str | None = None

    @property
    def is_podman(self) -> bool:
        return self.name == "Podman"

    def __str__(self) -> str:
        return f"{self.name} {self.version or '?'}"


def engine_info_of(version: dict[str, Any]) -> EngineInfo:
    """Which engine answered, from the API's ``/version`` document."""
    comps = [c for c in (version.get("Components") or []) if isinstance(c, dict)]
    platform = str((version.get("Platform") or {}).get("Name") or "")
    podman = next((c for c in comps if "podman" in str(c.get("Name", "")).lower()), None)
    if podman is not None or "podman" in platform.lower():
        ver = (podman or {}).get("Version") or version.get("Version")
        return EngineInfo("Podman", ver, version.get("ApiVersion"))
    engine = next((c for c in comps if str(c.get("Name", "")).lower() == "engine"), None)
    return EngineInfo("Docker", (engine or {}).get("Version") or version.get("Version"), version.get("ApiVersion"))


def engine_info(client) -> EngineInfo:
    try:
        return engine_info_of(client.version())
    except Exception:   # noqa: BLE001 - an engine that will not say is treated as Docker
        return EngineInfo("Docker")


def resolve_method(method: str | None, engine: EngineInfo) -> str:
    """The concrete passthrough method for this engine (``auto`` picks per engine)."""
    m = method or AUTO
    if m == AUTO:
        return DEVICE_NODES if engine.is_podman else DEVICE_REQUEST
    from joulebench.errors import JoulebenchError

    if m not in METHODS:
        raise JoulebenchError(f"unknown gpu_passthrough {m!r}; one of: {', '.join(METHODS)}")
    if m == CDI and not engine.is_podman:
        raise JoulebenchError(f"gpu_passthrough cdi needs Podman (its own API takes CDI device names), but the "
                              f"engine is {engine}: on Docker use runner_options.docker.gpu_passthrough: "
                              "device-request (the NVIDIA Container Toolkit) or auto")
    return m


# --------------------------------------------------------------------------- the host's GPUs

@dataclass(frozen=True)
class HostGpu:
    index: int
    uuid: str
    minor: int


def host_gpu_table() -> list[HostGpu]:
    """Every GPU NVML sees on this host (index, UUID, minor number); [] without NVML."""
    from joulebench.devices.nvml import load_nvml

    n = load_nvml()
    if n is None:
        return []
    try:
        n.nvmlInit()
    except Exception:   # noqa: BLE001 - no driver
        return []
    out = []
    for i in range(n.nvmlDeviceGetCount()):
        h = n.nvmlDeviceGetHandleByIndex(i)
        u = n.nvmlDeviceGetUUID(h)
        u = u.decode() if isinstance(u, bytes) else u
        try:
            minor = int(n.nvmlDeviceGetMinorNumber(h))
        except Exception:   # noqa: BLE001
            minor = i
        out.append(HostGpu(i, u, minor))
    return out


def minors_for(gpus: list[str], table: list[HostGpu]) -> list[int]:
    """The device-node minor numbers of these GPUs (UUIDs or host indices)."""
    out = []
    for g in gpus:
        hit = next((h for h in table if h.uuid == g or (g.isdigit() and h.index == int(g))), None)
        if hit is None:
            from joulebench.errors import JoulebenchError

            raise JoulebenchError(f"GPU {g} is not among this host's GPUs ({[h.uuid for h in table] or 'none'}); "
                                  "device nodes need NVML's minor number of each GPU")
        out.append(hit.minor)
    return out


# --------------------------------------------------------------------------- device nodes

def find_driver_dir() -> str | None:
    """The folder holding the NVIDIA driver's ``libcuda.so.1`` (from ``ldconfig -p``)."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        m = re.match(r"\s*libcuda\.so\.1\s.*=>\s*(\S+)", line)
        if m:
            return str(Path(m.group(1)).parent)
    for d in DEFAULT_DRIVER_DIRS:
        if Path(d, "lib64", "libcuda.so.1").exists():
            return d
    return None


def driver_bind(driver_dir: str | None) -> tuple[str, str] | None:
    """(folder to bind read-only, its library folder for LD_LIBRARY_PATH)."""
    d = driver_dir or find_driver_dir()
    if not d:
        return None
    p = Path(d)
    for lib in ("lib64", "lib"):
        if (p / lib / "libcuda.so.1").exists():
            return str(p), str(p / lib)
    # ldconfig gave the library folder itself; under /usr/local/nvidia bind the whole driver folder
    if p.parent.name == "nvidia" and p.name in ("lib64", "lib"):
        return str(p.parent), str(p)
    return str(p), str(p)


@dataclass
class DeviceNodes:
    """Where the device nodes and driver are (``dev_dir`` is /dev but for tests)."""
    dev_dir: str = "/dev"
    driver_dir: str | None = None
    bind_driver: bool = True
    _bind: tuple[str, str] | None = field(default=None, init=False, repr=False)
    _resolved: bool = field(default=False, init=False, repr=False)

    def bind(self) -> tuple[str, str] | None:
        if not self._resolved:
            self._bind, self._resolved = (driver_bind(self.driver_dir) if self.bind_driver else None), True
        return self._bind

    def devices(self, minors: list[int]) -> list[str]:
        """``host:container:rwm`` entries: the GPUs' nodes, then nvidiactl, nvidia-uvm(-tools) present."""
        out = [f"{self.dev_dir}/nvidia{m}:/dev/nvidia{m}:rwm" for m in minors]
        for name in CONTROL_NODES:
            path = f"{self.dev_dir}/{name}"
            if name != "nvidia-uvm-tools" or os.path.exists(path):
                out.append(f"{path}:/dev/{name}:rwm")
        return out


def passthrough_kwargs(method: str, gpus: list[str], *, table: list[HostGpu] | None = None,
                       nodes: DeviceNodes | None = None, cdi_spec_dirs: list[str] | None = None
                       ) -> tuple[dict[str, Any], list[tuple[str, str, bool]], dict[str, str]]:
    """(create kwargs, extra read-only mounts, environment) that pass ``gpus`` in by ``method``. For
    ``cdi`` the kwargs hold ``cdi_devices`` (not a docker SDK argument: such a container is created
    through Podman's libpod API, libpod.py)."""
    if not gpus:
        return {}, [], {}
    if method == CDI:
        from joulebench.runners.docker import cdi
        from joulebench.runners.docker.libpod import CDI_DEVICES

        names = cdi.device_names(list(gpus), dirs=cdi_spec_dirs, table=table)
        return {CDI_DEVICES: names}, [], {}
    if method == DEVICE_REQUEST:
        import docker

        return {"device_requests": [docker.types.DeviceRequest(driver="nvidia", device_ids=list(gpus),
                                                               capabilities=[["gpu"]])]}, [], {}
    if method == DEVICE_NODES:
        nodes = nodes or DeviceNodes()
        minors = minors_for(gpus, table if table is not None else host_gpu_table())
        mounts, env = [], {}
        b = nodes.bind()
        if b is not None:
            mounts.append((b[0], b[0], True))
            env["LD_LIBRARY_PATH"] = b[1]
        return {"devices": nodes.devices(minors)}, mounts, env
    from joulebench.errors import JoulebenchError

    raise JoulebenchError(f"unknown GPU passthrough method {method!r}")


@dataclass
class Passthrough:
    """How this runner's containers get their GPUs: the resolved method, the host's GPU table (for device
    nodes; read from NVML when first needed) and where the nodes and the driver are."""
    method: str = DEVICE_REQUEST
    engine: EngineInfo | None = None
    nodes: DeviceNodes = field(default_factory=DeviceNodes)
    table: list[HostGpu] | None = None
    cdi_spec_dirs: list[str] | None = None     # cdi: where the CDI specs are (default /etc/cdi, /var/run/cdi)

    def apply(self, gpus: list[str]) -> tuple[dict[str, Any], list[tuple[str, str, bool]], dict[str, str]]:
        if gpus and self.method == DEVICE_NODES and self.table is None:
            self.table = host_gpu_table()
        return passthrough_kwargs(self.method, gpus, table=self.table, nodes=self.nodes,
                                  cdi_spec_dirs=self.cdi_spec_dirs)

    @classmethod
    def for_client(cls, client, method: str | None = AUTO, *, driver_dir: str | None = None,
                   dev_dir: str = "/dev", cdi_spec_dirs: list[str] | None = None) -> "Passthrough":
        engine = engine_info(client)
        return cls(resolve_method(method, engine), engine, DeviceNodes(dev_dir=dev_dir, driver_dir=driver_dir),
                   cdi_spec_dirs=list(cdi_spec_dirs) if cdi_spec_dirs else None)
