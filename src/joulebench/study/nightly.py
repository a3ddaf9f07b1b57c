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
import shlex
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from joulebench.analysis.summary import summarize_records
from joulebench.study.display import Display
from joulebench.errors import EXIT_INTERRUPTED, JoulebenchError, ResumeError
from joulebench.study.locks import LockSkipped
from joulebench.results.store import StudyStore, sha256_bytes

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


# ---------------------------------------------------------------------- summary and hooks
@dataclass
class Summary:
    status: str                    # finished | interrupted | stopped | skipped | error
    exit_code: int
    study: str | None = None
    study_dir: str | None = None
    resumed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    wall_s: float | None = None
    trials: dict[str, int] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)
    headline: dict[str, Any] = field(default_factory=dict)
    report: str | None = None
    log: str | None = None
    message: str | None = None
    removed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f"summary: {self.status} (exit {self.exit_code}) study {self.study or '?'}"
               + (" (resumed)" if self.resumed else "")]
        if self.message:
            out.append(f"  {self.message}")
        if self.trials:
            t = self.trials
            out.append(f"  trials: {t.get('ok', 0)} ok, {t.get('failed', 0)} failed, "
                       f"{t.get('remaining', 0)} not run, of {t.get('planned', 0)} planned")
        for f in self.failed:
            out.append(f"  failed {f['trial_id']} ({f.get('error_kind')}): {f.get('error')}")
        h = self.headline
        if h.get("best_energy_per_output_token_j"):
            b = h["best_energy_per_output_token_j"]
            out.append(f"  lowest J/output token: {b['value']:.4g} ({b['config']})")
        if h.get("best_throughput_tok_s"):
            b = h["best_throughput_tok_s"]
            out.append(f"  highest tokens/s: {b['value']:.4g} ({b['config']})")
        if h.get("total_energy_j") is not None:
            out.append(f"  energy in measured windows: {h['total_energy_j']:.4g} J")
        if self.report:
            out.append(f"  report: {self.report}")
        if self.removed:
            out.append(f"  removed by retention: {', '.join(self.removed)}")
        if self.study_dir:
            out.append(f"  study folder: {self.study_dir}")
        return out


def summarize_study(study_dir: Path) -> dict[str, Any]:
    """Counts, failures and headline numbers straight from a study folder's records."""
    store = StudyStore(study_dir)
    try:
        plan_doc = store.read_plan()
    except (OSError, ValueError):
        plan_doc = {"trials": [], "configs": [], "axes": {}}
    records = store.records_by_id()
    planned = [t["trial_id"] for t in plan_doc.get("trials", []) if not t.get("conditional")]
    ok = [r for r in records.values() if r.get("status") == "ok"]
    failed = [r for r in records.values() if r.get("status") == "failed"]
    axes = list(plan_doc.get("axes") or {}) or ["backend", "model"]
    by_cfg = summarize_records(ok)
    labels = {c["config_id"]: ", ".join(f"{a}={c['params'].get(a)}" for a in axes)
              for c in plan_doc.get("configs", [])}
    headline: dict[str, Any] = {}
    for key, metric, best in (("best_energy_per_output_token_j", "energy_per_output_token_j", min),
                              ("best_throughput_tok_s", "throughput_tok_s", max)):
        means = {c.config_id: c.mean(metric) for c in by_cfg}
        means = {k: v for k, v in means.items() if v is not None}
        if means:
            cid = best(means, key=means.get)
            headline[key] = {"value": means[cid], "config": labels.get(cid, cid), "config_id": cid}
    energies = [r.get("energy_j") for r in ok if r.get("energy_j") is not None]
    headline["total_energy_j"] = sum(energies) if energies else None
    return {
        "trials": {"planned": len(planned), "ok": len(ok), "failed": len(failed),
                   "remaining": len([t for t in planned if t not in records])},
        "failed": [{"trial_id": r["trial_id"], "error_kind": r.get("error_kind"),
                    "error": (r.get("error") or "")[:300]} for r in failed[:10]],
        "headline": headline,
    }


def _safe_url(url: str) -> str:
    """scheme://host only: paths and queries of webhooks often hold tokens."""
    u = urllib.parse.urlsplit(url)
    return f"{u.scheme}://{u.hostname or '?'}" + (f":{u.port}" if u.port else "")


def notify(summary: dict[str, Any], *, command: str | None, webhook: str | None, log,
           timeout_s: float = 60.0) -> None:
    """Send the summary JSON to a command (argument list, JSON on stdin) and/or a webhook (POST)."""
    body = json.dumps(summary, default=str)
    if command:
        argv = shlex.split(command)
        try:
            p = subprocess.run(argv, input=body, text=True, capture_output=True, timeout=timeout_s)
            log(f"notify command {argv[0]} exited {p.returncode}"
                + (f": {p.stderr.strip()[-300:]}" if p.returncode and p.stderr.strip() else ""))
        except (OSError, subprocess.TimeoutExpired) as e:
            log(f"notify command {argv[0] if argv else command!r} failed: {e}")
    if webhook:
        req = urllib.request.Request(webhook, data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "joulebench-nightly"})
        try:
            with urllib.request.urlopen(req, timeout=min(timeout_s, 15.0)) as resp:   # noqa: S310 - user's URL
                log(f"notified {_safe_url(webhook)} (HTTP {resp.status})")
        except Exception as e:  # noqa: BLE001 - a notification never changes the run's outcome
            log(f"webhook {_safe_url(webhook)} failed: {type(e).__name__}: {getattr(e, 'reason', e)}")


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
def run_nightly(study_path: str | Path, *, results_root: str | Path | None = None, keep: int | None = None,
                keep_days: float | None = None, on_busy_lock: str | None = None,
                lock_wait_s: float | None = None, notify_command: str | None = None,
                notify_webhook: str | None = None, runner: str | None = None, report: bool = True,
                display: TeeDisplay | None = None) -> Summary:
    from joulebench.config import load_study
    from joulebench.study.run import DEFAULT_RESULTS_ROOT, default_study_dir, resume_study, run_study
    from joulebench.runners.registry import resolve_kind
    from joulebench.study.plan import build_plan

    disp = display or TeeDisplay()
    t0 = time.time()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root = (Path(results_root) if results_root else DEFAULT_RESULTS_ROOT).absolute()
    summary = Summary(status="error", exit_code=1, started_at=_iso(t0))
    study_dir: Path | None = None
    try:
        if keep is not None and keep < 1:
            raise JoulebenchError("--keep must be at least 1 (the newest study folder is always kept)")
        path = Path(study_path)
        loaded = load_study(path)
        plan = build_plan(loaded)
        name = loaded.config.name
        summary.study = name
        root.mkdir(parents=True, exist_ok=True)
        kind = resolve_kind(runner or loaded.config.runner, disp.log)   # once, for the whole night
        runner = kind.value
        prebuild_images(plan, loaded.config, kind, disp.log)
        study_dir, why = resumable(root, name, plan_fingerprint=plan.fingerprint(),
                                   study_sha256=sha256_bytes(loaded.text.encode()))
        disp.log(f"nightly {name}: {why}")
        if study_dir is not None:
            disp.attach(study_dir / "logs" / f"run-{stamp}.log")
            try:
                result = resume_study(study_dir, runner=runner, display=disp, on_busy_lock=on_busy_lock,
                                      lock_wait_s=lock_wait_s, report=report)
                summary.resumed = True
            except ResumeError as e:
                disp.log(f"cannot resume {study_dir.name} ({e}); starting a new study")
                study_dir = None
        if study_dir is None:
            study_dir = default_study_dir(name, root)
            n = 2
            while study_dir.exists():      # two runs in the same second
                study_dir = default_study_dir(name, root).with_name(f"{default_study_dir(name, root).name}-{n}")
                n += 1
            disp.attach(study_dir / "logs" / f"run-{stamp}.log")
            disp.log(f"nightly {name}: new study folder {study_dir}")
            result = run_study(path, out=study_dir, runner=runner, display=disp, on_busy_lock=on_busy_lock,
                               lock_wait_s=lock_wait_s, report=report)
        summary.exit_code = result.exit_code
        summary.status = _status_of(study_dir, result.exit_code)
    except LockSkipped as e:
        summary.status, summary.exit_code, summary.message = "skipped", e.exit_code, str(e)
        study_dir = study_dir if study_dir is not None and (study_dir / "manifest.json").exists() else None
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
    for line in summary.lines():
        disp.log(line)
    if summary.study_dir:
        from joulebench.results.store import atomic_write_json

        atomic_write_json(Path(summary.study_dir) / "summary.json", summary.to_dict())
    notify(summary.to_dict(), command=notify_command, webhook=notify_webhook, log=disp.log)
    disp.close()
    return summary


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
