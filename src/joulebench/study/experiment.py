"""One experiment of a study, host side: its typed spec, the console progress of its events, the
record of a trial that failed without the worker writing one, and a trial's one-line summary."""
from __future__ import annotations

import json
import time
from typing import Any

from joulebench.config.loader import LoadedStudy
from joulebench.results.schema import SCHEMA_VERSION, TrialRecord
from joulebench.results.store import StudyStore
from joulebench.runners.base import ExperimentOutcome
from joulebench.spec import (ErrorKind, Event, ExperimentEndEvent, ExperimentSpec, Phase, PhaseEvent, TrialEndEvent,
                             TrialSpec, TrialStartEvent)
from joulebench.study.display import Display
from joulebench.study.plan import Configuration, trial_id_for


def experiment_spec(loaded: LoadedStudy, store: StudyStore, experiment_id: str, r: int,
                    configs: list[Configuration], *, device_idle: dict[str, Any] | None,
                    device_idle_flags: list[str], allow_foreign_processes: bool) -> ExperimentSpec:
    """The typed contract the worker gets: round ``r`` of ``configs`` (one load group)."""
    cfg = loaded.config
    measurement = cfg.measurement
    if allow_foreign_processes:   # measure beside other users; the worker flags foreign_process
        measurement = measurement.model_copy(update={"allow_foreign_processes": True})
    return ExperimentSpec(
        experiment_id=experiment_id, study=cfg.name, round=r,
        base_dir=str(loaded.base_dir), seed=cfg.seed,
        trust_remote_code=cfg.trust_remote_code,
        measurement=measurement,
        device_idle=device_idle, device_idle_flags=list(device_idle_flags),
        thermal_reference_c=store.read_manifest().get("thermal_reference_c"),
        trials=[TrialSpec(trial_id=trial_id_for(c.config_id, r), config_id=c.config_id, repeat=r, round=r,
                          params=c.params) for c in configs],
    )


def trial_summary(store: StudyStore, tid: str | None) -> str | None:
    """One console line for a finished trial, from its record; None where there is no record."""
    if not tid:
        return None
    try:
        rec = json.loads(store.trial_path(tid).read_text())
    except Exception:  # noqa: BLE001
        return None
    if rec.get("status") != "ok":
        return f"trial {tid} failed: {rec.get('error')}"
    e = rec.get("energy_per_output_token_j")
    tps = rec.get("throughput_tok_s") or 0
    en = f"{e:.4g} J/tok" if e is not None else "energy n/a"
    return f"trial {tid} ok: {tps:.1f} tok/s, {en}, {rec.get('duration_s', 0):.1f} s window"


def write_failed_trial(store: StudyStore, display: Display, study: str, c: Configuration, r: int, error: str,
                       kind: ErrorKind, outcome: ExperimentOutcome | None) -> None:
    """The record of a trial the worker could not finish (crash, hang, interrupt), and its log tail."""
    tid = trial_id_for(c.config_id, r)
    rec = TrialRecord(trial_id=tid, config_id=c.config_id, study=study, params=c.params, repeat=r,
                      round=r, status="failed", error=error, error_kind=kind, finished_at=time.time(),
                      experiment_id=outcome.experiment_id if outcome else None,
                      schema_version=SCHEMA_VERSION).model_dump(mode="json")
    if outcome and outcome.log_tail:
        (store.logs_dir / f"{tid}.log").write_text(outcome.log_tail)
    store.write_record(rec)
    display.advance(f"trial {tid} failed ({ErrorKind(kind).value}): {error}")


class ExperimentProgress:
    """The ``on_event`` handler of one experiment: console progress, and the trial in flight."""

    def __init__(self, store: StudyStore, display: Display, r: int, label: str, trial_ids: list[str],
                 labels: dict[str, str]):
        self.store = store
        self.display = display
        self.round = r
        self.label = label
        self.trial_ids = trial_ids
        self.labels = labels
        self.in_flight: str | None = None
        self.announced: set[str] = set()

    def __call__(self, ev: Event) -> None:
        r = self.round
        if isinstance(ev, ExperimentEndEvent) and ev.error:
            # the experiment failed before its trials ran (a load failure): each trial's reason, once
            for tid in self.trial_ids:
                summary = None if tid in self.announced else trial_summary(self.store, tid)
                if summary:
                    self.announced.add(tid)
                    self.display.advance(summary)
        if isinstance(ev, TrialStartEvent):
            self.in_flight = ev.trial_id
            self.display.set_context(label=f"round {r + 1} · {self.labels.get(self.in_flight, '')}", phase="")
        elif isinstance(ev, TrialEndEvent):
            self.announced.add(ev.trial_id)
            self.in_flight = None
            self.display.advance(trial_summary(self.store, ev.trial_id))
        elif isinstance(ev, PhaseEvent) and ev.phase == Phase.LOAD:
            self.display.set_context(label=f"round {r + 1} · loading {self.label}", phase=Phase.LOAD.value)
        self.display.event(ev)
