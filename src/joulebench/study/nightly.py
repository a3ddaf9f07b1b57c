"""Cron-fit runs: ``joulebench run --nightly STUDY --results-root DIR``.

One invocation per night. It

1. loads the study (invalid: exit 2, nothing else happens);
2. builds the engine images whose inputs changed, when the runner is docker (a failed
   build fails the run here, before any trial);
3. resumes the newest study folder of this study under the root if it is unfinished and
   its plan still matches (same study file, same plan fingerprint), else starts a new
   dated folder ``<root>/<name>-<UTC time>``;
4. runs it under the GPU lock and the busy-GPU policy (locks.py), logging plain lines to
   stderr and to ``<study>/logs/run-<UTC time>.log``;
5. points ``<root>/latest`` at the folder, removes old folders of this study by the
   retention rule (never unfinished ones, never ``latest``), writes ``summary.json``,
   prints a short summary and sends it to the notification hooks.

Exit codes: 0 all trials finished (or ``--on-busy-lock skip`` skipped the night),
1 some trials failed, 2 invalid study or arguments, 75 GPUs busy (lock or other users;
what did not run is resumed next night), 130 interrupted (resumed next night).
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from joulebench.study.display import Display
from joulebench.errors import EXIT_INTERRUPTED, JoulebenchError, ResumeError
from joulebench.study.locks import LockSkipped
from joulebench.study.nightly_summary import Summary, notify, summarize_study
from joulebench.results.store import sha256_bytes

LATEST = "latest"


class TeeDisplay(Display):
    """Plain log lines to stderr and to a log file in the study folder (once the folder exists)."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self._buffer: list[str] = []
        self._fh = None
        self.log_path: Path | None = None
        self._want: Path | None = None

    def attach(self, path: Path) -> None:
        """Write to ``path`` as soon as its folder exists (a new study's folder appears later)."""
        self._want = path
        self._try_open()

    def _try_open(self) -> None:
        if self._fh is None and self._want is not None and self._want.parent.parent.is_dir():
            self._want.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self._want, "a", encoding="utf-8")
            self.log_path = self._want
            self._fh.write("".join(self._buffer))
            self._fh.flush()
            self._buffer.clear()

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        line = f"{stamp} {message}\n"
        sys.stderr.write(line)
        sys.stderr.flush()
        self._try_open()
        if self._fh is not None:
            self._fh.write(line)
            self._fh.flush()
        else:
            self._buffer.append(line)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# ---------------------------------------------------------------------- study folders
def study_folders(root: Path, name: str) -> list[tuple[Path, dict]]:
    """Folders directly under ``root`` that hold a study called ``name``, newest first."""
    out = []
    if not root.is_dir():
        return out
    for p in root.iterdir():
        if p.is_symlink() or not p.is_dir():
            continue
        try:
            m = json.loads((p / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if m.get("study") == name:
            out.append((p, m))
    out.sort(key=lambda pm: (pm[1].get("created_at") or 0, pm[0].name), reverse=True)
    return out


def latest_target(root: Path) -> Path | None:
    link = root / LATEST
    if not link.is_symlink():
        return None
    return (root / Path(str(link.readlink()))).resolve()


def point_latest(root: Path, study_dir: Path) -> None:
    """Atomically make ``<root>/latest`` a relative link to ``study_dir``."""
    tmp = root / f".{LATEST}.{time.time_ns()}"
    target = study_dir.name if study_dir.parent.resolve() == root.resolve() else str(study_dir.resolve())
    tmp.symlink_to(target, target_is_directory=True)
    tmp.replace(root / LATEST)


def resumable(root: Path, name: str, *, plan_fingerprint: str, study_sha256: str) -> tuple[Path | None, str]:
    """The newest folder of this study if it is unfinished and its plan still matches; and why (not)."""
    folders = study_folders(root, name)
    if not folders:
        return None, f"no earlier study '{name}' under {root}"
    path, m = folders[0]
    if m.get("status") == "finished":
        return None, f"the last study ({path.name}) finished"
    if m.get("plan_fingerprint") != plan_fingerprint or m.get("study_sha256") != study_sha256:
        return None, f"the last study ({path.name}) is unfinished but its plan or study file differs"
    return path, f"resuming the unfinished study {path.name} (status {m.get('status')})"


def retention(folders: list[tuple[Path, dict]], *, keep: int | None, keep_days: float | None,
              protect: set[Path], now: float) -> list[Path]:
    """Folders (newest first) to delete: beyond the ``keep`` newest and older than ``keep_days``.

    A folder is kept when any given rule keeps it; with no rule nothing is deleted. Unfinished
    studies (status != finished) and protected folders are never deleted.
    """
    if keep is None and keep_days is None:
        return []
    protect = {p.resolve() for p in protect}
    doomed = []
    for i, (path, m) in enumerate(folders):
        if m.get("status") != "finished" or path.resolve() in protect:
            continue
        if keep is not None and i < keep:
            continue
        age_days = (now - float(m.get("created_at") or now)) / 86400.0
        if keep_days is not None and age_days < keep_days:
            continue
        doomed.append(path)
    return doomed


# ---------------------------------------------------------------------- images
def prebuild_images(plan, cfg, kind, log) -> None:
    """A runner that builds images (docker): build those whose inputs changed now, so a broken build fails
    before any trial. ``kind``: the resolved runner kind (runners/registry.py)."""
    from joulebench.runners.registry import capabilities

    if not capabilities(kind).builds_images or cfg.runner_options.docker.image:
        return
    from joulebench.runners.docker import images

    engines = sorted({c.params["backend"] for c in plan.configs})
    try:
        infos = images.build_images(engines, progress=lambda eng, msg: log(f"image {eng}: {msg}"))
    except Exception as e:  # noqa: BLE001
        raise JoulebenchError(f"building the image(s) for {', '.join(engines)} failed, so nothing ran: "
                              f"{type(e).__name__}: {e}. Fix the build (`joulebench images build`) and "
                              "run again") from e
    for i in infos:
        log(f"image {i.engine}: {i.ref if hasattr(i, 'ref') else i.name} "
            + ("built" if i.built else "current (inputs unchanged)"))


# ---------------------------------------------------------------------- the nightly run
@dataclass
class _Night:
    """What one nightly invocation knows so far (the study folder appears part way)."""
    display: TeeDisplay
    root: Path
    stamp: str
    study_dir: Path | None = None


def run_nightly(study_path: str | Path, *, results_root: str | Path | None = None, keep: int | None = None,
                keep_days: float | None = None, on_busy_lock: str | None = None,
                lock_wait_s: float | None = None, notify_command: str | None = None,
                notify_webhook: str | None = None, runner: str | None = None, report: bool = True,
                display: TeeDisplay | None = None) -> Summary:
    from joulebench.results.store import DEFAULT_RESULTS_ROOT

    disp = display or TeeDisplay()
    t0 = time.time()
    night = _Night(disp, (Path(results_root) if results_root else DEFAULT_RESULTS_ROOT).absolute(),
                   _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    summary = Summary(status="error", exit_code=1, started_at=_iso(t0))
    try:
        if keep is not None and keep < 1:
            raise JoulebenchError("--keep must be at least 1 (the newest study folder is always kept)")
        result = _run_study(night, Path(study_path), summary, runner=runner, on_busy_lock=on_busy_lock,
                            lock_wait_s=lock_wait_s, report=report)
        summary.exit_code = result.exit_code
        summary.status = _status_of(night.study_dir, result.exit_code)
    except LockSkipped as e:
        summary.status, summary.exit_code, summary.message = "skipped", e.exit_code, str(e)
        if night.study_dir is None or not (night.study_dir / "manifest.json").exists():
            night.study_dir = None
    except JoulebenchError as e:
        summary.status, summary.exit_code, summary.message = "error", e.exit_code, str(e)
        disp.log(f"error: {e}")
    except KeyboardInterrupt:
        summary.status, summary.exit_code = "interrupted", EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - cron gets a summary and an exit code, never a silent death
        summary.status, summary.exit_code, summary.message = "error", 1, f"{type(e).__name__}: {e}"
        disp.log(f"error: {type(e).__name__}: {e}")
    if summary.status == "skipped":
        disp.log(summary.message or "skipped")
    _complete_summary(summary, night, keep, keep_days, t0)
    _publish(summary, disp, notify_command, notify_webhook)
    disp.close()
    return summary


def _run_study(night: _Night, path: Path, summary: Summary, *, runner: str | None, on_busy_lock: str | None,
               lock_wait_s: float | None, report: bool):
    """Load the study, build its images, then resume its unfinished folder or start a new one."""
    from joulebench.config import load_study
    from joulebench.runners.registry import resolve_kind
    from joulebench.study.plan import build_plan
    from joulebench.study.run import resume_study

    disp = night.display
    loaded = load_study(path)
    plan = build_plan(loaded)
    name = loaded.config.name
    summary.study = name
    night.root.mkdir(parents=True, exist_ok=True)
    kind = resolve_kind(runner or loaded.config.runner, disp.log)   # once, for the whole night
    runner = kind.value
    prebuild_images(plan, loaded.config, kind, disp.log)
    night.study_dir, why = resumable(night.root, name, plan_fingerprint=plan.fingerprint(),
                                     study_sha256=sha256_bytes(loaded.text.encode()))
    disp.log(f"nightly {name}: {why}")
    if night.study_dir is not None:
        disp.attach(night.study_dir / "logs" / f"run-{night.stamp}.log")
        try:
            result = resume_study(night.study_dir, runner=runner, display=disp, on_busy_lock=on_busy_lock,
                                  lock_wait_s=lock_wait_s, report=report)
            summary.resumed = True
            return result
        except ResumeError as e:
            disp.log(f"cannot resume {night.study_dir.name} ({e}); starting a new study")
            night.study_dir = None
    return _start_new(night, path, name, runner=runner, on_busy_lock=on_busy_lock, lock_wait_s=lock_wait_s,
                      report=report)


def _start_new(night: _Night, path: Path, name: str, *, runner: str, on_busy_lock: str | None,
               lock_wait_s: float | None, report: bool):
    """A new dated study folder under the root, and the study run in it."""
    from joulebench.study.run import default_study_dir, run_study

    root, disp = night.root, night.display
    night.study_dir = default_study_dir(name, root)
    n = 2
    while night.study_dir.exists():      # two runs in the same second
        night.study_dir = default_study_dir(name, root).with_name(f"{default_study_dir(name, root).name}-{n}")
        n += 1
    disp.attach(night.study_dir / "logs" / f"run-{night.stamp}.log")
    disp.log(f"nightly {name}: new study folder {night.study_dir}")
    return run_study(path, out=night.study_dir, runner=runner, display=disp, on_busy_lock=on_busy_lock,
                     lock_wait_s=lock_wait_s, report=report)


def _complete_summary(summary: Summary, night: _Night, keep: int | None, keep_days: float | None,
                      t0: float) -> None:
    """The `latest` link, the study folder's numbers, retention, the log path and the times."""
    root, study_dir, disp = night.root, night.study_dir, night.display
    if study_dir is not None and (study_dir / "manifest.json").exists():
        summary.study_dir = str(study_dir)
        try:
            point_latest(root, study_dir)
        except OSError as e:
            disp.log(f"could not update {root / LATEST}: {e}")
        info = summarize_study(study_dir)
        summary.trials, summary.failed, summary.headline = info["trials"], info["failed"], info["headline"]
        if (study_dir / "report.html").exists():
            summary.report = str(study_dir / "report.html")
    if summary.study and root.is_dir():
        summary.removed = _apply_retention(root, summary.study, keep, keep_days, study_dir, disp.log)
    summary.log = str(disp.log_path) if disp.log_path else None
    summary.finished_at = _iso(time.time())
    summary.wall_s = round(time.time() - t0, 3)


def _publish(summary: Summary, disp: TeeDisplay, notify_command: str | None, notify_webhook: str | None) -> None:
    """The summary's lines on the log, ``summary.json`` in the study folder, the notification hooks."""
    for line in summary.lines():
        disp.log(line)
    if summary.study_dir:
        from joulebench.results.store import atomic_write_json

        atomic_write_json(Path(summary.study_dir) / "summary.json", summary.to_dict())
    notify(summary.to_dict(), command=notify_command, webhook=notify_webhook, log=disp.log)


def _status_of(study_dir: Path, code: int) -> str:
    try:
        m = json.loads((study_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        m = {}
    if code == EXIT_INTERRUPTED:
        return "interrupted"
    if m.get("stop_reason") and m.get("status") != "finished":
        return "stopped"
    return m.get("status") or ("finished" if code in (0, 1) else "error")


def _apply_retention(root: Path, name: str, keep, keep_days, current: Path | None, log) -> list[str]:
    protect = {p for p in (current, latest_target(root)) if p is not None}
    doomed = retention(study_folders(root, name), keep=keep, keep_days=keep_days, protect=protect,
                       now=time.time())
    removed = []
    for p in doomed:
        try:
            shutil.rmtree(p)
            removed.append(p.name)
            log(f"retention: removed {p}")
        except OSError as e:
            log(f"retention: could not remove {p}: {e}")
    return removed


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["run_nightly", "Summary", "TeeDisplay", "study_folders", "resumable", "retention", "notify",
           "summarize_study", "point_latest", "latest_target"]
