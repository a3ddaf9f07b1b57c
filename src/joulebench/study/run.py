"""Starting and resuming a study: the study folder, the device and study locks, the orchestrator,
the report. ``run_study`` and ``resume_study`` are what the CLI and the Python API call."""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

from joulebench import __version__
from joulebench.config.device import DeviceSpec, fence_violations
from joulebench.config.loader import LoadedStudy, load_study, parse_study_text
from joulebench.errors import JoulebenchError, ResumeError
from joulebench.results.store import (DEFAULT_RESULTS_ROOT, StudyStore, atomic_write_bytes, atomic_write_json,
                                     sha256_bytes)
from joulebench.runners.registry import RunnerKind, capabilities, make_runner, resolve_kind
from joulebench.study.display import Display
from joulebench.study.locks import StudyLock, study_lock
from joulebench.study.orchestrator import Orchestrator, StudyResult
from joulebench.study.plan import Plan, build_plan



def default_study_dir(name: str, root: Path | None = None) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(root or DEFAULT_RESULTS_ROOT) / f"{name}-{stamp}"


def _prepare_new_study(loaded: LoadedStudy, plan: Plan, study_dir: Path, source_path: str | None) -> StudyStore:
    store = StudyStore(study_dir)
    if (study_dir / "manifest.json").exists():
        raise JoulebenchError(f"{study_dir} already holds a study; use `joulebench resume {study_dir}` "
                              "or choose another --out")
    store.create()
    atomic_write_bytes(study_dir / "study.yaml", loaded.text.encode())
    atomic_write_json(study_dir / "plan.json", plan.to_json())
    store.update_manifest(study=plan.study, created_at=time.time(), joulebench_version=__version__,
                          study_sha256=sha256_bytes(loaded.text.encode()), source_path=source_path,
                          base_dir=str(loaded.base_dir), plan_fingerprint=plan.fingerprint(),
                          runner=loaded.config.runner, status="planned")
    return store


def run_study(source, *, out: str | Path | None = None, runner: str | None = None, quiet: bool = False,
              display: Display | None = None, report: bool = True, on_busy_lock: str | None = None,
              lock_wait_s: float | None = None) -> StudyResult:
    loaded = source if isinstance(source, LoadedStudy) else load_study(source)
    plan = build_plan(loaded)
    study_dir = Path(out) if out else default_study_dir(loaded.config.name)
    display = display or Display(quiet=quiet)
    source_path = str(Path(source).resolve()) if isinstance(source, (str, Path)) else None
    kind = resolve_kind(runner or loaded.config.runner, display.log)
    with _device_lock(loaded, plan, study_dir, kind, on_busy_lock, lock_wait_s, display), StudyLock(study_dir):
        _prepare_new_study(loaded, plan, study_dir, source_path)
        result = _execute(loaded, plan, study_dir, kind, display)
    if report:
        _report(study_dir, display)
    return result


def resume_study(study_dir: str | Path, *, runner: str | None = None, quiet: bool = False,
                 display: Display | None = None, retry_failed: bool = False, report: bool = True,
                 on_busy_lock: str | None = None, lock_wait_s: float | None = None) -> StudyResult:
    study_dir = Path(study_dir)
    store = StudyStore(study_dir)
    manifest = store.read_manifest()
    if not manifest or not (study_dir / "study.yaml").exists():
        raise ResumeError(f"{study_dir} is not a joulebench study directory (no manifest.json / study.yaml)")
    text = (study_dir / "study.yaml").read_text()
    src = manifest.get("source_path")
    if src and Path(src).exists():
        current = Path(src).read_bytes()
        if sha256_bytes(current) != manifest.get("study_sha256"):
            raise ResumeError(f"the study file {src} changed since this study started; resuming would mix two "
                              "different studies. Restore the file, or start a new study with `joulebench run`")
    base_dir = Path(manifest.get("base_dir") or study_dir)
    loaded = parse_study_text(text, file=str(study_dir / "study.yaml"), base_dir=base_dir)
    plan = build_plan(loaded)
    if plan.fingerprint() != manifest.get("plan_fingerprint"):
        raise ResumeError("the plan of this study differs from the one it started with (another joulebench "
                          "version?); start a new study instead")
    display = display or Display(quiet=quiet)
    kind = resolve_kind(runner or loaded.config.runner, display.log)
    with _device_lock(loaded, plan, study_dir, kind, on_busy_lock, lock_wait_s, display), StudyLock(study_dir):
        result = _execute(loaded, plan, study_dir, kind, display, retry_failed=retry_failed)
    if report:
        _report(study_dir, display)
    return result


def _execute(loaded: LoadedStudy, plan: Plan, study_dir: Path, kind: RunnerKind, display: Display, *,
             retry_failed: bool = False) -> StudyResult:
    runner = make_runner(kind, loaded.config.runner_options)
    orch = Orchestrator(loaded, plan, study_dir, runner, display)
    orch.retry_failed = retry_failed
    return orch.run()


def _device_lock(loaded: LoadedStudy, plan: Plan, study_dir: Path, kind: RunnerKind, policy: str | None,
                 wait_s: float | None, display: Display):
    """One joulebench per set of GPUs on this host (locks.py); none for Ray (the cluster schedules GPUs).
    A study whose GPUs lie outside ``runner_options.gpus`` is refused here, before anything runs."""
    import contextlib

    if not capabilities(kind).host_gpus:
        return contextlib.nullcontext()
    _check_gpu_fence(plan, loaded)
    return study_lock(plan, loaded.config, study_dir=study_dir, policy=policy, wait_s=wait_s, log=display.log)


def _check_gpu_fence(plan: Plan, loaded: LoadedStudy) -> None:
    """``runner_options.gpus``: refuse (exit 2) a study whose configurations use a host GPU outside it."""
    from joulebench.errors import StudyError

    fence = loaded.config.runner_options.gpus
    if fence is None:
        return
    used = []
    for c in plan.configs:
        try:
            used.append((c.origin, DeviceSpec.of(c.params).resolve()))
        except JoulebenchError:
            continue   # not resolvable here (no NVML): the plan checked its ordinals, the worker reports
    problems = fence_violations(fence, used)
    if problems:
        raise StudyError("; ".join(problems), file=loaded.file, path="runner_options.gpus",
                         hint="set device to a GPU inside the fence (cuda:N), or widen runner_options.gpus")


def _report(study_dir: Path, display: Display) -> None:
    try:
        from joulebench.report.build import build_report
    except ImportError:
        return
    try:
        path = build_report(study_dir)
        display.log(f"report: {path}")
    except Exception as e:  # noqa: BLE001 - the results are safe on disk; the report can be rebuilt
        display.log(f"could not build the report ({type(e).__name__}: {e}); "
                    f"run `joulebench report {study_dir}` to retry")
