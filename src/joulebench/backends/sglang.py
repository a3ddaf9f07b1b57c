"""SGLang backend: SGLang's OpenAI-compatible server (``python -m sglang.launch_server``), started by
joulebench and driven by the engine-agnostic served mode (server per load group, readiness, load
generator, steady-state window, per-request attribution, SLO goodput).

Only ``mode: served`` is wired: SGLang's in-process ``sglang.Engine`` is not, and ``mode: offline``
is refused with a clear error.

Forced output length: ``ignore_eos`` with ``max_tokens`` (exactly ``max_tokens`` tokens come out);
``min_tokens`` is not sent, since SGLang refuses it when started with ``skip_tokenizer_init``.

Parameters (all load-time: a change starts a fresh server; see ``SGLANG_LOAD``): the names vLLM uses
where the meaning is the same (``max_num_seqs``, ``gpu_memory_utilization``, ``enable_prefix_caching``,
``enforce_eager``, ``tensor_parallel_size``, ``max_model_len``), so one ``engine:`` block can serve a
``backend`` sweep, plus SGLang's own (``attention_backend``, ``cuda_graphs``, ``cuda_graph_max_bs``,
``chunked_prefill_size``, ``mem_fraction_static``, ``sampling_backend``, ``grammar_backend``,
``load_format``, ``skip_tokenizer_init``, ``disable_radix_cache``) and ``engine_args`` for any other
server flag. Runtime (the server is reused): concurrency, request_rate, output length, decoding.

On the GPU machines: ``attention_backend: triton`` where sgl_kernel's FA3 library is left out,
``sampling_backend: pytorch`` (flashinfer's sampler compiles kernels on first use), ``grammar_backend:
none``, ``load_format: dummy`` with a synthetic model (only its config and tokenizer are written).
SGLang does not run on CPUs here (its CPU kernels are not on the package index).
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from joulebench.backends.served.backend import ServedEngineBackend, check_engine_args
from joulebench.backends.served.params import ModeParams

AttentionBackend = Literal["fa3", "triton", "flashinfer", "torch_native"]
KVCacheDtype = Literal["auto", "fp8_e5m2", "fp8_e4m3", "bf16", "bfloat16"]
LoadFormat = Literal["auto", "pt", "safetensors", "npcache", "dummy", "sharded_state", "gguf", "bitsandbytes"]
# SGLang's --quantization choices (0.5.x)
QUANTIZATIONS = frozenset({
    "awq", "fp8", "mxfp8", "gptq", "marlin", "gptq_marlin", "awq_marlin", "bitsandbytes", "gguf", "modelopt",
    "modelopt_fp8", "modelopt_fp4", "petit_nvfp4", "w8a8_int8", "w8a8_fp8", "moe_wna16", "w4afp8", "mxfp4",
    "auto-round", "compressed-tensors", "qoq", "quark", "unquant"})


class SGLangParams(ModeParams):
    mode: Literal["offline", "served"] = "served"
    # load-time: a change starts a fresh server
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = "auto"
    quantization: str | None = None
    kv_cache_dtype: KVCacheDtype | None = None
    max_num_seqs: int | None = Field(None, ge=1, description="--max-running-requests")
    chunked_prefill_size: int | None = Field(None, description="tokens per prefill chunk; -1 disables chunking")
    mem_fraction_static: float | None = Field(None, gt=0, lt=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, lt=1, description="vLLM's name for "
                                                 "mem_fraction_static (the same flag)")
    attention_backend: AttentionBackend | None = None
    cuda_graphs: bool | None = None            # False: --disable-cuda-graph
    enforce_eager: bool | None = None          # vLLM's name: true = no CUDA graphs
    cuda_graph_max_bs: int | None = Field(None, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    enable_prefix_caching: bool | None = None  # False: --disable-radix-cache
    disable_radix_cache: bool | None = None
    sampling_backend: Literal["flashinfer", "pytorch"] | None = None
    grammar_backend: Literal["xgrammar", "outlines", "llguidance", "none"] | None = None
    load_format: LoadFormat | None = None
    skip_tokenizer_init: bool = False
    max_model_len: int | None = Field(None, ge=16, description="--context-length")
    trust_remote_code: bool = False
    tokenizer: str | None = None
    engine_args: dict[str, Any] = {}           # any other server flag: {flag_name: value}

    @model_validator(mode="after")
    def _sglang_rules(self):
        if self.mode == "offline":
            raise ValueError("backend sglang runs in mode: served only (SGLang's in-process sglang.Engine is "
                             "not wired into joulebench); set engine.mode: served")
        if self.mem_fraction_static is not None and self.gpu_memory_utilization is not None \
                and self.mem_fraction_static != self.gpu_memory_utilization:
            raise ValueError("mem_fraction_static and gpu_memory_utilization set the same SGLang flag "
                             "(--mem-fraction-static): give one")
        if self.cuda_graphs is not None and self.enforce_eager is not None \
                and self.cuda_graphs == self.enforce_eager:
            raise ValueError("cuda_graphs and enforce_eager contradict each other (enforce_eager: true means "
                             "cuda_graphs: false): give one")
        if self.enable_prefix_caching is not None and self.disable_radix_cache is not None \
                and self.enable_prefix_caching == self.disable_radix_cache:
            raise ValueError("enable_prefix_caching and disable_radix_cache contradict each other: give one")
        if self.cuda_graph_max_bs is not None and not self.graphs_on:
            raise ValueError("cuda_graph_max_bs needs CUDA graphs (cuda_graphs is false)")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization '{self.quantization}' for SGLang; one of: "
                             f"{', '.join(sorted(QUANTIZATIONS))}")
        if self.chunked_prefill_size is not None and self.chunked_prefill_size != -1 \
                and self.chunked_prefill_size < 1:
            raise ValueError("chunked_prefill_size must be a positive token count, or -1 to disable chunking")
        check_engine_args(self.engine_args, set(type(self).model_fields), "sglang", _SERVER_OWNED)
        return self

    @property
    def graphs_on(self) -> bool:
        if self.cuda_graphs is not None:
            return self.cuda_graphs
        return not self.enforce_eager if self.enforce_eager is not None else True

    @property
    def radix_cache_on(self) -> bool:
        if self.disable_radix_cache is not None:
            return not self.disable_radix_cache
        return self.enable_prefix_caching is not False


# Server flags that joulebench sets itself or that a typed parameter sets (engine_args may not).
_SERVER_OWNED: dict[str, str | None] = {
    "host": None, "port": None, "model_path": None, "model": None, "served_model_name": None,
    "random_seed": "seed", "tp_size": "tensor_parallel_size", "tensor_parallel_size": "tensor_parallel_size",
    "max_running_requests": "max_num_seqs", "context_length": "max_model_len", "tokenizer_path": "tokenizer",
    "disable_cuda_graph": "cuda_graphs"}

SGLANG_LOAD = ("mode", "dtype", "quantization", "kv_cache_dtype", "max_num_seqs", "chunked_prefill_size",
               "mem_fraction_static", "gpu_memory_utilization", "attention_backend", "cuda_graphs",
               "enforce_eager", "cuda_graph_max_bs", "tensor_parallel_size", "enable_prefix_caching",
               "disable_radix_cache", "sampling_backend", "grammar_backend", "load_format", "skip_tokenizer_init",
               "max_model_len", "trust_remote_code", "tokenizer", "engine_args", "server_ready_timeout_s")


def server_options(p: SGLangParams) -> dict[str, Any]:
    """The recipe's options (``recipes._sglang_command``), in SGLang's terms (pure)."""
    opts: dict[str, Any] = {}
    for key in ("dtype", "quantization", "kv_cache_dtype", "max_num_seqs", "chunked_prefill_size",
                "attention_backend", "cuda_graph_max_bs", "tensor_parallel_size", "sampling_backend",
                "grammar_backend", "load_format", "max_model_len", "tokenizer"):
        value = getattr(p, key)
        if value is not None:
            opts[key] = value
    mem = p.mem_fraction_static if p.mem_fraction_static is not None else p.gpu_memory_utilization
    if mem is not None:
        opts["mem_fraction_static"] = mem
    opts["cuda_graphs"] = p.graphs_on
    opts["radix_cache"] = p.radix_cache_on
    opts["skip_tokenizer_init"] = p.skip_tokenizer_init
    opts["trust_remote_code"] = p.trust_remote_code
    opts["seed"] = p.seed
    opts["engine_args"] = dict(p.engine_args)
    return opts


class SGLangBackend(ServedEngineBackend):
    name: ClassVar[str] = "sglang"
    recipe_name: ClassVar[str] = "sglang"
    distributions: ClassVar[tuple[str, ...]] = ("sglang",)
    Params: ClassVar[type[SGLangParams]] = SGLangParams
    load_keys: ClassVar[frozenset[str]] = frozenset(SGLANG_LOAD)

    def server_options(self) -> dict[str, Any]:
        return server_options(self.params)

    def server_env(self) -> dict[str, str]:
        # No usage reports from inside a measurement.
        return {"SGLANG_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}

    def dummy_weights(self) -> bool:
        return self.params.load_format == "dummy"

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> list[str]:
        problems = []
        if str(params.get("device", "auto")) == "cpu":
            problems.append("SGLang runs on CUDA GPUs here (its CPU kernels are not on the package index)")
        return problems
