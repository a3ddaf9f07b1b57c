"""The nightly run's summary (``summary.json``, the closing lines) and its notification hooks
(a command given the JSON on stdin, a webhook POST)."""
from __future__ import annotations

import json
import shlex
import subprocess
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from joulebench.analysis.summary import summarize_records
from joulebench.results.store import StudyStore


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
