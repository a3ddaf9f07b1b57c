#!/usr/bin/env python3
"""How many streamed tokens per second joulebench's load generator can take in, on this host's CPU.

A served window's figures are only the engine's when the client keeps up: at max_num_seqs 512 vLLM streams
~14,000 tokens/s on an H100 (one server-sent event per token), and a client that falls behind stretches the
window it times. Here a stub server on this machine answers every request with its whole event stream at once
(pre-rendered vLLM-style completion chunks, ~250 bytes each, with running usage), from its own process, so
the figure is the client's: tokens/s over the pass and the client's CPU milliseconds per 1000 tokens (this
process's CPU time: it runs only the client). With ``--per-event`` the stub writes one event at a time, so
the client reads them one by one, as from a real server; its own cost may then limit the rate on a small host.

    python benchmarks/loadgen_capacity.py [--requests 1536] [--concurrency 512] [--tokens 224] [--per-event]

Prints one JSON line per run; compare the ceiling with the token rate of the served windows.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def sse_body(tokens: int, prompt_tokens: int = 256) -> bytes:
    out = []
    for i in range(tokens):
        chunk = {"id": "cmpl-0123456789abcdef", "object": "text_completion", "created": 1765090000,
                 "model": "stub", "choices": [{"index": 0, "text": " tok", "logprobs": None,
                                               "finish_reason": "length" if i == tokens - 1 else None,
                                               "stop_reason": None}],
                 "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + i + 1,
                           "completion_tokens": i + 1}}
        out.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _serve(body: bytes, per_event: bool, port_out, step_s: float = 0.0) -> None:
    """An HTTP/1.1 keep-alive server on 127.0.0.1 that answers every POST with ``body`` (text/event-stream): in one
    write, or (``per_event``) one event per write, yielding to the other connections between events, as a
    server streaming tokens does (then the client reads each event on its own). ``step_s`` > 0 paces the events
    like decode steps: every stream gets its next event at the same ticks of a shared clock, ``step_s`` apart
    (a running batch of B requests: B events at once, then nothing until the next step)."""
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(body))
    events = [e + b"\n\n" for e in body.split(b"\n\n") if e]

    async def handle(reader, writer):
        try:
            while True:
                header = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in header.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if step_s > 0:
                    writer.write(head)
                    loop = asyncio.get_running_loop()
                    for e in events:
                        now = loop.time()
                        await asyncio.sleep(step_s - now % step_s)      # the next tick of the shared clock
                        writer.write(e)
                        await writer.drain()
                elif per_event:
                    writer.write(head)
                    for e in events:
                        writer.write(e)
                        await writer.drain()
                        await asyncio.sleep(0)
                else:
                    writer.write(head + body)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
        port_out.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start_stub(body: bytes, per_event: bool = False, step_s: float = 0.0):
    """The stub server in its own process (its CPU time is not the client's): (port, process)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(body, per_event, q, step_s), daemon=True)
    proc.start()
    return q.get(timeout=30), proc


class GcPauses:
    """The cyclic garbage collector's pauses in this process while active (gc.callbacks)."""

    def __init__(self):
        self.pauses_s: list[tuple[int, float]] = []
        self._t0 = 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses_s.append((info["generation"], time.perf_counter() - self._t0))

    def __enter__(self):
        import gc
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc):
        import gc
        gc.callbacks.remove(self)

    def summary(self) -> dict:
        full = [p for g, p in self.pauses_s if g == 2]
        return {"collections": len(self.pauses_s), "total_s": sum(p for _, p in self.pauses_s),
                "max_ms": 1000 * max((p for _, p in self.pauses_s), default=0.0),
                "full_collections": len(full), "full_max_ms": 1000 * max(full, default=0.0)}


def run(requests: int, concurrency: int, tokens: int, per_event: bool = False, step_s: float = 0.0) -> dict:
    from joulebench.backends.base import Request
    from joulebench.backends.served.loadgen import LoadGenerator, LoadSpec
    from stream_stats import stream_stats

    port, stub = start_stub(sse_body(tokens), per_event, step_s)
    gen = LoadGenerator(f"http://127.0.0.1:{port}")
    reqs = [Request(index=i, prompt="x", max_output_tokens=tokens) for i in range(requests)]
    body = lambda r: {"model": "stub", "prompt": "x", "max_tokens": tokens}  # noqa: E731
    gen.run(reqs[:concurrency], body, LoadSpec(concurrency=concurrency))      # connections and imports warm
    cpu0, t0 = time.process_time(), time.perf_counter()
    with GcPauses() as gcp:
        res = gen.run(reqs, body, LoadSpec(concurrency=concurrency))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stub.terminate()
    n_tok = sum(r.output_tokens for r in res)
    assert n_tok == requests * tokens, (n_tok, requests * tokens)
    stub_kind = (f"events paced at {step_s * 1000:g} ms steps" if step_s > 0 else
                 "one write per event" if per_event else "one write per response")
    out = {"stub": stub_kind, "requests": requests, "concurrency": concurrency, "tokens_per_request": tokens,
           "tokens": n_tok, "wall_s": wall, "tokens_per_s": n_tok / wall, "cpu_s": cpu,
           "cpu_share": cpu / wall, "cpu_ms_per_1000_tokens": 1000 * cpu / n_tok * 1000, "gc": gcp.summary()}
    if step_s > 0:
        # what the stub sends: every running stream one token a step, so waves of `concurrency` requests
        ideal = step_s * tokens * -(-requests // concurrency)
        st = stream_stats(res, pause_s=0.05)
        out.update(paced_wall_s=ideal, slowdown=wall / ideal, pauses=st["pauses"], pause_total_s=st["pause_total_s"],
                   longest_gap_ms=st["longest_gap_ms"], itl_ms=st["itl_ms"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1536)
    ap.add_argument("--concurrency", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=224, help="tokens per request (the mean of uniform 64-384)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--per-event", action="store_true", help="the stub writes one event at a time (its own CPU "
                    "time then counts too: an upper bound of the client's cost)")
    ap.add_argument("--step-ms", type=float, default=0.0, help="pace the events like decode steps: each running "
                    "stream gets one token every STEP ms (33 ms x 512 streams = the ~15k tokens/s of B = 512 on an "
                    "H100); the run then says whether the client kept pace (slowdown, pauses)")
    args = ap.parse_args()
    for _ in range(args.runs):
        print(json.dumps(run(args.requests, args.concurrency, args.tokens, args.per_event, args.step_ms / 1000)),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
