"""The study directory: atomic writes, the manifest, and what is finished.

Layout (DESIGN.md section 1)::

    study.yaml              the study as given
    plan.json               every configuration and trial: id, parameters, round, position
    manifest.json           status, study hash, timestamps (rewritten atomically)
    trials/<id>.json        one record per finished or failed trial
    timeseries/<id>.parquet the device timeline of that trial
    logs/                   worker logs kept on failure
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

# Failures that are not the configuration's fault: resume runs these trials again.
from joulebench.spec import RETRYABLE_ERROR_KINDS  # noqa: F401 - re-exported

DEFAULT_RESULTS_ROOT = Path("joulebench-results")   # where study directories go unless --out / --results-root


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write temp file in the same folder, fsync, rename: readers never see half a file.
    ``mode``: permissions set before the rename (e.g. 0o644 for a container's other user)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_copy(src: Path, dst: Path) -> None:
    atomic_write_bytes(dst, Path(src).read_bytes())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StudyStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    # paths
    @property
    def trials_dir(self) -> Path:
        return self.root / "trials"

    @property
    def timeseries_dir(self) -> Path:
        return self.root / "timeseries"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def trial_path(self, trial_id: str) -> Path:
        return self.trials_dir / f"{trial_id}.json"

    def create(self) -> None:
        for d in (self.root, self.trials_dir, self.timeseries_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)

    # manifest
    def read_manifest(self) -> dict[str, Any]:
        p = self.root / "manifest.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        m = self.read_manifest()
        m.update(fields)
        atomic_write_json(self.root / "manifest.json", m)
        return m

    def read_plan(self) -> dict[str, Any]:
        return json.loads((self.root / "plan.json").read_text())

    # records
    def write_record(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.trial_path(record["trial_id"]), record)

    def iter_records(self) -> Iterator[dict[str, Any]]:
        if not self.trials_dir.exists():
            return
        for p in sorted(self.trials_dir.glob("*.json")):
            try:
                yield json.loads(p.read_text())
            except (json.JSONDecodeError, OSError):
                continue  # a torn file cannot exist with atomic writes; skip foreign junk

    def records_by_id(self) -> dict[str, dict[str, Any]]:
        return {r["trial_id"]: r for r in self.iter_records() if "trial_id" in r}

    def done_ids(self, retry_failed: bool = False) -> set[str]:
        """Trials that must not run again."""
        done = set()
        for tid, r in self.records_by_id().items():
            if r.get("status") == "ok":
                done.add(tid)
            elif not retry_failed and r.get("error_kind") not in RETRYABLE_ERROR_KINDS:
                done.add(tid)
        return done
