"""Nightly runs on a shared GPU box, end to end with real joulebench processes.

The GPU is the fake NVML (``JOULEBENCH_FAKE_NVML``): every process (the orchestrator, its
worker, the sampler) sees the same GPU, whose foreign processes come and go on the wall clock.
The model runs on the CPU; locks live in a per-test ``JOULEBENCH_LOCK_DIR``.
"""
from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from joulebench.study.nightly import retention, study_folders

from .conftest import JOULEBENCH, run_cli, tiny_study

UUID = "GPU-5eed0000-1111-2222-3333-444444444444"
EXIT_BUSY = 75


def _nvml(tmp_path: Path, processes=(), name="nvml.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps({"epoch_unix": time.time(),
                             "gpus": [{"uuid": UUID, "power_w": 80.0, "processes": list(processes)}]}))
    return p


def _env(tmp_path: Path, nvml: Path) -> dict:
    return {"JOULEBENCH_FAKE_NVML": str(nvml), "JOULEBENCH_LOCK_DIR": str(tmp_path / "locks"),
            "PYTHONUNBUFFERED": "1"}


def _study(tmp_path: Path, name: str, file="study.yaml", sweep=None, **runner_options) -> Path:
    s = tiny_study(name, device="auto", runner_options={"busy_poll_s": 0.5, **runner_options})
    if sweep:
        s["sweep"] = sweep
    p = tmp_path / file
    p.write_text(yaml.safe_dump(s, sort_keys=False))
    return p


def _records(study_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (study_dir / "trials").glob("*.json")}


def _manifest(study_dir: Path) -> dict:
    return json.loads((study_dir / "manifest.json").read_text())


def _popen(args, env) -> subprocess.Popen:
    return subprocess.Popen([*JOULEBENCH, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, **env))


def _wait_for(cond, proc: subprocess.Popen, timeout=180, what="condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        assert proc.poll() is None, f"exited {proc.returncode} before {what}:\n{proc.stdout.read()}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _Output:
    """Collects a child's combined output line by line while it runs."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout=180):
        t0 = time.monotonic()
        while needle not in self.text():
            assert self.proc.poll() is None or needle in self.text(), \
                f"exited {self.proc.returncode} before printing {needle!r}:\n{self.text()}"
            assert time.monotonic() - t0 < timeout, f"no {needle!r} in:\n{self.text()}"
            time.sleep(0.05)

    def finish(self, timeout=300) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.thread.join(timeout=10)
        return rc


@pytest.fixture
def foreign():
    """Real 'other users': processes that hold the fake GPU while they live (``while_alive``)."""
    procs = []

    def start() -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)"])
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _holding(proc: subprocess.Popen) -> list[dict]:
    return [{"pid": proc.pid, "used_memory_bytes": 1 << 30, "while_alive": True}]


# ---------------------------------------------------------------------- the GPU lock
@pytest.mark.slow
def test_second_run_on_the_same_gpu_fails_skips_or_waits(tmp_path):
    env = _env(tmp_path, _nvml(tmp_path))
    first = _study(tmp_path, "first", sweep={"batch_size": [1, 2, 3]})
    second = _study(tmp_path, "second", file="second.yaml")
    lock_file = tmp_path / "locks" / f"{UUID}.lock"
    a = _popen(["run", first, "--out", tmp_path / "a", "--quiet", "--no-report"], env)

    def a_holds() -> bool:
        try:
            return json.loads(lock_file.read_text() or "{}").get("pid") == a.pid
        except (OSError, ValueError):
            return False

    _wait_for(a_holds, a, what="the first run to take the GPU lock")
    fail = _popen(["run", second, "--out", tmp_path / "b-fail", "--quiet", "--no-report", "--on-busy-lock", "fail"],
                  env)
    skip = _popen(["run", second, "--out", tmp_path / "b-skip", "--quiet", "--no-report", "--on-busy-lock", "skip"],
                  env)
    wait = _popen(["run", second, "--out", tmp_path / "b-wait", "--quiet", "--no-report", "--on-busy-lock", "wait",
                   "--lock-wait-s", "300"], env)
    out_fail, out_skip = fail.communicate(timeout=120)[0], skip.communicate(timeout=120)[0]
    assert a.poll() is None, "the first run ended before the second ones were refused: make it longer"
    assert fail.returncode == EXIT_BUSY, out_fail
    for out in (out_fail, out_skip):
        assert f"pid {a.pid}" in out and "study first" in out and "UTC" in out and UUID in out
    assert skip.returncode == 0 and "skipped" in out_skip, out_skip
    assert not (tmp_path / "b-fail").exists() and not (tmp_path / "b-skip").exists()   # nothing started

    assert a.wait(timeout=300) == 0, a.stdout.read()
    out_wait = wait.communicate(timeout=300)[0]
    assert wait.returncode == 0, out_wait
    assert "waiting up to 300 s" in out_wait and f"pid {a.pid}" in out_wait
    a_end = max(r["finished_at"] for r in _records(tmp_path / "a").values())
    b_start = min(r["started_at"] for r in _records(tmp_path / "b-wait").values())
    assert b_start > a_end                      # never both on the GPU at once
    assert len(_records(tmp_path / "a")) == 3 and len(_records(tmp_path / "b-wait")) == 1


def test_stale_lock_left_by_a_dead_process_is_cleared(tmp_path):
    env = _env(tmp_path, _nvml(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / f"{UUID}.lock").write_text(json.dumps(
        {"pid": dead.pid, "host": os.uname().nodename, "study": "crashed-night", "started_at": time.time() - 7200}))
    r = run_cli("run", _study(tmp_path, "after-crash"), "--out", tmp_path / "o", "--quiet", "--no-report",
                "--on-busy-lock", "fail", env=env)
    assert r.returncode == 0, r.stderr
    assert "cleared a stale lock" in r.stderr and f"pid {dead.pid}" in r.stderr and "crashed-night" in r.stderr
    assert len(_records(tmp_path / "o")) == 1


# ---------------------------------------------------------------------- busy GPUs
def test_busy_gpu_wait_until_the_foreign_process_goes_away(tmp_path, foreign):
    other = foreign()
    env = _env(tmp_path, _nvml(tmp_path, _holding(other)))
    run = _Output(_popen(["run", _study(tmp_path, "w", busy_gpu="wait", busy_wait_s=300), "--out",
                          tmp_path / "o", "--quiet", "--no-report"], env))
    run.wait_for("waiting up to 300 s")
    time.sleep(1.0)
    assert not (tmp_path / "o" / "trials").exists() or _records(tmp_path / "o") == {}   # still waiting
    other.kill()
    other.wait()
    left_at = time.time()
    assert run.finish() == 0, run.text()
    assert f"pid {other.pid}" in run.text() and "GPUs free after" in run.text()
    (rec,) = _records(tmp_path / "o").values()
    note = rec["preflight"]["busy_gpu"]
    assert note["action"] == "waited" and note["waited_s"] >= 1.0
    assert note["seen"][0]["processes"][0]["pid"] == other.pid
    assert "foreign_process" not in {f["code"] for f in rec["flags"]}
    assert rec["started_at"] >= left_at - 0.1                # measured only after it left


def test_busy_gpu_stop_and_a_bounded_wait_stop_resumably(tmp_path):
    env = _env(tmp_path, _nvml(tmp_path, [{"pid": 4242, "used_memory_bytes": 1 << 30}]))
    for policy, extra in (("stop", {}), ("wait", {"busy_wait_s": 1.0})):
        out = tmp_path / policy
        r = run_cli("run", _study(tmp_path, f"s-{policy}", busy_gpu=policy, **extra), "--out", out, "--quiet",
                    "--no-report", env=env)
        assert r.returncode == EXIT_BUSY, r.stderr
        assert "pid 4242" in r.stderr and "stopped" in r.stderr
        m = _manifest(out)
        assert m["status"] == "interrupted" and "4242" in m["stop_reason"]
        assert _records(out) == {}                            # nothing measured on the busy GPU
    # with a device idle reference: no idle baseline is measured beside another user either
    s = tiny_study("s-idle", device="auto", runner_options={"busy_gpu": "stop"})
    s["measurement"] = dict(s["measurement"], device_idle_s=1.0)
    (tmp_path / "idle.yaml").write_text(yaml.safe_dump(s, sort_keys=False))
    r = run_cli("run", tmp_path / "idle.yaml", "--out", tmp_path / "idle", "--quiet", "--no-report", env=env)
    assert r.returncode == EXIT_BUSY and "before the device idle reference" in r.stderr, r.stderr
    assert "device_idle" not in _manifest(tmp_path / "idle")


def test_busy_gpu_allow_measures_and_flags(tmp_path):
    env = _env(tmp_path, _nvml(tmp_path, [{"pid": 4242, "used_memory_bytes": 1 << 30}]))
    r = run_cli("run", _study(tmp_path, "al", busy_gpu="allow"), "--out", tmp_path / "o", "--quiet",
                "--no-report", env=env)
    assert r.returncode == 0, r.stderr
    (rec,) = _records(tmp_path / "o").values()
    assert rec["status"] == "ok"
    assert "foreign_process" in {f["code"] for f in rec["flags"]}
    assert rec["preflight"]["busy_gpu"]["action"] == "allowed"
    assert rec["preflight"]["foreign_processes"][0]["pid"] == 4242


@pytest.mark.slow
def test_busy_gpu_skip_defers_then_the_next_night_resumes(tmp_path, foreign):
    root = tmp_path / "results"
    s = tiny_study("sk", device="auto", sweep={"batch_size": [1, 2]},
                   runner_options={"busy_poll_s": 0.5, "busy_gpu": "skip", "busy_wait_s": 300})
    study = tmp_path / "sk.yaml"
    study.write_text(yaml.safe_dump(s, sort_keys=False))
    other = foreign()
    env = _env(tmp_path, _nvml(tmp_path, _holding(other)))
    # night 1: busy -> deferred, then waiting for it at the end; cron's timeout (SIGINT) ends the night
    n1 = _Output(_popen(["run", "--nightly", study, "--results-root", root, "--no-report"], env))
    n1.wait_for("deferred to a later round")
    n1.wait_for("waiting up to 300 s")
    n1.proc.send_signal(signal.SIGINT)
    assert n1.finish() == 130, n1.text()
    night1 = (root / "latest").resolve()
    assert _manifest(night1)["status"] == "interrupted" and _records(night1) == {}
    # night 2: still busy at the start -> deferred again; the other user leaves -> measured, same folder
    n2 = _Output(_popen(["run", "--nightly", study, "--results-root", root, "--no-report"], env))
    n2.wait_for("deferred to a later round")
    n2.wait_for("waiting up to 300 s")      # the other user leaves while the deferred trials wait
    other.kill()
    other.wait()
    assert n2.finish() == 0, n2.text()
    assert "resuming the unfinished study" in n2.text()
    assert (root / "latest").resolve() == night1
    assert _manifest(night1)["status"] == "finished"
    recs = _records(night1)
    assert len(recs) == 2 and all(x["status"] == "ok" for x in recs.values())
    for x in recs.values():
        note = x["preflight"]["busy_gpu"]
        assert note["deferred"]["action"] == "deferred" and note["action"] == "waited"
    assert len(list((night1 / "logs").glob("run-*.log"))) == 2       # one log file per run


# ---------------------------------------------------------------------- cron runs
@pytest.mark.slow
def test_nightly_interrupted_then_resumed_by_the_next_night(tmp_path):
    env = _env(tmp_path, _nvml(tmp_path))
    root = tmp_path / "results"
    s = tiny_study("nightly", device="auto", sweep={"batch_size": [1, 2, 3]})
    s["measurement"] = dict(s["measurement"], min_window_s=1.0)
    study = tmp_path / "nightly.yaml"
    study.write_text(yaml.safe_dump(s, sort_keys=False))
    n1 = _Output(_popen(["run", "--nightly", study, "--results-root", root, "--no-report"], env))
    _wait_for(lambda: any(r.get("status") == "ok" for d in root.glob("nightly-*")
                          for r in _records(d).values()), n1.proc, what="a first trial")
    n1.proc.send_signal(signal.SIGINT)
    assert n1.finish(timeout=120) == 130, n1.text()
    night1 = (root / "latest").resolve()
    assert _manifest(night1)["status"] == "interrupted"
    kept = {t: r for t, r in _records(night1).items() if r["status"] == "ok"}
    assert 1 <= len(kept) < 3
    assert "summary: interrupted (exit 130)" in n1.text()

    r = run_cli("run", "--nightly", study, "--results-root", root, "--no-report", env=env)
    assert r.returncode == 0, r.stderr
    assert "resuming the unfinished study" in r.stderr and "(resumed)" in r.stderr
    assert [p.name for p in root.iterdir() if not p.is_symlink()] == [night1.name]   # same folder
    assert (root / "latest").resolve() == night1
    final = _records(night1)
    assert len(final) == 3 and all(x["status"] == "ok" for x in final.values())
    for tid, rec in kept.items():                                    # nothing ran twice
        assert final[tid]["started_at"] == rec["started_at"]
    summary = json.loads((night1 / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed"] is True
    assert summary["trials"] == {"planned": 3, "ok": 3, "failed": 0, "remaining": 0}
    assert summary["headline"]["best_energy_per_output_token_j"]["value"] > 0
    assert len(list((night1 / "logs").glob("run-*.log"))) == 2


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


def _old_study_folder(root: Path, name: str, study: str, status: str, age_days: float) -> Path:
    """A study folder as an earlier night left it (manifest + one record)."""
    d = root / name
    (d / "trials").mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"study": study, "status": status, "plan_fingerprint": "old",
                                                 "created_at": time.time() - age_days * 86400}))
    (d / "trials" / "x-r0.json").write_text(json.dumps({"trial_id": "x-r0", "status": "ok"}))
    return d


@pytest.mark.slow
def test_retention_never_touches_unfinished_studies_and_hooks_get_the_summary(tmp_path):
    env = _env(tmp_path, _nvml(tmp_path))
    root = tmp_path / "results"
    old_done = _old_study_folder(root, "ret-20260101T020000Z", "ret", "finished", 30)
    old_done2 = _old_study_folder(root, "ret-20260102T020000Z", "ret", "finished", 29)
    unfinished = _old_study_folder(root, "ret-20260103T020000Z", "ret", "interrupted", 28)
    other_study = _old_study_folder(root, "other-20260101T020000Z", "other", "finished", 30)
    # the newest earlier study is unfinished but from another plan: a new folder is started, it is kept
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook_out = tmp_path / "hook.json"
    hook = f"{sys.executable} -c \"import sys; open(sys.argv[1], 'w').write(sys.stdin.read())\" {hook_out}"
    url = f"http://127.0.0.1:{server.server_port}/hooks/SECRET-TOKEN"
    try:
        r = run_cli("run", "--nightly", _study(tmp_path, "ret"), "--results-root", root, "--keep", "1",
                    "--keep-days", "7", "--notify-command", hook, "--notify-webhook", url, env=env)
    finally:
        server.shutdown()
    assert r.returncode == 0, r.stderr
    assert "plan or study file differs" in r.stderr
    new = (root / "latest").resolve()
    assert new.name.startswith("ret-") and new not in (old_done, old_done2, unfinished)
    assert not old_done.exists() and not old_done2.exists()           # finished, old, beyond --keep 1
    assert (unfinished / "trials" / "x-r0.json").exists()              # unfinished: never deleted
    assert (other_study / "manifest.json").exists()                    # another study: not ours to prune
    summary = json.loads(hook_out.read_text())
    assert summary["status"] == "finished" and summary["exit_code"] == 0
    assert sorted(summary["removed"]) == [old_done.name, old_done2.name]
    assert summary["report"] == str(new / "report.html") and Path(summary["report"]).exists()
    assert summary["log"] and Path(summary["log"]).parent == new / "logs"
    ((path, posted),) = _Hook.received
    assert path == "/hooks/SECRET-TOKEN" and posted["study_dir"] == str(new)
    assert "SECRET-TOKEN" not in r.stderr and "SECRET-TOKEN" not in Path(summary["log"]).read_text()


def test_retention_rule_is_a_pure_function_of_age_count_and_status(tmp_path):
    now = 1_800_000_000.0
    folders = [(tmp_path / f"s{i}", {"status": st, "created_at": now - age * 86400})
               for i, (st, age) in enumerate([("finished", 0.5), ("running", 2), ("finished", 3),
                                              ("interrupted", 9), ("finished", 10), ("finished", 40)])]
    names = lambda ps: [p.name for p in ps]  # noqa: E731
    assert retention(folders, keep=None, keep_days=None, protect=set(), now=now) == []
    assert names(retention(folders, keep=2, keep_days=None, protect=set(), now=now)) == ["s2", "s4", "s5"]
    assert names(retention(folders, keep=None, keep_days=5, protect=set(), now=now)) == ["s4", "s5"]
    assert names(retention(folders, keep=1, keep_days=5, protect={tmp_path / "s4"}, now=now)) == ["s5"]
    assert study_folders(tmp_path / "nowhere", "x") == []


def test_nightly_invalid_study_exits_2_and_a_broken_engine_fails_before_any_trial(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(dict(tiny_study("bad"), repeatz=3)))
    r = run_cli("run", "--nightly", bad, "--results-root", tmp_path / "r", env=_env(tmp_path, _nvml(tmp_path)))
    assert r.returncode == 2 and "repeatz" in r.stderr
    assert not any((tmp_path / "r").glob("bad-*"))
    # docker runner with an engine that does not answer: the image step fails the run up front
    env = dict(_env(tmp_path, _nvml(tmp_path)), DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock")
    r = run_cli("run", "--nightly", _study(tmp_path, "img"), "--results-root", tmp_path / "r", "--runner", "docker",
                env=env)
    assert r.returncode == 1, r.stderr
    assert "building the image(s) for transformers failed, so nothing ran" in r.stderr
    assert not any((tmp_path / "r").glob("img-*"))
