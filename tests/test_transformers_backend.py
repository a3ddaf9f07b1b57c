"""The transformers backend with real generation on a tiny synthetic model."""
from __future__ import annotations

import pytest

from joulebench.backends.transformers import TransformersBackend, TransformersParams
from joulebench.models import parse_model
from joulebench.workloads import build_requests


@pytest.fixture(scope="module")
def backend():
    b = TransformersBackend(TransformersParams(dtype="float32", batch_size=3), {"device": "cpu"})
    info = b.load(parse_model("synthetic:tiny-llama"))
    assert info.synthetic_weights and info.parameters == 106_816
    yield b
    b.close()


def test_forced_length_counts_timestamps_and_latency(backend):
    reqs = build_requests({"dataset": "synthetic", "prompts": 5, "input_tokens": 7}, backend.tokenizer)
    res = backend.generate(reqs, {"max_output_tokens": 6, "force_output_tokens": True, "batch_size": 2})
    assert [r.index for r in res] == [0, 1, 2, 3, 4]
    assert all(r.input_tokens == 7 and r.output_tokens == 6 for r in res)
    for r in res:
        assert len(r.token_times_s) == 6
        assert r.ttft_s > 0
        assert all(x > 0 for x in r.itl_s()) and len(r.itl_s()) == 5
        assert r.latency_s >= r.ttft_s
        assert r.tpot_s == pytest.approx((r.latency_s - r.ttft_s) / 5)
    # batches of 2: requests 0 and 1 share a submit time, request 2 starts later
    assert res[0].submit_s == res[1].submit_s < res[2].submit_s


def test_unforced_generation_stops_at_eos_and_never_counts_after_it(backend):
    reqs = build_requests({"dataset": "synthetic", "prompts": 3, "input_tokens": 5}, backend.tokenizer)
    forced = backend.generate(reqs, {"max_output_tokens": 8, "force_output_tokens": True})
    # Make the token the model emits at step 3 for request 0 the EOS token: generation must stop there.
    import torch

    ids = torch.tensor([list(reqs[0].prompt_token_ids)])
    out = backend.model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=2)
    third = int(out[0, -1])
    first_pos = [int(t) for t in out[0, ids.shape[1]:]].index(third) + 1
    old = backend.tokenizer.eos_id
    backend.tokenizer.eos_id = third
    try:
        res = backend.generate(reqs[:1], {"max_output_tokens": 8, "force_output_tokens": False, "batch_size": 1})
    finally:
        backend.tokenizer.eos_id = old
    assert res[0].output_tokens == first_pos <= 3
    assert res[0].finish_reason == "stop"
    assert len(res[0].token_times_s) == first_pos
    assert forced[0].output_tokens == 8


def test_left_padding_in_mixed_length_batches(backend, tmp_path):
    import json

    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": t}) for t in ["hi", "a much longer prompt here"]))
    reqs = build_requests({"dataset": str(p), "prompts": 2}, backend.tokenizer)
    res = backend.generate(reqs, {"max_output_tokens": 3, "force_output_tokens": True, "batch_size": 2})
    assert [r.input_tokens for r in res] == [2, len("a much longer prompt here")]
    assert [r.output_tokens for r in res] == [3, 3]


def test_check_params_rejects_gpu_only_options_on_cpu():
    probs = TransformersBackend.check_params({"device": "cpu", "quantization": "bnb-4bit",
                                              "attn_implementation": "sdpa", "dtype": "bfloat16"})
    assert probs and "CUDA" in probs[0]
