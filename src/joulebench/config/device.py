"""The ``device`` parameter, parsed once into a typed value.

Accepted forms (a study's ``device:``, or a sweep / experiment value)::

    auto        a GPU when one is present (CUDA ordinal 0), else the CPU
    cpu         the CPU
    cuda        CUDA ordinal 0
    cuda:N      one GPU, CUDA ordinal N
    cuda:N,M    several GPUs (one model spread over them)

Ordinals are CUDA ordinals as the process running the experiment sees them (the host's
GPUs, in NVML order, for the process and docker runners; the GPUs Ray assigned inside a
Ray task). :meth:`DeviceSpec.resolve` maps them to the NVML devices (UUIDs) present here.
Pure except :meth:`DeviceSpec.resolve` and :func:`cuda_present` (NVML).
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Iterable

DEFAULT_DEVICE = "auto"
DEVICE_FORMS = "auto, cpu, cuda, cuda:N or cuda:N,M,..."
_PATTERN = re.compile(r"(auto|cpu|cuda)(?::(\d+(?:,\d+)*))?")


class DeviceKind(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class DeviceSpecError(ValueError):
    """A device string that is not one of the accepted forms; the message names the value."""


@dataclass(frozen=True)
class DeviceSpec:
    kind: DeviceKind
    ordinals: tuple[int, ...] = ()   # explicit CUDA ordinals (cuda:N,...); () for auto, cpu and bare cuda

    # ------------------------------------------------------------------ parsing
    @classmethod
    def parse(cls, value: Any = None) -> "DeviceSpec":
        """``value`` (None: the default, auto) -> DeviceSpec; DeviceSpecError naming the value otherwise."""
        if isinstance(value, DeviceSpec):
            return value
        if value is None:
            value = DEFAULT_DEVICE
        if not isinstance(value, str):
            raise DeviceSpecError(f"device {value!r} is not a string; use {DEVICE_FORMS}")
        m = _PATTERN.fullmatch(value)
        if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
            raise DeviceSpecError(f"device {value!r} is not valid; use {DEVICE_FORMS}")
        ordinals = tuple(int(x) for x in m.group(2).split(",")) if m.group(2) else ()
        if len(set(ordinals)) != len(ordinals):
            raise DeviceSpecError(f"device {value!r} names the same GPU twice")
        return cls(DeviceKind(m.group(1)), ordinals)

    @classmethod
    def of(cls, params: dict[str, Any]) -> "DeviceSpec":
        """The device of a configuration's parameters (absent: auto)."""
        return cls.parse(params.get("device", DEFAULT_DEVICE))

    def __str__(self) -> str:
        if self.ordinals:
            return "cuda:" + ",".join(str(o) for o in self.ordinals)
        return self.kind.value

    # ------------------------------------------------------------------ questions
    @property
    def is_cpu(self) -> bool:
        return self.kind is DeviceKind.CPU

    @property
    def is_auto(self) -> bool:
        return self.kind is DeviceKind.AUTO

    def intended_ordinals(self, cuda_is_present: bool) -> list[int]:
        """CUDA ordinals this device asks for: [] for the CPU (or auto / cuda without a GPU here)."""
        if self.is_cpu:
            return []
        if self.ordinals:
            return list(self.ordinals)
        return [0] if cuda_is_present else []

    def count(self, *, gpus_present: bool) -> int:
        """How many GPUs it needs: auto takes one only where GPUs exist; cuda always at least one."""
        if self.is_cpu:
            return 0
        if self.is_auto:
            return 1 if gpus_present else 0
        return max(1, len(self.ordinals))

    def resolved(self, *, cuda_available: bool) -> "DeviceSpec":
        """auto -> cuda:0 or cpu; cuda -> cuda:0; explicit forms unchanged."""
        if self.is_auto:
            return DeviceSpec(DeviceKind.CUDA, (0,)) if cuda_available else DeviceSpec(DeviceKind.CPU)
        if self.kind is DeviceKind.CUDA and not self.ordinals:
            return DeviceSpec(DeviceKind.CUDA, (0,))
        return self

    def torch_device(self, *, cuda_available: bool) -> str:
        """The torch device of the first (or only) device: 'cpu' or 'cuda:N'."""
        r = self.resolved(cuda_available=cuda_available)
        return f"cuda:{r.ordinals[0]}" if r.ordinals else "cpu"

    def renumbered(self) -> "DeviceSpec":
        """The same device for a process that sees only its GPUs, in this order (a container given exactly
        the experiment's GPUs, a Ray task): cuda:2,3 -> cuda:0,1; the other forms unchanged."""
        if not self.ordinals:
            return self
        return DeviceSpec(DeviceKind.CUDA, tuple(range(len(self.ordinals))))

    # ------------------------------------------------------------------ resolution (NVML)
    def resolve(self, *, nvml_gpus=None) -> "ResolvedDevice":
        """The NVML devices this device uses on this host (ordinals + UUIDs). DeviceError when an
        ordinal does not exist. ``nvml_gpus``: resolve_gpus-like callable (tests)."""
        if nvml_gpus is None:
            from joulebench.devices import resolve_gpus as nvml_gpus
        if self.is_cpu:
            return ResolvedDevice(self, (), (), [])
        ordinals = self.intended_ordinals(cuda_present(nvml_gpus)) if not self.ordinals else list(self.ordinals)
        devices = nvml_gpus(ordinals) if ordinals else []
        return ResolvedDevice(self, tuple(ordinals), tuple(d.info.uuid for d in devices), devices)


@dataclass(frozen=True)
class ResolvedDevice:
    spec: DeviceSpec
    ordinals: tuple[int, ...]
    uuids: tuple[str, ...]
    devices: list            # the NVML devices (joulebench.devices.NvmlDevice)

    @property
    def count(self) -> int:
        return len(self.ordinals)


def cuda_present(nvml_gpus=None) -> bool:
    """Whether NVML sees a GPU visible to this process (False without NVML)."""
    if nvml_gpus is None:
        from joulebench.devices import resolve_gpus as nvml_gpus
    try:
        return bool(nvml_gpus(None))
    except Exception:  # noqa: BLE001 - no NVML / broken driver: no GPU
        return False


def validate_device(value: Any) -> str:
    """Pydantic field validator: the string itself (kept as written: it is part of config ids)."""
    DeviceSpec.parse(value)
    return value


# ---------------------------------------------------------------------- the GPU fence (runner_options.gpus)
def fence_problems(fence: Iterable[int | str] | None, used: Iterable[tuple[str, DeviceSpec]]) -> list[str]:
    """Pure part of the fence check: explicit ordinals outside a fence of ordinals. ``used``: (where, spec)."""
    if fence is None:
        return []
    fence = list(fence)
    allowed = {int(g) for g in fence if _is_ordinal(g)}
    if any(not _is_ordinal(g) for g in fence):
        return []   # UUIDs in the fence: checked after resolution (fence_violations)
    out: list[str] = []
    for where, spec in used:
        outside = [o for o in spec.ordinals if o not in allowed]
        if outside:
            _add_once(out, f"{where}: device '{spec}' uses GPU {', '.join(map(str, outside))}, outside "
                       f"runner_options.gpus {sorted(allowed)}")
    return out


def fence_uuids(fence: Iterable[int | str], *, nvml_gpus=None) -> set[str]:
    """The UUIDs of a fence of host ordinals and/or UUIDs (NVML)."""
    if nvml_gpus is None:
        from joulebench.devices import resolve_gpus as nvml_gpus
    items = list(fence)
    ordinals = [int(g) for g in items if _is_ordinal(g)]
    uuids = {str(g) for g in items if not _is_ordinal(g)}
    return uuids | {d.info.uuid for d in (nvml_gpus(ordinals) if ordinals else [])}


def fence_violations(fence: Iterable[int | str] | None, used: Iterable[tuple[str, ResolvedDevice]], *,
                     nvml_gpus=None) -> list[str]:
    """Resolved devices using a GPU outside the fence: one message per configuration that does."""
    used = [(where, res) for where, res in used if res.uuids]
    if fence is None or not used:
        return []
    fence = list(fence)
    allowed = fence_uuids(fence, nvml_gpus=nvml_gpus)
    out: list[str] = []
    for where, res in used:
        outside = [f"{o} ({u})" for o, u in zip(res.ordinals, res.uuids) if u not in allowed]
        if outside:
            _add_once(out, f"{where}: device '{res.spec}' uses GPU {', '.join(outside)}, outside runner_options.gpus "
                       f"{list(fence)}")
    return out


def _add_once(out: list[str], message: str) -> None:
    if message not in out:
        out.append(message)


def _is_ordinal(g: int | str) -> bool:
    return isinstance(g, int) or str(g).isdigit()
