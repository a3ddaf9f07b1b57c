"""SGLang backend: parameters, their validation, the server's argv, load-time/runtime classification,
and the served wiring up to the server start. SGLang itself cannot run on these CPUs (its CPU
kernels are not on the package index): nothing here pretends to run it; the GPU proof is the
engines-gpu study."""
from __future__ import annotations

import json
import sys

import pytest
from pydantic import ValidationError

from joulebench.backends import ENGINE_PACKAGES, backend_names, get_backend_class, load_parameters
from joulebench.backends.served import recipes
from joulebench.backends.sglang import SGLANG_LOAD, SGLangBackend, SGLangParams, server_options
from joulebench.errors import BackendError

PY = "/venv/bin/python"


def argv(**params) -> list[str]:
    p = SGLangParams(**params)
    return recipes.SGLANG.build_command(PY, "/models/m", "127.0.0.1", 30123, server_options(p))


def value(cmd: list[str], flag: str) -> str:
    assert cmd.count(flag) == 1, f"{flag} appears {cmd.count(flag)} times in {cmd}"
    return cmd[cmd.index(flag) + 1]


def test_registered_with_its_engine_package():
    assert "sglang" in backend_names() and get_backend_class("sglang") is SGLangBackend
    assert ENGINE_PACKAGES["sglang"] == ("sglang",)
    assert recipes.get_recipe("sglang") is recipes.SGLANG


def test_defaults_serve_with_sglangs_own_choices():
    cmd = argv()
    assert cmd[:3] == [PY, "-m", "sglang.launch_server"]
    assert value(cmd, "--model-path") == "/models/m" and value(cmd, "--port") == "30123"
    assert value(cmd, "--host") == "127.0.0.1" and value(cmd, "--served-model-name") == "joulebench-model"
    assert value(cmd, "--dtype") == "auto" and value(cmd, "--tp-size") == "1" and value(cmd, "--random-seed") == "0"
    for absent in ("--disable-cuda-graph", "--disable-radix-cache", "--attention-backend", "--max-running-requests",
                   "--mem-fraction-static", "--skip-tokenizer-init", "--load-format", "--trust-remote-code"):
        assert absent not in cmd
    assert SGLangParams().mode == "served"


def test_every_parameter_reaches_its_flag():
    cmd = argv(dtype="bfloat16", quantization="fp8", kv_cache_dtype="fp8_e4m3", max_num_seqs=64,
               chunked_prefill_size=4096, mem_fraction_static=0.83, attention_backend="triton",
               cuda_graph_max_bs=256, tensor_parallel_size=2, sampling_backend="pytorch", grammar_backend="none",
               load_format="dummy", skip_tokenizer_init=True, max_model_len=2048, trust_remote_code=True,
               tokenizer="/tok", seed=7, disable_radix_cache=True,
               engine_args={"schedule_policy": "fcfs", "enable_metrics": True, "log_level": "warning",
                            "disable_overlap_schedule": False})
    expected = {"--dtype": "bfloat16", "--quantization": "fp8", "--kv-cache-dtype": "fp8_e4m3",
                "--max-running-requests": "64", "--chunked-prefill-size": "4096", "--mem-fraction-static": "0.83",
                "--attention-backend": "triton", "--cuda-graph-max-bs": "256", "--tp-size": "2",
                "--sampling-backend": "pytorch", "--grammar-backend": "none", "--load-format": "dummy",
                "--context-length": "2048", "--tokenizer-path": "/tok", "--random-seed": "7",
                "--schedule-policy": "fcfs", "--log-level": "warning"}
    for flag, v in expected.items():
        assert value(cmd, flag) == v
    for flag in ("--skip-tokenizer-init", "--trust-remote-code", "--disable-radix-cache", "--enable-metrics"):
        assert cmd.count(flag) == 1
    assert "--disable-overlap-schedule" not in cmd          # False: SGLang's default, no flag
    assert "--disable-cuda-graph" not in cmd


def test_vllm_names_map_to_sglang_flags():
    cmd = argv(gpu_memory_utilization=0.85, enable_prefix_caching=False, enforce_eager=True, max_num_seqs=8)
    assert value(cmd, "--mem-fraction-static") == "0.85" and value(cmd, "--max-running-requests") == "8"
    assert "--disable-radix-cache" in cmd and "--disable-cuda-graph" in cmd
    assert "--disable-cuda-graph" in argv(cuda_graphs=False)
    assert "--disable-radix-cache" not in argv(enable_prefix_caching=True)
    assert "--chunked-prefill-size" in argv(chunked_prefill_size=-1)    # -1: no chunking


def test_forced_length_is_ignore_eos_without_min_tokens():
    # min_tokens is refused by SGLang with skip_tokenizer_init; ignore_eos + max_tokens is exact.
    assert recipes.SGLANG.force_length_fields(128, {"skip_tokenizer_init": True}) == {"ignore_eos": True}
    assert recipes.SGLANG.stream_options["continuous_usage_stats"] is True
    assert recipes.SGLANG.accepts_token_ids and recipes.SGLANG.health_path == "/health"


@pytest.mark.parametrize("params, message", [
    ({"attention_backend": "fa2"}, "attention_backend"),
    ({"sampling_backend": "cuda"}, "sampling_backend"),
    ({"grammar_backend": "json"}, "grammar_backend"),
    ({"load_format": "random"}, "load_format"),
    ({"kv_cache_dtype": "int4"}, "kv_cache_dtype"),
    ({"dtype": "fp64"}, "dtype"),
    ({"quantization": "int3"}, "unknown quantization 'int3'.*fp8"),
    ({"mode": "offline"}, "mode: served only"),
    ({"mem_fraction_static": 0.8, "gpu_memory_utilization": 0.9}, "give one"),
    ({"mem_fraction_static": 1.2}, "mem_fraction_static"),
    ({"cuda_graphs": False, "enforce_eager": False}, "contradict"),
    ({"enable_prefix_caching": True, "disable_radix_cache": True}, "contradict"),
    ({"cuda_graphs": False, "cuda_graph_max_bs": 64}, "needs CUDA graphs"),
    ({"chunked_prefill_size": 0}, "chunked_prefill_size"),
    ({"max_num_seqs": 0}, "max_num_seqs"),
    ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
    ({"engine_args": {"tp_size": 2}}, "set it as 'tensor_parallel_size'"),
    ({"engine_args": {"attention-backend": "fa3"}}, "set 'attention_backend' directly"),
    ({"engine_args": {"port": 1}}, "joulebench sets this flag itself"),
    ({"engine_args": {"bad flag; rm": 1}}, "not a flag name"),
    ({"batch_size": 4}, "batch_size does not apply"),
    ({"no_such_parameter": 1}, "no_such_parameter"),
])
def test_bad_parameters_are_clear_errors(params, message):
    import re

    with pytest.raises(ValidationError) as exc:
        SGLangParams(**params)
    assert re.search(message, str(exc.value)), str(exc.value)


def test_load_time_and_runtime_parameters():
    load, runtime = SGLangBackend.load_keys, SGLangBackend.runtime_keys
    # everything the server is started with restarts it; the load generator's knobs reuse it
    assert set(SGLANG_LOAD) == load
    for key in ("max_num_seqs", "attention_backend", "cuda_graphs", "cuda_graph_max_bs", "mem_fraction_static",
                "gpu_memory_utilization", "tensor_parallel_size", "quantization", "kv_cache_dtype", "dtype",
                "chunked_prefill_size", "load_format", "sampling_backend", "engine_args", "mode"):
        assert key in load and key not in runtime
    for key in ("concurrency", "request_rate", "max_output_tokens", "force_output_tokens", "temperature", "top_p",
                "top_k", "seed"):
        assert key in runtime and key not in load
    fields = set(SGLangParams.model_fields) - {"batch_size"}
    assert fields <= load | runtime, fields - load - runtime
    a = {"model": "synthetic:tiny-llama", "backend": "sglang", "device": "cuda", "max_num_seqs": 8, "concurrency": 1}
    assert load_parameters(a) == load_parameters(a | {"concurrency": 64, "request_rate": 2.0})
    assert load_parameters(a) != load_parameters(a | {"max_num_seqs": 64})


def test_plan_time_check_refuses_cpu():
    assert SGLangBackend.check_params({"device": "cpu"})
    assert SGLangBackend.check_params({"device": "cuda:0"}) == []


def test_served_load_writes_only_config_for_dummy_weights_and_reports_a_missing_engine(tmp_path, monkeypatch):
    """The real load path up to the server: the synthetic model's config and tokenizer (no weights,
    load_format: dummy), the tokenizer loaded, the server started with this interpreter. Here that
    interpreter has no SGLang, so the server exits at once and the error carries its log."""
    from joulebench.models import parse_model

    monkeypatch.setenv("JOULEBENCH_CACHE", str(tmp_path / "cache"))
    params = SGLangParams(load_format="dummy", dtype="bfloat16", attention_backend="triton",
                          server_ready_timeout_s=60)
    backend = SGLangBackend(params)
    backend.log_dir = tmp_path / "logs"
    try:
        with pytest.raises(BackendError) as exc:
            backend.load(parse_model("synthetic:tiny-llama"))
    finally:
        backend.close()
    model_dir = tmp_path / "cache" / "synthetic" / "tiny-llama-bfloat16-config-only"
    files = sorted(p.name for p in model_dir.iterdir())
    assert "config.json" in files and "tokenizer.json" in files
    assert not any(f.endswith((".safetensors", ".bin")) for f in files)
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    text = str(exc.value)
    assert "sglang server" in text and "exited" in text
    assert "sglang" in text.lower() and ("No module named" in text or "ModuleNotFoundError" in text)
    assert f"{sys.executable} -m sglang.launch_server" in text and "--attention-backend triton" in text
    assert backend.tokenizer is not None and backend.tokenize_count("hello") > 0


def test_raw_recipe_options_take_vllm_names_without_duplicate_flags():
    cmd = recipes.SGLANG.build_command(PY, "m", "127.0.0.1", 1, {"gpu_memory_utilization": 0.8})
    assert value(cmd, "--mem-fraction-static") == "0.8"
    cmd = recipes.SGLANG.build_command(PY, "m", "127.0.0.1", 1, {"gpu_memory_utilization": 0.8,
                                                                 "mem_fraction_static": 0.7})
    assert value(cmd, "--mem-fraction-static") == "0.7"


def test_runtime_resolves_trial_then_engine_values_and_passes_the_rest_on():
    backend = SGLangBackend(SGLangParams(temperature=0.5, concurrency=4, seed=3))
    try:
        rt = backend.runtime({"max_output_tokens": 32, "concurrency": 8, "force_output_tokens": True,
                              "dataset": "aienergyscore"})
    finally:
        backend.close()
    assert rt["concurrency"] == 8 and rt["temperature"] == 0.5 and rt["seed"] == 3
    assert rt["max_output_tokens"] == 32 and rt["force_output_tokens"] is True and rt["request_rate"] is None
    assert rt["dataset"] == "aienergyscore"
    unloaded = SGLangBackend(SGLangParams())
    try:
        with pytest.raises(BackendError, match="before load"):
            unloaded.generate([], {})
    finally:
        unloaded.close()


def _flush_server(status: int):
    import http.server
    import threading

    seen: list[tuple[str, str]] = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append(("POST", self.path))
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status < 300 else b"pending requests")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, seen


def test_sglang_passes_flush_the_prefix_cache_first_and_a_failed_flush_stops_the_pass():
    """SGLang has no cache salt: each pass starts with POST /flush_cache (the radix cache would otherwise serve
    the measured pass the prefill of the warm-up's identical prompts). SGLang cannot run here; the request is
    checked against a local HTTP listener."""
    from joulebench.backends.served.recipes import SGLANG, VLLM
    from joulebench.backends.served.session import ServedSession
    from joulebench.errors import BackendError

    assert (SGLANG.pass_isolation, SGLANG.flush_path) == ("flush", "/flush_cache")
    srv, seen = _flush_server(200)
    try:
        s = ServedSession(SGLANG, python="python3", model="m", options={})
        s.port = srv.server_address[1]
        assert s.isolate_pass() == {} and seen == [("POST", "/flush_cache")]
        s.isolate_passes = False
        assert s.isolate_pass() == {} and len(seen) == 1          # off: no flush
    finally:
        srv.shutdown()
    srv, seen = _flush_server(400)
    try:
        s = ServedSession(SGLANG, python="python3", model="m", options={})
        s.port = srv.server_address[1]
        with pytest.raises(BackendError, match="/flush_cache answered 400 before a pass: pending requests"):
            s.isolate_pass()
    finally:
        srv.shutdown()
    # vLLM: a fresh salt each pass, nothing sent
    v = ServedSession(VLLM, python="python3", model="m", options={})
    a, b = v.isolate_pass(), v.isolate_pass()
    assert set(a) == {"cache_salt"} and a["cache_salt"] != b["cache_salt"]
