"""Which GPUs a worker measures: the ones its device parameter asks for, then the ones the
engine really holds, and the visible rest (reported apart, never summed)."""
from __future__ import annotations

from typing import Any


def used_gpus(intended: list[int] | None, used: list[int] | None, devices: list[Any]) -> list[Any]:
    """The devices that really hold the model (a backend may spread over several GPUs)."""
    from joulebench.devices import resolve_gpus

    if used and sorted(used) != sorted(intended or []):
        return resolve_gpus(used)
    return devices


def unused_gpus(devices: list[Any]) -> list[Any]:
    """The visible GPUs a worker does not use (none when it uses no GPU)."""
    from joulebench.devices import resolve_gpus

    mine = {d.info.uuid for d in devices}
    try:
        return [g for g in resolve_gpus(None) if g.info.uuid not in mine] if devices else []
    except Exception:  # noqa: BLE001
        return []
