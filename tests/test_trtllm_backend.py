"""TensorRT-LLM backend: the trtllm-serve recipe (argv), the LLM-API options YAML, parameter mapping and
validation. TensorRT-LLM cannot be installed on any machine here: no test starts it."""
from __future__ import annotations

import re

import pytest
import yaml
from pydantic import ValidationError

from joulebench.backends import ENGINE_PACKAGES, get_backend_class, load_parameters
from joulebench.backends.served import recipes
from joulebench.backends.trtllm import TRTLLM_LOAD, TRTLLMBackend, TRTLLMParams, llm_api_options, server_options

PY = "/venv/bin/python"


def argv(extra_yaml: str | None = None, **params) -> list[str]:
    return recipes.TRTLLM.build_command(PY, "/models/m", "127.0.0.1", 8123,
                                        server_options(TRTLLMParams(**params), extra_yaml))


def value(cmd: list[str], flag: str) -> str:
    assert cmd.count(flag) == 1, f"{flag} appears {cmd.count(flag)} times in {cmd}"
    return cmd[cmd.index(flag) + 1]


def test_registered():
    assert get_backend_class("trtllm") is TRTLLMBackend and ENGINE_PACKAGES["trtllm"] == ("tensorrt_llm",)
    assert recipes.get_recipe("trtllm") is recipes.TRTLLM


def test_defaults():
    cmd = argv()
    # trtllm-serve next to the environment's python, its `serve` command, the model as argument
    assert cmd[:3] == ["/venv/bin/trtllm-serve", "serve", "/models/m"]
    assert value(cmd, "--host") == "127.0.0.1" and value(cmd, "--port") == "8123"
    assert value(cmd, "--backend") == "pytorch"
    for absent in ("--extra_llm_api_options", "--tp_size", "--max_batch_size", "--trust_remote_code"):
        assert absent not in cmd
    assert llm_api_options(TRTLLMParams()) == {}


def test_every_flag_parameter():
    cmd = argv("/tmp/x.yaml", trtllm_backend="trt", max_num_seqs=256, max_num_tokens=8192, max_model_len=4096,
               tensor_parallel_size=2, pipeline_parallel_size=2, kv_cache_free_gpu_memory_fraction=0.9,
               enable_chunked_prefill=True, trust_remote_code=True, tokenizer="/tok",
               engine_args={"num_postprocess_workers": 2, "log_level": "warning"})
    expected = {"--backend": "tensorrt", "--max_batch_size": "256", "--max_num_tokens": "8192",
                "--max_seq_len": "4096", "--tp_size": "2", "--pp_size": "2",
                "--kv_cache_free_gpu_memory_fraction": "0.9", "--tokenizer": "/tok",
                "--extra_llm_api_options": "/tmp/x.yaml", "--num_postprocess_workers": "2", "--log_level": "warning"}
    for flag, v in expected.items():
        assert value(cmd, flag) == v
    assert cmd.count("--enable_chunked_prefill") == 1 and cmd.count("--trust_remote_code") == 1
    assert value(argv(gpu_memory_utilization=0.8), "--kv_cache_free_gpu_memory_fraction") == "0.8"


def test_llm_api_options_yaml():
    p = TRTLLMParams(dtype="bfloat16", quantization="FP8", kv_cache_dtype="fp8", enable_prefix_caching=False,
                     cuda_graph_max_bs=128, llm_api_options={"kv_cache_config": {"tokens_per_block": 64},
                                                              "enable_iter_perf_stats": True})
    assert llm_api_options(p) == {
        "dtype": "bfloat16", "quant_config": {"quant_algo": "FP8"},
        "kv_cache_config": {"dtype": "fp8", "enable_block_reuse": False, "tokens_per_block": 64},
        "cuda_graph_config": {"max_batch_size": 128}, "enable_iter_perf_stats": True}
    assert llm_api_options(TRTLLMParams(cuda_graphs=False)) == {"cuda_graph_config": None}
    assert llm_api_options(TRTLLMParams(enforce_eager=True)) == {"cuda_graph_config": None}
    assert llm_api_options(TRTLLMParams(quantization="int8_sq"))["quant_config"]["quant_algo"] == "W8A8_SQ_PER_CHANNEL"


def test_backend_writes_the_yaml_it_passes(tmp_path):
    backend = TRTLLMBackend(TRTLLMParams(dtype="float16", max_num_seqs=32))
    try:
        opts = backend.server_options()
        path = opts["extra_llm_api_options"]
        assert yaml.safe_load(open(path).read()) == {"dtype": "float16"}
        assert opts["max_num_seqs"] == 32
    finally:
        backend.close()
    assert "extra_llm_api_options" not in TRTLLMBackend(TRTLLMParams()).server_options()


def test_forced_length_fields():
    assert recipes.TRTLLM.force_length_fields(64, {}) == {"ignore_eos": True, "min_tokens": 64}
    assert recipes.TRTLLM.stream_options == {"include_usage": True, "continuous_usage_stats": True}


@pytest.mark.parametrize("params, message", [
    ({"mode": "offline"}, "mode: served only"),
    ({"trtllm_backend": "onnx"}, "trtllm_backend"),
    ({"dtype": "int8"}, "dtype"),
    ({"quantization": "gguf"}, "unknown quantization 'gguf'"),
    ({"kv_cache_dtype": "int8"}, "kv_cache_dtype"),
    ({"kv_cache_free_gpu_memory_fraction": 0.9, "gpu_memory_utilization": 0.8}, "give one"),
    ({"kv_cache_free_gpu_memory_fraction": 1.5}, "kv_cache_free_gpu_memory_fraction"),
    ({"max_num_seqs": 0}, "max_num_seqs"),
    ({"pipeline_parallel_size": 0}, "pipeline_parallel_size"),
    ({"cuda_graphs": True, "enforce_eager": True}, "contradict"),
    ({"cuda_graphs": False, "cuda_graph_max_bs": 8}, "needs CUDA graphs"),
    ({"trtllm_backend": "tensorrt", "cuda_graphs": False}, "trtllm_backend: pytorch"),
    ({"engine_args": {"max_batch_size": 8}}, "set it as 'max_num_seqs'"),
    ({"engine_args": {"extra_llm_api_options": "/x.yaml"}}, "set it as 'llm_api_options'"),
    ({"engine_args": {"port": 1}}, "joulebench sets this flag itself"),
    ({"backend": "pytorch"}, "backend"),
])
def test_bad_parameters_are_clear_errors(params, message):
    with pytest.raises(ValidationError) as exc:
        TRTLLMParams(**params)
    assert re.search(message, str(exc.value)), str(exc.value)


def test_load_time_and_runtime_parameters():
    load, runtime = TRTLLMBackend.load_keys, TRTLLMBackend.runtime_keys
    assert set(TRTLLM_LOAD) == load
    for key in ("max_num_seqs", "max_num_tokens", "tensor_parallel_size", "kv_cache_free_gpu_memory_fraction",
                "trtllm_backend", "dtype", "quantization", "llm_api_options", "engine_args", "cuda_graphs"):
        assert key in load and key not in runtime
    for key in ("concurrency", "request_rate", "max_output_tokens", "temperature", "seed"):
        assert key in runtime and key not in load
    a = {"model": "m/x", "backend": "trtllm", "device": "cuda", "max_num_seqs": 8, "concurrency": 1}
    assert load_parameters(a) == load_parameters(a | {"concurrency": 16})
    assert load_parameters(a) != load_parameters(a | {"max_num_seqs": 16})
    assert TRTLLMBackend.check_params({"device": "cpu"}) and TRTLLMBackend.check_params({"device": "cuda"}) == []


def test_raw_recipe_options_take_vllm_names_without_duplicate_flags():
    cmd = recipes.TRTLLM.build_command(PY, "m", "127.0.0.1", 1, {"max_num_batched_tokens": 4096, "max_seq_len": 512,
                                                                 "gpu_memory_utilization": 0.5,
                                                                 "kv_cache_free_gpu_memory_fraction": 0.9})
    assert value(cmd, "--max_num_tokens") == "4096" and value(cmd, "--max_seq_len") == "512"
    assert value(cmd, "--kv_cache_free_gpu_memory_fraction") == "0.9"
