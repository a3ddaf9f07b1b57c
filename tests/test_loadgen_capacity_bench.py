"""benchmarks/loadgen_capacity.py: the load generator against a stub server in another process counts every
streamed token of every request (in one write per response and one write per event)."""
from __future__ import annotations


import pytest

from .conftest import load_benchmark

loadgen_capacity = load_benchmark("loadgen_capacity")


@pytest.mark.parametrize("per_event", [False, True])
def test_every_streamed_token_is_counted(per_event):
    out = loadgen_capacity.run(requests=48, concurrency=16, tokens=12, per_event=per_event)
    assert out["tokens"] == 48 * 12 and out["tokens_per_s"] > 0 and out["cpu_s"] > 0
    assert out["stub"] == ("one write per event" if per_event else "one write per response")


def test_stub_body_is_vllm_style_with_running_usage():
    import json

    events = [e for e in loadgen_capacity.sse_body(3).decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    usage = [json.loads(e[len("data: "):])["usage"]["completion_tokens"] for e in events[:-1]]
    assert usage == [1, 2, 3]


def test_paced_stub_says_whether_the_client_kept_pace():
    # 16 streams, one token each every 20 ms: the client keeps pace on any machine
    out = loadgen_capacity.run(requests=32, concurrency=16, tokens=10, step_s=0.02)
    assert out["tokens"] == 32 * 10 and out["stub"] == "events paced at 20 ms steps"
    assert out["paced_wall_s"] == pytest.approx(0.02 * 10 * 2)
    assert 0.9 < out["slowdown"] < 3 and out["pauses"] >= 0 and out["itl_ms"]["median"] > 5
    assert out["gc"]["full_collections"] == 0        # the collector is off while the requests stream
