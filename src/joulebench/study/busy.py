"""Other users on the study's GPUs (a shared box): the checks before the device idle reference and
before each experiment, the deferrals they make, and the notes they leave in the records
(``preflight.busy_gpu``). The decisions themselves are the :class:`BusyGpuGate`'s (locks.py)."""
from __future__ import annotations

from typing import Any, Callable

from joulebench.results.store import StudyStore
from joulebench.study.locks import BusyGpuGate, GpuBusy, experiment_gpus
from joulebench.study.plan import Configuration


class BusyGuard:
    """The busy-GPU checks of one study run. ``enabled`` False (Ray: the GPUs are on another node): every
    check passes."""

    def __init__(self, cfg, *, enabled: bool, log: Callable[[str], None]):
        self.cfg = cfg
        self.gate = BusyGpuGate.from_config(cfg, log=log)
        self.enabled = enabled
        self.log = log
        self.note: dict[str, Any] | None = None          # what the last experiment's check saw
        self.deferred: dict[str, dict[str, Any]] = {}    # trial id -> note of its deferral

    def before_idle_reference(self, gpus: Callable[[], list]) -> None:
        """No device idle reference while other users are on the GPUs: wait (bounded) or stop."""
        policy = self.gate.policy
        if not self.enabled or policy == "allow" or self.cfg.measurement.device_idle_s <= 0:
            return
        try:
            devices = gpus()
        except Exception:  # noqa: BLE001 - the device idle reference reports it
            return
        self.gate.policy = "stop" if policy == "stop" else "wait"
        try:
            d = self.gate.check(devices, label="device idle reference")
        finally:
            self.gate.policy = policy
        if d.action == "stop":
            raise GpuBusy(f"GPUs in use by other processes ({d.note.get('detail')}) before the device idle "
                          f"reference, busy_gpu: {policy}")

    def before_experiment(self, r: int, configs: list[Configuration], tids: list[str],
                          own_pids: Callable[[], set[int]]) -> bool:
        """Before an experiment: other users on its GPUs? True: run it; False: deferred; GpuBusy: stop.
        ``own_pids``: our own workers kept alive between rounds (their memory is not another user's)."""
        self.note = None
        if not self.enabled:
            return True
        try:
            gpus = experiment_gpus(configs[0].params)
        except Exception as e:  # noqa: BLE001 - the worker reports device problems in the record
            self.log(f"busy-GPU check skipped: {e}")
            return True
        d = self.gate.check(gpus, own_pids=own_pids(), label=f"round {r + 1} · {configs[0].load_group}")
        if d.action == "defer":
            for t in tids:
                self.deferred[t] = {**d.note, "round": r}
            return False
        if d.action == "stop":
            raise GpuBusy(f"GPUs in use by other processes ({d.note.get('detail')}), busy_gpu: "
                          f"{self.gate.policy}")
        self.note = d.note or None
        return True

    def record_notes(self, store: StudyStore, eid: str, tids: list[str]) -> None:
        """Say in the records what the busy-GPU check saw and did (``preflight.busy_gpu``)."""
        records = store.records_by_id()
        for t in tids:
            rec = records.get(t)
            note = dict(self.note or {})
            if t in self.deferred:
                note["deferred"] = self.deferred[t]
            if not note or not rec or rec.get("experiment_id") != eid:
                continue
            rec["preflight"] = {**(rec.get("preflight") or {}), "busy_gpu": note}
            store.write_record(rec)
