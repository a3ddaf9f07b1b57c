"""Pre-flight of the measured GPUs (METHODOLOGY.md section 3, phase 1).

Records each GPU's state (persistence mode, power limit, P-state, clocks, MIG,
ECC, memory in use) and refuses to meter a GPU that another process is using,
unless the user allows it (then the trial carries a FOREIGN_PROCESS flag).

NVML lists host PIDs; inside a container our own PIDs differ, so run the
pre-flight on the host side (own_pids = the host PIDs of the trial, or empty).
"""
from __future__ import annotations

import os

from joulebench.devices.base import Device
from joulebench.errors import DeviceError
from joulebench.meters.flags import Flag, QualityFlag

RESIDUAL_MEMORY_BYTES = 1 << 30      # memory in use with no process listed, above which we warn


def preflight(devices: list[Device], *, allow_foreign: bool, own_pids: set[int] | None = None,
              residual_memory_bytes: int = RESIDUAL_MEMORY_BYTES) -> dict:
    """State of every measured device plus quality flags (``flags``: list of dicts).

    Raises DeviceError naming the GPU and PIDs when a foreign process is on a
    measured GPU and ``allow_foreign`` is False.
    """
    own = set(own_pids or ()) | {os.getpid()}
    report: dict = {"devices": [], "foreign_processes": [], "flags": []}
    flags: list[QualityFlag] = []
    foreign_all = []
    for d in devices:
        try:
            state = d.state()
        except DeviceError as e:
            raise DeviceError(f"pre-flight: cannot read the state of {d.info.kind} {d.info.index} "
                              f"({d.info.uuid}): {e}") from e
        procs = d.foreign_processes(own) if d.info.kind == "gpu" else []
        state = dict(state, foreign_processes=procs)
        report["devices"].append(state)
        for p in procs:
            foreign_all.append({"device_index": d.info.index, "device_uuid": d.info.uuid, **p})
        used = state.get("memory_used_bytes")
        # Residual: memory in use that no process accounts for. Our own processes count as listed (the trial's
        # pre-flight runs with the model loaded, so its memory is in use; seen as a false flag on H100/H200).
        listed = procs or (d.foreign_processes(set()) if d.info.kind == "gpu" and used else [])
        if d.info.kind == "gpu" and not listed and used is not None and used > residual_memory_bytes:
            flags.append(QualityFlag(Flag.RESIDUAL_MEMORY,
                                     f"GPU {d.info.index}: {used / 2**30:.1f} GiB in use, no process listed"))
    report["foreign_processes"] = foreign_all
    if foreign_all:
        detail = "; ".join(f"GPU {p['device_index']} ({p['device_uuid']}): pid {p['pid']}"
                           + (f" using {p['used_memory_bytes'] / 2**20:.0f} MiB" if p.get("used_memory_bytes") else "")
                           for p in foreign_all)
        if not allow_foreign:
            raise DeviceError(
                f"other processes are using the GPUs to be measured: {detail}. Their energy would be "
                "counted as this trial's. Wait until the GPUs are free, choose other GPUs, or set "
                "measurement.allow_foreign_processes: true to measure anyway (results are flagged).")
        flags.append(QualityFlag(Flag.FOREIGN_PROCESS, detail))
    report["flags"] = [f.to_dict() for f in flags]
    return report


def preflight_flags(report: dict) -> list[QualityFlag]:
    """The typed flags of a pre-flight report (its ``flags`` are JSON-ready dicts)."""
    return [QualityFlag(Flag(f["code"]), f.get("detail")) for f in report.get("flags", [])]
