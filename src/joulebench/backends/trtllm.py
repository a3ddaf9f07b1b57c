"""TensorRT-LLM backend: NVIDIA's OpenAI-compatible server (``trtllm-serve serve MODEL``), started by
joulebench and driven by the engine-agnostic served mode, like SGLang.

NOT RUN HERE. No machine this project is tested on can install TensorRT-LLM (every tensorrt-llm and
tensorrt release on the package index is a placeholder that downloads from NVIDIA's own index at
install time), so this backend is the recipe and the parameter mapping, unit-tested as argv and
YAML, never started. Use it from ``docker/trtllm/Dockerfile`` (NVIDIA's release image) and check
the first run's server log.

Parameters: the trtllm-serve flags (``max_num_seqs`` -> ``--max_batch_size``, ``max_num_tokens``,
``max_model_len`` -> ``--max_seq_len``, ``tensor_parallel_size`` / ``pipeline_parallel_size``,
``kv_cache_free_gpu_memory_fraction`` (or vLLM's ``gpu_memory_utilization``), ``trtllm_backend``
pytorch | tensorrt, ``enable_chunked_prefill``, ``trust_remote_code``, ``tokenizer``) and the LLM-API
options trtllm-serve takes only from a YAML file (``--extra_llm_api_options``): ``dtype``,
``quantization`` (``quant_config.quant_algo``), ``kv_cache_dtype``, ``enable_prefix_caching``
(``kv_cache_config.enable_block_reuse``), CUDA graphs (``cuda_graph_config``), plus
``llm_api_options`` for anything else. All load-time; concurrency, request_rate, output length and
decoding are runtime (the server is reused). Forced length: ``ignore_eos`` with ``min_tokens``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from joulebench.backends.served.backend import ServedEngineBackend, check_engine_args
from joulebench.backends.served.params import ModeParams

# QuantAlgo names of TensorRT-LLM's quant_config, by the lower-case name a study uses.
QUANT_ALGOS = {"fp8": "FP8", "fp8_block_scales": "FP8_BLOCK_SCALES", "nvfp4": "NVFP4", "w4a16_awq": "W4A16_AWQ",
               "w4a8_awq": "W4A8_AWQ", "w8a16": "W8A16", "w4a16": "W4A16", "int8_sq": "W8A8_SQ_PER_CHANNEL",
               "w4a8_mxfp4_fp8": "W4A8_MXFP4_FP8"}


class TRTLLMParams(ModeParams):
    mode: Literal["offline", "served"] = "served"
    # load-time: trtllm-serve flags
    trtllm_backend: Literal["pytorch", "tensorrt", "trt"] = "pytorch"
    max_num_seqs: int | None = Field(None, ge=1, description="--max_batch_size")
    max_num_tokens: int | None = Field(None, ge=1)
    max_model_len: int | None = Field(None, ge=16, description="--max_seq_len")
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    kv_cache_free_gpu_memory_fraction: float | None = Field(None, gt=0, lt=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, lt=1, description="vLLM's name for "
                                                 "kv_cache_free_gpu_memory_fraction (not the same meaning: "
                                                 "TensorRT-LLM's is a fraction of the memory left after the weights)")
    enable_chunked_prefill: bool | None = None
    trust_remote_code: bool = False
    tokenizer: str | None = None
    # load-time: LLM-API options (written to the --extra_llm_api_options YAML)
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    quantization: str | None = None
    kv_cache_dtype: Literal["auto", "fp8"] | None = None
    enable_prefix_caching: bool | None = None
    cuda_graphs: bool | None = None
    enforce_eager: bool | None = None
    cuda_graph_max_bs: int | None = Field(None, ge=1)
    llm_api_options: dict[str, Any] = {}      # merged into the YAML last
    engine_args: dict[str, Any] = {}          # any other trtllm-serve flag

    @model_validator(mode="after")
    def _trtllm_rules(self):
        if self.mode == "offline":
            raise ValueError("backend trtllm runs in mode: served only (trtllm-serve); set engine.mode: served")
        if self.kv_cache_free_gpu_memory_fraction is not None and self.gpu_memory_utilization is not None \
                and self.kv_cache_free_gpu_memory_fraction != self.gpu_memory_utilization:
            raise ValueError("kv_cache_free_gpu_memory_fraction and gpu_memory_utilization set the same flag: give one")
        if self.quantization is not None and self.quantization.lower() not in QUANT_ALGOS:
            raise ValueError(f"unknown quantization '{self.quantization}' for TensorRT-LLM; one of: "
                             f"{', '.join(sorted(QUANT_ALGOS))} (or set llm_api_options.quant_config)")
        if self.cuda_graphs is not None and self.enforce_eager is not None and self.cuda_graphs == self.enforce_eager:
            raise ValueError("cuda_graphs and enforce_eager contradict each other: give one")
        graphs = self.graphs_on
        if self.cuda_graph_max_bs is not None and graphs is False:
            raise ValueError("cuda_graph_max_bs needs CUDA graphs (cuda_graphs is false)")
        if self.trtllm_backend != "pytorch" and (graphs is not None or self.cuda_graph_max_bs is not None):
            raise ValueError("cuda_graphs / cuda_graph_max_bs apply to trtllm_backend: pytorch (a TensorRT engine "
                             "decides at build time)")
        check_engine_args(self.engine_args, set(type(self).model_fields), "trtllm", _SERVER_OWNED)
        return self

    @property
    def graphs_on(self) -> bool | None:
        if self.cuda_graphs is not None:
            return self.cuda_graphs
        return (not self.enforce_eager) if self.enforce_eager is not None else None


_SERVER_OWNED: dict[str, str | None] = {
    "host": None, "port": None, "backend": "trtllm_backend", "tp_size": "tensor_parallel_size",
    "pp_size": "pipeline_parallel_size", "max_batch_size": "max_num_seqs", "max_seq_len": "max_model_len",
    "free_gpu_memory_fraction": "kv_cache_free_gpu_memory_fraction",
    "extra_llm_api_options": "llm_api_options", "config": "llm_api_options"}

TRTLLM_LOAD = tuple(f for f in TRTLLMParams.model_fields
                    if f not in ("batch_size", "concurrency", "request_rate", "temperature", "top_p", "top_k", "seed"))


def llm_api_options(p: TRTLLMParams) -> dict[str, Any]:
    """The ``--extra_llm_api_options`` YAML content (pure); {} when nothing needs it."""
    out: dict[str, Any] = {}
    if p.dtype != "auto":
        out["dtype"] = p.dtype
    if p.quantization is not None:
        out["quant_config"] = {"quant_algo": QUANT_ALGOS[p.quantization.lower()]}
    kv: dict[str, Any] = {}
    if p.kv_cache_dtype not in (None, "auto"):
        kv["dtype"] = p.kv_cache_dtype
    if p.enable_prefix_caching is not None:
        kv["enable_block_reuse"] = p.enable_prefix_caching
    if kv:
        out["kv_cache_config"] = kv
    if p.graphs_on is False:
        out["cuda_graph_config"] = None
    elif p.cuda_graph_max_bs is not None:
        out["cuda_graph_config"] = {"max_batch_size": p.cuda_graph_max_bs}
    for key, value in p.llm_api_options.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def server_options(p: TRTLLMParams, extra_yaml_path: str | None) -> dict[str, Any]:
    """The recipe's options (``recipes._trtllm_command``); the YAML path when ``llm_api_options`` is not empty."""
    opts: dict[str, Any] = {"backend": "tensorrt" if p.trtllm_backend == "trt" else p.trtllm_backend}
    for key in ("max_num_seqs", "max_num_tokens", "max_model_len", "tokenizer"):
        value = getattr(p, key)
        if value is not None:
            opts[key] = value
    if p.tensor_parallel_size != 1:
        opts["tensor_parallel_size"] = p.tensor_parallel_size
    if p.pipeline_parallel_size != 1:
        opts["pipeline_parallel_size"] = p.pipeline_parallel_size
    frac = p.kv_cache_free_gpu_memory_fraction if p.kv_cache_free_gpu_memory_fraction is not None \
        else p.gpu_memory_utilization
    if frac is not None:
        opts["kv_cache_free_gpu_memory_fraction"] = frac
    if p.enable_chunked_prefill:
        opts["enable_chunked_prefill"] = True
    if p.trust_remote_code:
        opts["trust_remote_code"] = True
    if extra_yaml_path:
        opts["extra_llm_api_options"] = extra_yaml_path
    opts["engine_args"] = dict(p.engine_args)
    return opts


class TRTLLMBackend(ServedEngineBackend):
    name: ClassVar[str] = "trtllm"
    recipe_name: ClassVar[str] = "trtllm"
    distributions: ClassVar[tuple[str, ...]] = ("tensorrt-llm", "tensorrt_llm")
    Params: ClassVar[type[TRTLLMParams]] = TRTLLMParams
    load_keys: ClassVar[frozenset[str]] = frozenset(TRTLLM_LOAD)

    def server_options(self) -> dict[str, Any]:
        import yaml

        extra = llm_api_options(self.params)
        path = None
        if extra:
            f = self._private / "extra_llm_api_options.yaml"
            f.write_text(yaml.safe_dump(extra, sort_keys=True))
            path = str(f)
        return server_options(self.params, path)

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> list[str]:
        if str(params.get("device", "auto")) == "cpu":
            return ["TensorRT-LLM runs on NVIDIA GPUs only"]
        return []
