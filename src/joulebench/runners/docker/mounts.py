"""Paths between the host and an experiment container, and the files that cross them.

For each experiment the runner writes the experiment JSON into a private staging folder of the
study directory (``<study>/.staging/<experiment>/``), mounted read-only at ``/jb/experiment.json``;
the folder's ``out/`` is mounted read-write at ``/jb/out`` (the worker's OUTDIR). The Hugging Face
hub cache and any local model files/folders the experiment names are mounted read-only (at the same
paths, so the experiment JSON needs no rewriting); a Hugging Face token, if the host has one, goes
in as a read-only file (``HF_TOKEN_PATH``), never as an environment variable (those show in
``docker inspect``) and never into records or logs. Afterwards ``out/trials/*.json`` and
``out/timeseries/*.parquet`` (timelines, requests traces) are merged into the study directory with atomic writes.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from joulebench.results.requests import requests_trace_path
from joulebench.results.store import atomic_copy, atomic_write_bytes, atomic_write_json
from joulebench.spec import ExperimentSpec

log = logging.getLogger(__name__)

CONTAINER_EXPERIMENT = "/jb/experiment.json"
CONTAINER_OUT = "/jb/out"
CONTAINER_HF_CACHE = "/jb/hf-hub"
CONTAINER_TOKEN = "/run/secrets/hf_token"
INBOX = "inbox"            # in the staging out/ folder: specs of the next experiments, and ``stop``
HEARTBEAT = ".heartbeat"   # touched by the dispatcher while it lives; an idle worker ends when it goes stale

# Spec keys whose string values may name local files or folders to mount read-only.
PATH_KEYS = frozenset({"model", "model_path", "tokenizer", "tokenizer_path", "dataset_path",
                       "draft_model", "lora_path", "adapter_path", "gguf", "local_dir"})


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:n] or "x"


def study_dir_key(study_dir: Path) -> str:
    return hashlib.sha256(str(Path(study_dir).resolve()).encode()).hexdigest()[:16]


def local_paths(spec: Any, *, keys: frozenset[str] = PATH_KEYS) -> list[Path]:
    """Host files or folders named under PATH_KEYS anywhere in the spec (relative ones against the
    spec's ``base_dir``, as the worker resolves them), existing ones only, as absolute paths."""
    found: list[Path] = []
    if hasattr(spec, "model_dump"):      # an ExperimentSpec: walk its JSON form
        spec = spec.model_dump(mode="json")
    base_dir = spec.get("base_dir") if isinstance(spec, dict) else None

    def walk(obj: Any, key: str | None) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, str(k))
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, key)
        elif isinstance(obj, str) and key in keys:
            p = Path(obj.split(":", 1)[1] if obj.startswith("file:") else obj).expanduser()
            if not p.is_absolute() and base_dir:
                p = Path(base_dir) / p
            if p.is_absolute() and p.exists() and p != Path("/"):
                found.append(Path(os.path.abspath(p)))   # the path the worker will open

    walk(spec, None)
    out: list[Path] = []
    for p in sorted(set(found)):
        if not any(q in p.parents for q in found if q != p):   # a parent folder already covers it
            out.append(p)
    return out


def hf_hub_cache() -> Path | None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            p = Path(os.environ[var]).expanduser()
            return p if p.is_dir() else None
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    p = home / "hub"
    return p if p.is_dir() else None


def hf_token() -> str | None:
    """The host's Hugging Face token (HF_TOKEN, else the token file), never logged."""
    tok = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if tok:
        return tok.strip() or None
    path = Path(os.environ.get("HF_TOKEN_PATH") or
                Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "token").expanduser()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def redact(text: str) -> str:
    """``text`` without the host's Hugging Face token."""
    tok = hf_token()
    return text.replace(tok, "[hf-token]") if tok and len(tok) >= 8 else text


def token_file(user: str) -> tuple[Path | None, Path | None]:
    """The host's token in a private file the container's ``user`` can read: (file, its folder), or Nones."""
    tok = hf_token()
    if not tok:
        return None, None
    d = Path(tempfile.mkdtemp(prefix="joulebench-secret-"))   # 0700, outside the study folder
    f = d / "hf_token"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(tok)
    if os.getuid() == 0:
        uid, _, gid = user.partition(":")
        try:
            os.chown(f, int(uid), int(gid or uid))
        except (ValueError, OSError):
            os.chmod(f, 0o644)   # the folder stays 0700 on the host
    return f, d


def stage(study_dir: Path, experiment_id: str, spec: ExperimentSpec) -> Path:
    """A fresh staging folder holding the experiment JSON and an empty, world-writable ``out/``.

    Absolute: the engine refuses relative bind-mount sources (a study directory given relative to
    the working directory, such as the default ``joulebench-results/<study>-<time>``)."""
    staging = Path(study_dir).absolute() / ".staging" / slug(experiment_id, 80)
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "out").mkdir(parents=True)
    atomic_write_bytes(staging / "experiment.json", spec.to_json().encode())
    os.chmod(staging / "experiment.json", 0o644)
    # The worker runs as an unprivileged user that may differ from the owner of the study folder.
    os.chmod(staging / "out", 0o777)
    return staging


def make_inbox(staging: Path) -> Path:
    """The inbox of a serving container (and its heartbeat file); returns the heartbeat's path."""
    inbox = staging / "out" / INBOX
    inbox.mkdir()
    os.chmod(inbox, 0o777)   # the worker (another uid) deletes what it has taken
    heartbeat = inbox / HEARTBEAT
    heartbeat.touch()
    return heartbeat


def post_to_inbox(staging: Path, name: str, data: bytes) -> None:
    """A file for the serving worker (the next spec, or ``stop``), readable by its user."""
    atomic_write_bytes(staging / "out" / INBOX / name, data, mode=0o644)


def merge_trial(study_dir: Path, staging: Path, trial_ids: list[str], trial_id: str) -> bool:
    """Copy one trial's record (and its timeline, first) into the study directory; False if absent."""
    out, study = staging / "out", Path(study_dir)
    rec = out / "trials" / f"{trial_id}.json"
    if not rec.is_file() or trial_id not in set(trial_ids):
        return False
    # the timeline and the requests trace first: a record never points at a missing file
    for rel in (f"timeseries/{trial_id}.parquet", requests_trace_path(trial_id)):
        if (out / rel).is_file():
            atomic_copy(out / rel, study / rel)
    atomic_copy(rec, study / "trials" / rec.name)
    return True


def merge(study_dir: Path, staging: Path, experiment_id: str, trial_ids: list[str]) -> list[str]:
    """Copy the worker's records, timelines and logs into the study directory (atomic); return trial ids."""
    out = staging / "out"
    wanted = set(trial_ids)
    finished: list[str] = []
    for rec in sorted((out / "trials").glob("*.json")) if (out / "trials").is_dir() else []:
        tid = rec.stem
        if rec.name.startswith("."):
            continue
        if tid not in wanted:
            # A container kept between rounds still holds the records of the experiments it ran before, and
            # those are in the study already: quiet. Anything else is a stray and is named.
            if not (Path(study_dir) / "trials" / rec.name).is_file():
                log.warning("ignoring record %s: not a trial of experiment %s", rec.name, experiment_id)
            continue
        if merge_trial(study_dir, staging, trial_ids, tid):
            finished.append(tid)
    logs = out / "logs"
    for f in sorted(logs.iterdir()) if logs.is_dir() else []:   # e.g. <trial>.traceback.txt
        if f.is_file() and not f.name.startswith("."):
            atomic_copy(f, Path(study_dir) / "logs" / f.name)
    return finished
