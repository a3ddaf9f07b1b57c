"""End to end on CPU: real transformers in real worker processes, real signals.

Covers the foundation (records on disk with exact token counts and timings) and the
study engine (rounds, adaptive repeats, load-group reuse, Ctrl-C, kill -9, crashes,
hangs, resume that never runs a trial twice)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from joulebench.study.run import resume_study, run_study
from joulebench.errors import ResumeError
from joulebench.results.store import StudyStore

from .conftest import FAST_MEASUREMENT, JOULEBENCH, tiny_study

pytestmark = pytest.mark.slow


def _records(d: Path) -> dict[str, dict]:
    return StudyStore(d).records_by_id()


def _plan_ids(d: Path, *, include_conditional=False) -> set[str]:
    doc = json.loads((d / "plan.json").read_text())
    return {t["trial_id"] for t in doc["trials"] if include_conditional or not t["conditional"]}


def test_sweep_with_repeats_end_to_end(write_study, tmp_path):
    study = tiny_study("e2e", sweep={"batch_size": [1, 2], "max_output_tokens": [2, 4]}, repeats=2)
    out = tmp_path / "res"
    result = run_study(write_study(study), out=out, quiet=True, report=False)
    assert result.exit_code == 0 and result.ok == 8 and result.failed == 0
    recs = _records(out)
    assert set(recs) == _plan_ids(out)
    for r in recs.values():
        p = r["params"]
        assert r["status"] == "ok"
        assert r["requests"] == 4 * r["passes"]
        assert r["output_tokens"] == r["requests"] * p["max_output_tokens"]
        assert r["input_tokens"] == r["requests"] * 8
        assert r["duration_s"] >= 0.3
        assert r["throughput_tok_s"] == pytest.approx(r["output_tokens"] / r["duration_s"])
        assert 0 < r["ttft_s"]["median"] <= r["ttft_s"]["p90"] <= r["ttft_s"]["p99"]
        assert r["itl_s"]["n"] == r["requests"] * (p["max_output_tokens"] - 1)
        assert r["energy_j"] is None and r["energy_per_output_token_j"] is None
        codes = {f["code"] for f in r["flags"]}
        assert "energy_unavailable" in codes and "synthetic_weights" in codes
        # the worker generated on the CPU during the window: its process tree used CPU, its busiest process most
        cpu = r["host_cpu"]
        assert cpu["cpu_s"] > 0 and cpu["processes"] >= 1
        assert cpu["cores_mean"] == pytest.approx(cpu["cpu_s"] / r["duration_s"])       # over the window
        assert 0 < cpu["busiest"][0]["cpu_share"] <= 2.5     # torch may use both cores of a CI machine
        assert "joulebench worker (engine)" in {b.get("role") for b in cpu["busiest"]}   # it generated
        assert all(f["advice"] for f in r["flags"])
        assert r["model"]["synthetic_weights"] is True
        assert r["environment"]["libraries"]["transformers"]
        assert r["flops"] > 0 and r["peak_memory_bytes"] > 0
        assert r["warmup"]["passes"] >= 1
    # load-group reuse: one worker per round, not one per trial
    assert len(list((out / "experiments").glob("*.json"))) == 2
    assert (out / "study.yaml").read_text().startswith("name: e2e")
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"
    # resume of a finished study runs nothing
    before = {p.name: p.stat().st_mtime_ns for p in (out / "trials").iterdir()}
    again = resume_study(out, quiet=True, report=False)
    assert again.exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "trials").iterdir()} == before


def test_adaptive_repeats_run_to_max_when_the_target_is_out_of_reach(write_study, tmp_path):
    tight = tiny_study("adapt", sweep={"batch_size": [1, 2]},
                       repeats={"min": 2, "max": 4, "ci_target": 1e-9})
    out = tmp_path / "tight"
    run_study(write_study(tight, "a.yaml"), out=out, quiet=True, report=False)
    assert len(_records(out)) == 8  # never reaches a 1e-9 CI: runs to max


def test_adaptive_rule_stops_a_configuration_once_its_ci_is_tight(write_study, tmp_path):
    """The decision itself, on records with known values (J/output-token, else tokens/s)."""
    from joulebench.config import load_study
    from joulebench.study.display import Display
    from joulebench.study.orchestrator import Orchestrator
    from joulebench.study.plan import build_plan, trial_id_for
    from joulebench.runners.process import ProcessRunner

    loaded = load_study(write_study(tiny_study("rule", sweep={"batch_size": [1, 2, 3]},
                                               repeats={"min": 3, "max": 6, "ci_target": 0.02})))
    plan = build_plan(loaded)
    store = StudyStore(tmp_path / "s")
    store.create()
    tight, wide, failed = plan.configs
    values = {tight.config_id: [1.00, 1.001, 0.999], wide.config_id: [1.0, 1.3, 0.7],
              failed.config_id: [1.0, 1.0, None]}
    for c in plan.configs:
        for r, v in enumerate(values[c.config_id]):
            store.write_record({"trial_id": trial_id_for(c.config_id, r), "config_id": c.config_id,
                                "status": "ok" if v is not None else "failed", "error_kind": "error",
                                "energy_per_output_token_j": v, "throughput_tok_s": 10.0})
    orch = Orchestrator(loaded, plan, store.root, ProcessRunner(), Display(quiet=True))
    assert orch._configs_needing(2) == []                  # round 2 is done for everyone
    assert orch._configs_needing(3) == [wide.config_id]    # only the wide CI continues; a failed one stops
    # without energy, tokens/s decides
    for r, v in enumerate([10.0, 10.01, 9.99]):
        rec = store.records_by_id()[trial_id_for(wide.config_id, r)]
        store.write_record({**rec, "energy_per_output_token_j": None, "throughput_tok_s": v})
    assert orch._configs_needing(3) == []


def test_adaptive_rule_bounds_the_metric_the_study_names(write_study, tmp_path):
    """repeats.metric: the marginal J/token (above loaded idle) can be tight while the gross one is not
    (host-bound decode on an H200: gross CV 11-15 %, marginal 1.3-2 %)."""
    from joulebench.config import load_study
    from joulebench.study.display import Display
    from joulebench.study.orchestrator import Orchestrator
    from joulebench.study.plan import build_plan, trial_id_for
    from joulebench.runners.process import ProcessRunner

    def needing(metric: str | None) -> list[str]:
        rep = {"min": 3, "max": 6, "ci_target": 0.02, **({"metric": metric} if metric else {})}
        loaded = load_study(write_study(tiny_study("metric", repeats=rep), f"{metric}.yaml"))
        plan = build_plan(loaded)
        store = StudyStore(tmp_path / str(metric))
        store.create()
        (c,) = plan.configs
        for r, (gross, above) in enumerate([(0.10, 0.0250), (0.17, 0.0252), (0.12, 0.0249)]):
            store.write_record({"trial_id": trial_id_for(c.config_id, r), "config_id": c.config_id, "status": "ok",
                                "energy_per_output_token_j": gross,
                                "energy_above_loaded_idle_per_output_token_j": above,
                                "throughput_tok_s": 1000.0 / gross})
        return Orchestrator(loaded, plan, store.root, ProcessRunner(), Display(quiet=True))._configs_needing(3)

    assert len(needing(None)) == 1                                     # gross J/token: CI far above 2 %
    assert len(needing("energy_per_output_token_j")) == 1
    assert needing("energy_above_loaded_idle_per_output_token_j") == []  # marginal: CI well under 2 %
    assert len(needing("throughput_tok_s")) == 1


def _workers(d: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in _records(d).values():
        out.setdefault(r.get("worker_id"), []).append(r)
    return out


def test_one_worker_serves_every_round_of_its_load_group(write_study, tmp_path):
    """Runtime parameters only: one worker, one model load for the whole study (3 rounds); repeats after
    the first re-warm on the worker's earlier passes; the worker is gone at the end."""
    study = tiny_study("reuse", sweep={"batch_size": [1, 2], "max_output_tokens": [2, 4]}, repeats=3)
    # Any pass counts as stable (cv_target 1e6): on a loaded host, passes of a few tokens vary more than
    # 10x in tokens/s, and the re-warm rule (within cv_target x the earlier mean) must not depend on that.
    study["measurement"] = dict(FAST_MEASUREMENT, warmup={"cv_target": 1e6, "k": 2, "min_passes": 2,
                                                          "max_passes": 4})
    out = tmp_path / "r"
    result = run_study(write_study(study), out=out, quiet=True, report=False)
    assert result.exit_code == 0 and result.ok == 12
    workers = _workers(out)
    assert list(workers) and len(workers) == 1
    recs = next(iter(workers.values()))
    assert len({r["experiment_id"] for r in recs}) == 3          # one experiment per round, all in one worker
    assert len({r["load_s"] for r in recs}) == 1                 # loaded once
    for r in recs:
        w = r["warmup"]
        if r["repeat"] == 0:     # first time in this worker: a full warm-up (min_passes)
            assert not w["rewarm"] and w["passes"] >= 2 and w["converged_by"] == "cv"
        else:                    # later rounds: warmed to stability before, so one pass for the switch back
            assert w["rewarm"] and w["passes"] == 1 and w["converged_by"] == "earlier"
    logs = sorted(p.name for p in (out / "logs").glob("*.log"))
    assert len(logs) == 1 and logs[0].startswith("worker-")      # one worker process, started early (prestart)
    assert not _live_workers(out)
    assert not list((out / "experiments").glob("inbox-*"))       # the inbox is cleaned up


def test_rewarm_passes_zero_measures_a_repeat_at_once_and_checks_its_first_pass(write_study, tmp_path):
    """warmup.rewarm_passes: 0: a repeat of a configuration warmed in an earlier round gets no warm-up pass;
    its window's first pass is held to the configuration's earlier window passes and the result recorded."""
    study = tiny_study("rewarm0", sweep={"max_output_tokens": [2, 4]}, repeats=2)
    study["measurement"] = dict(FAST_MEASUREMENT, warmup={"cv_target": 1e6, "k": 2, "min_passes": 2,
                                                          "max_passes": 4, "rewarm_passes": 0})
    out = tmp_path / "r"
    result = run_study(write_study(study), out=out, quiet=True, report=False)
    assert result.exit_code == 0 and result.ok == 4
    for r in _records(out).values():
        w = r["warmup"]
        if r["repeat"] == 0:
            assert w["passes"] >= 2 and not w["skipped"] and w["first_pass_rel_diff"] is None
        else:        # no pass, the window began at once; cv_target 1e6: any first pass agrees
            assert w["skipped"] and w["passes"] == 0 and w["duration_s"] == 0.0 and w["converged_by"] == "earlier"
            assert w["first_pass_agrees"] is True and isinstance(w["first_pass_rel_diff"], float)
            assert "rewarm_drift" not in {f["code"] for f in r["flags"]}


def test_rewarm_window_check_flags_a_first_pass_that_ran_elsewhere():
    from joulebench.config.study import WarmupConfig
    from joulebench.worker.trial import WarmState, rewarm_window_check

    state, cfg = WarmState(), WarmupConfig(rewarm_passes=0, cv_target=0.02)
    first = {"skipped": False}
    assert rewarm_window_check(first, [1000.0, 1005.0], "c", cfg, state) == []   # first window: remembered
    assert state.window_passes["c"] == [1000.0, 1005.0]
    slow = {"skipped": True}
    flags = rewarm_window_check(slow, [700.0, 1000.0], "c", cfg, state)
    assert [f.code for f in flags] == ["rewarm_drift"] and "-30.2%" in flags[0].detail
    assert slow["first_pass_agrees"] is False and slow["first_pass_rel_diff"] == pytest.approx(-0.3017, abs=1e-3)
    assert "rewarm_passes" in flags[0].advice


def test_worker_needs_a_spec_or_an_inbox(tmp_path):
    r = subprocess.run([*JOULEBENCH[:1], "-m", "joulebench.worker.main", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--inbox" in r.stderr


def test_idle_worker_stops_when_its_dispatcher_stops_beating(tmp_path):
    """Containers cannot see their dispatcher die: an idle serving worker ends once the heartbeat file
    the dispatcher touches goes stale (or is gone), or on a stop file."""
    from joulebench.worker.main import next_spec

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    beat = inbox / ".heartbeat"
    beat.touch()
    os.utime(beat, (time.time() - 120, time.time() - 120))
    t0 = time.monotonic()
    assert next_spec(inbox, parent=os.getppid(), idle_timeout_s=60, heartbeat=(beat, 30.0)) is None
    assert time.monotonic() - t0 < 1.0
    beat.touch()
    (inbox / "000001-e2.json").write_text(json.dumps({"experiment_id": "e2"}))
    assert next_spec(inbox, parent=os.getppid(), idle_timeout_s=60, heartbeat=(beat, 30.0)) == {"experiment_id": "e2"}
    assert not list(inbox.glob("*.json"))                        # taken
    (inbox / "stop").write_text("stop")
    assert next_spec(inbox, parent=os.getppid(), idle_timeout_s=60, heartbeat=(beat, 30.0)) is None
    beat.unlink()
    (inbox / "stop").unlink()
    assert next_spec(inbox, parent=os.getppid(), idle_timeout_s=60, heartbeat=(beat, 30.0)) is None


def test_descendants_include_grandchildren_in_their_own_session():
    """A live worker's GPU users are ours: its sampler and an engine server that runs in a session of its own."""
    from joulebench.system.proc import descendants

    outer = subprocess.Popen([sys.executable, "-c",
                              "import subprocess, sys, time; "
                              "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
                              "start_new_session=True); print(c.pid, flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(outer.stdout.readline())
        assert descendants(outer.pid) == {outer.pid, grandchild}
        assert os.getpid() not in descendants(outer.pid)
    finally:
        os.kill(grandchild, signal.SIGKILL)
        outer.kill()
        outer.wait()


def test_reuse_off_starts_a_worker_per_round(write_study, tmp_path):
    study = tiny_study("noreuse", sweep={"batch_size": [1, 2]}, repeats=2,
                       runner_options={"reuse_workers": False})
    out = tmp_path / "r"
    run_study(write_study(study), out=out, quiet=True, report=False)
    assert len(_workers(out)) == 2


def test_load_groups_never_hold_two_models_at_once(write_study, tmp_path):
    """Two load groups (dtype), two rounds: the worker that ended round 0 carries on into round 1, the
    other group gets a fresh worker; worker lifetimes never overlap."""
    study = tiny_study("groups", sweep={"batch_size": [1, 2], "dtype": ["float32", "bfloat16"]}, repeats=2)
    out = tmp_path / "r"
    result = run_study(write_study(study), out=out, quiet=True, report=False)
    assert result.exit_code == 0 and result.ok == 8
    workers = _workers(out)
    assert len(workers) == 3
    spans = sorted((min(r["started_at"] for r in rs), max(r["finished_at"] for r in rs)) for rs in workers.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    for rs in workers.values():                                  # a worker serves one load group only
        assert len({r["params"]["dtype"] for r in rs}) == 1
    assert sorted(len({r["round"] for r in rs}) for rs in workers.values()) == [1, 1, 2]


def test_reused_worker_crash_fails_one_trial_and_a_fresh_worker_continues(write_study, tmp_path, monkeypatch):
    study = tiny_study("crash2", sweep={"batch_size": [1, 2, 3]}, repeats=2)
    path = write_study(study)
    from joulebench.config import load_study
    from joulebench.study.plan import build_plan

    plan = build_plan(load_study(path))
    victim = f"{plan.round_order(1)[1].config_id}-r1"   # round 1, served by the worker of round 0
    monkeypatch.setenv("JOULEBENCH_FAULT", f"crash:{victim}")
    out = tmp_path / "r"
    result = run_study(path, out=out, quiet=True, report=False)
    assert result.exit_code == 1 and result.ok == 5 and result.failed == 1
    recs = _records(out)
    assert set(recs) == _plan_ids(out)
    assert recs[victim]["status"] == "failed" and recs[victim]["error_kind"] == "crash"
    first = {r["worker_id"] for r in recs.values() if r["round"] == 0}
    after = [r for r in recs.values() if r["round"] == 1 and r["status"] == "ok"]
    assert len(first) == 1 and len(after) == 2
    served_by = [r["worker_id"] in first for r in after]
    assert served_by.count(True) == 1 and served_by.count(False) == 1   # before the crash, and after it
    assert not _live_workers(out)


def test_one_worker_per_trial_option(write_study, tmp_path):
    study = tiny_study("solo", sweep={"batch_size": [1, 2]}, runner_options={"one_worker_per_trial": True})
    out = tmp_path / "r"
    run_study(write_study(study), out=out, quiet=True, report=False)
    assert len(list((out / "experiments").glob("*.json"))) == 2
    assert all(r["status"] == "ok" for r in _records(out).values())


def test_crashing_worker_fails_one_trial_and_the_study_continues(write_study, tmp_path, monkeypatch):
    study = tiny_study("crash", sweep={"batch_size": [1, 2, 3]})
    path = write_study(study)
    from joulebench.config import load_study
    from joulebench.study.plan import build_plan

    plan = build_plan(load_study(path))
    victim = f"{plan.round_order(0)[1].config_id}-r0"  # the second trial of the worker
    monkeypatch.setenv("JOULEBENCH_FAULT", f"crash:{victim}")
    out = tmp_path / "r"
    result = run_study(path, out=out, quiet=True, report=False)
    assert result.exit_code == 1 and result.ok == 2 and result.failed == 1
    rec = _records(out)[victim]
    assert rec["status"] == "failed" and rec["error_kind"] == "crash"
    assert "SIGKILL" in rec["error"]
    assert len(list((out / "experiments").glob("*.json"))) == 2  # a fresh worker took over


def test_resume_retry_failed_reruns_only_the_failed_trial(write_study, tmp_path, monkeypatch):
    study = tiny_study("retry", sweep={"batch_size": [1, 2]})
    path = write_study(study)
    from joulebench.config import load_study
    from joulebench.study.plan import build_plan

    victim = f"{build_plan(load_study(path)).round_order(0)[0].config_id}-r0"
    monkeypatch.setenv("JOULEBENCH_FAULT", f"error:{victim}")
    out = tmp_path / "r"
    assert run_study(path, out=out, quiet=True, report=False).exit_code == 1
    before = _records(out)
    assert before[victim]["status"] == "failed" and before[victim]["error_kind"] == "error"
    other = next(t for t in before if t != victim)
    monkeypatch.delenv("JOULEBENCH_FAULT")
    again = resume_study(out, quiet=True, report=False)             # a failed trial is final ...
    assert again.exit_code == 1 and _records(out)[victim] == before[victim]
    fixed = resume_study(out, quiet=True, report=False, retry_failed=True)   # ... unless asked
    assert fixed.exit_code == 0
    after = _records(out)
    assert after[victim]["status"] == "ok" and after[other] == before[other]


def test_hanging_worker_is_timed_out(write_study, tmp_path, monkeypatch):
    study = tiny_study("hang", runner_options={"timeout_s": 60})
    path = write_study(study)
    from joulebench.config import load_study
    from joulebench.study.plan import build_plan

    victim = f"{build_plan(load_study(path)).configs[0].config_id}-r0"
    monkeypatch.setenv("JOULEBENCH_FAULT", f"hang:{victim}")
    out = tmp_path / "r"
    t0 = time.monotonic()
    result = run_study(path, out=out, quiet=True, report=False)
    assert time.monotonic() - t0 < 120
    rec = _records(out)[victim]
    assert result.exit_code == 1 and rec["error_kind"] == "timeout" and "timed out" in rec["error"]
    assert not _live_workers(out)


def _live_workers(study_dir: Path) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "joulebench.worker.main" in cmd and str(study_dir) in cmd:
            pids.append(int(p.name))
    return pids


def _start(path: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([*JOULEBENCH, "run", str(path), "--out", str(out), "--quiet", "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for_records(out: Path, n: int, proc: subprocess.Popen, timeout=300) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if len([r for r in _records(out).values() if r.get("status") == "ok"]) >= n:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    raise AssertionError("no records appeared")


def _interruptible_study(name: str) -> dict:
    s = tiny_study(name, sweep={"batch_size": [1, 2, 3]}, repeats=2)
    s["measurement"] = dict(s["measurement"], min_window_s=1.5)
    return s


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "term", "kill-9"])
def test_interrupt_then_resume_runs_every_trial_exactly_once(write_study, tmp_path, sig):
    path = write_study(_interruptible_study(f"int-{sig.name.lower()}"))
    out = tmp_path / "r"
    proc = _start(path, out)
    _wait_for_records(out, 2, proc)
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    if sig in (signal.SIGINT, signal.SIGTERM):
        assert rc == 130, proc.stdout.read()
        assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    else:
        assert rc == -signal.SIGKILL
    deadline = time.monotonic() + 20
    while _live_workers(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _live_workers(out), "the worker outlived its orchestrator"
    kept = {tid: r for tid, r in _records(out).items() if r["status"] == "ok"}
    assert 2 <= len(kept) < 6
    interrupted = [r for r in _records(out).values() if r["status"] == "failed"]
    assert all(r["error_kind"] == "interrupted" for r in interrupted)
    said = {signal.SIGINT: "interrupted by the user (Ctrl-C)", signal.SIGTERM: "stopped by SIGTERM"}.get(sig)
    assert all(said in r["error"] for r in interrupted if said), [r["error"] for r in interrupted]

    result = resume_study(out, quiet=True, report=False)
    assert result.exit_code == 0
    final = _records(out)
    assert set(final) == _plan_ids(out)                     # every trial, exactly once (one file per id)
    assert all(r["status"] == "ok" for r in final.values())
    for tid, r in kept.items():                            # nothing that had finished ran again
        assert final[tid]["started_at"] == r["started_at"]
        assert final[tid]["experiment_id"] == r["experiment_id"]


def test_resume_refuses_a_changed_study_file(write_study, tmp_path):
    path = write_study(tiny_study("chg"))
    out = tmp_path / "r"
    run_study(path, out=out, quiet=True, report=False)
    path.write_text(path.read_text().replace("prompts: 4", "prompts: 5"))
    with pytest.raises(ResumeError) as ei:
        resume_study(out, quiet=True, report=False)
    assert "changed" in str(ei.value)


def test_cli_run_prints_results_table(write_study, tmp_path):
    from .conftest import run_cli

    r = run_cli("run", write_study(tiny_study("cli", sweep={"batch_size": [1, 2]})), "--out", tmp_path / "o",
                "--quiet", "--no-report")
    assert r.returncode == 0, r.stderr
    assert "tokens/s" in r.stdout and "batch_size" in r.stdout
    r2 = run_cli("run", write_study(tiny_study("cli")), "--out", tmp_path / "o")
    assert r2.returncode == 1 and "already holds a study" in r2.stderr
