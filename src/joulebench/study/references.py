"""The study's reference measurements on the host: the device idle power (measured before the
first experiment, with no context of ours, reused while fresh) and the thermal reference (the
start temperature of the first good trial), both kept in the study's manifest."""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from joulebench.config.device import DeviceSpec
from joulebench.results.store import StudyStore
from joulebench.study.display import Display
from joulebench.study.plan import Plan


def study_gpus(plan: Plan) -> list:
    """The host GPUs that any configuration of the plan uses (NVML handles)."""
    from joulebench.devices import resolve_gpus

    ordinals: set[int] = set()
    for spec in {DeviceSpec.of(c.params) for c in plan.configs}:
        ordinals.update(spec.resolve().ordinals)
    if not ordinals:
        return []
    return resolve_gpus(sorted(ordinals))


def device_idle_reference(plan: Plan, store: StudyStore, display: Display) -> tuple[dict[str, Any] | None, list[str]]:
    """(device idle, its flags): device idle power per GPU, reused from the manifest while fresh and
    not drifted, else measured now and written to the manifest; (None, []) where there is nothing to measure."""
    measurement = plan.config.measurement
    secs = measurement.device_idle_s
    try:
        gpus = study_gpus(plan)
    except Exception as e:  # noqa: BLE001
        display.log(f"no device idle reference: {e}")
        return None, []
    if not gpus or secs <= 0:
        return None, []
    from joulebench.meters.baselines import IdleBaseline, baseline_drifted, baseline_is_stale, measure_idle_power

    flags: list[str] = []
    prev = store.read_manifest().get("device_idle")
    if prev:
        base = IdleBaseline(**prev)
        if not baseline_is_stale(base, max_age_s=measurement.baseline_max_age_s, now=time.time()):
            recheck = measure_idle_power(gpus, min(3.0, secs))
            if not baseline_drifted(base, recheck, threshold_rel=measurement.baseline_drift_rel):
                return prev, flags
            flags = ["IDLE_BASELINE_DRIFTED"]
    display.set_context(label="device idle reference", phase=f"{secs:.0f} s")
    base = measure_idle_power(gpus, secs)
    device_idle = asdict(base)
    store.update_manifest(device_idle=device_idle)
    display.log(f"device idle: {base.power_w:.1f} W over {len(gpus)} GPU(s)"
                if base.power_w is not None else "device idle: no counter")
    return device_idle, flags


def remember_thermal_reference(store: StudyStore) -> None:
    """The first good trial's start temperature becomes the study's thermal reference (once)."""
    if store.read_manifest().get("thermal_reference_c") is not None:
        return
    for rec in store.iter_records():
        t = (rec.get("thermal") or {}).get("start_temperature_c")
        if rec.get("status") == "ok" and t is not None:
            store.update_manifest(thermal_reference_c=t)
            return
