"""Served mode, engine-agnostic parts: arrivals, stream accounting, steady-state window, server lifecycle."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from joulebench.backends.base import Request, RequestResult
from joulebench.backends.served import recipes
from joulebench.backends.served.loadgen import (LoadGenerator, LoadSpec, _consume_chunk, _StreamState, _to_result,
                                                poisson_arrivals, steady_state)
from joulebench.backends.served.server import ServerProcess, free_port
from joulebench.errors import BackendError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------ arrivals
def test_poisson_arrivals_are_seeded_and_have_the_requested_rate():
    a = poisson_arrivals(4000, 8.0, seed=7)
    assert a == poisson_arrivals(4000, 8.0, seed=7)
    assert a != poisson_arrivals(4000, 8.0, seed=8)
    assert a[0] == 0.0 and all(y >= x for x, y in zip(a, a[1:]))
    gaps = [y - x for x, y in zip(a, a[1:])]
    mean_gap = sum(gaps) / len(gaps)
    assert abs(mean_gap - 1 / 8.0) / (1 / 8.0) < 0.06          # mean 1/rate
    var = sum((g - mean_gap) ** 2 for g in gaps) / len(gaps)
    assert abs(var ** 0.5 / mean_gap - 1.0) < 0.08              # exponential: CV of gaps = 1
    with pytest.raises(ValueError):
        poisson_arrivals(3, 0.0, seed=1)


# ------------------------------------------------------------------ stream accounting
def test_running_usage_counts_tokens_exactly_even_when_a_chunk_holds_several():
    st = _StreamState()
    _consume_chunk(st, {"choices": [{"text": "a"}], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}, 1.0)
    _consume_chunk(st, {"choices": [{"text": "bc"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}, 2.0)
    _consume_chunk(st, {"choices": [{"text": "", "finish_reason": "length"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 4}}, 3.0)
    _consume_chunk(st, {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}}, 3.5)
    r = _to_result(Request(0, "p"), 0.5, st)
    assert (r.input_tokens, r.output_tokens, r.token_times_exact) == (5, 4, True)
    assert r.token_times_s == [1.0, 2.0, 2.0, 3.0]
    assert r.finish_reason == "length" and r.text == "abc"
    assert r.ttft_s == pytest.approx(0.5) and r.latency_s == pytest.approx(2.5)
    assert r.tpot_s == pytest.approx((2.5 - 0.5) / 3)


def test_logprobs_tokens_count_when_no_running_usage():
    st = _StreamState()
    _consume_chunk(st, {"choices": [{"text": "ab", "logprobs": {"tokens": ["a", "b"]}}]}, 1.0)
    _consume_chunk(st, {"choices": [{"text": "c", "logprobs": {"tokens": ["c"]}}]}, 2.0)
    r = _to_result(Request(3, "p"), 0.0, st)
    assert r.output_tokens == 3 and r.token_times_s == [1.0, 1.0, 2.0] and r.token_times_exact


def test_chunk_counting_reconciled_with_final_usage_marks_times_inexact():
    st = _StreamState()
    for i, text in enumerate(["a", "b", "c"]):
        _consume_chunk(st, {"choices": [{"text": text}]}, float(i + 1))
    _consume_chunk(st, {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 5}}, 4.0)
    r = _to_result(Request(1, "p"), 0.0, st)
    assert r.output_tokens == 5 and not r.token_times_exact
    assert r.token_times_s == [1.0, 3.0] and r.itl_s() == []


def test_without_usage_a_length_finish_pins_the_count_to_max_tokens():
    st = _StreamState()
    for i, text in enumerate(["a", "b", "\u00e9", ""]):   # the accented char needed two tokens; last chunk empty
        _consume_chunk(st, {"choices": [{"text": text, "finish_reason": "length" if i == 3 else None}]}, float(i))
    r = _to_result(Request(0, "p"), -1.0, st, max_tokens=4)
    assert r.output_tokens == 4 and not r.token_times_exact and r.token_times_s == [0.0, 2.0]
    st2 = _StreamState()
    for i, text in enumerate(["a", "b", "c", ""]):
        _consume_chunk(st2, {"choices": [{"text": text, "finish_reason": "length" if i == 3 else None}]}, float(i))
    r2 = _to_result(Request(0, "p"), -1.0, st2, max_tokens=3)
    assert r2.output_tokens == 3 and r2.token_times_exact and r2.token_times_s == [0.0, 1.0, 2.0]


# ------------------------------------------------------------------ steady state
def _res(i, submit, times):
    return RequestResult(index=i, input_tokens=1, output_tokens=len(times), submit_s=submit, token_times_s=times)


def test_steady_state_is_bth_first_token_to_n_minus_bth_completion():
    # Closed loop, concurrency 2 (B = 2), four requests: r0 and r1 start at 0; r0 ends at 3 -> r2; r1 ends at 4 -> r3.
    rs = [_res(0, 0.0, [1.0, 2.0, 3.0]), _res(1, 0.0, [1.5, 2.5, 4.0]),
          _res(2, 3.0, [3.5, 4.5, 6.0]), _res(3, 4.0, [5.0, 5.5, 7.0])]
    ss = steady_state(rs, 2)
    # 2nd first token at 1.5; 2nd completion (N - B = 2) at 4.0
    assert (ss.start_s, ss.end_s) == (1.5, 4.0)
    assert ss.duration_s == 2.5
    # tokens timestamped in [1.5, 4]: r0 2.0, 3.0; r1 1.5, 2.5, 4.0; r2 3.5
    assert ss.output_tokens == 6 and ss.throughput_tok_s == pytest.approx(6 / 2.5)
    assert ss.requests_inside == () and ss.requests_overlapping == 3
    # running: r0 1.5-3 (1.5 s), r1 1.5-4 (2.5 s), r2 3.5-4 (0.5 s) over 2.5 s
    assert ss.running_batch_mean == pytest.approx(4.5 / 2.5)
    assert ss.as_dict()["definition"].startswith("B-th first token")


def test_no_steady_state_with_fewer_than_two_b_requests():
    rs = [_res(i, 0.0, [1.0 + i, 2.0 + i]) for i in range(4)]
    assert steady_state(rs, 4) is None and steady_state(rs, 3) is None
    assert steady_state([_res(0, 0.0, [1.0])], 1) is None


def test_recipes_build_argument_lists_not_shell_strings():
    v = recipes.VLLM.build_command("/venv/bin/python", "/m", "127.0.0.1", 8123,
                                   {"dtype": "bfloat16", "enforce_eager": True, "enable_prefix_caching": False,
                                    "max_num_seqs": 4, "engine_args": {"swap_space": 1}})
    # `vllm serve` (the api_server module's entry point ignores --api-server-count), the model as its own
    # argument after the subcommand, the launcher a fixed program with no part of the study in it
    assert v[:2] == ["/venv/bin/python", "-c"] and v[2] == recipes.VLLM_SERVE_PROGRAM and v[3:5] == ["serve", "/m"]
    assert "--model" not in v and "cli.main import main" in recipes.VLLM_SERVE_PROGRAM
    assert ["--port", "8123"] == v[v.index("--port"):v.index("--port") + 2]
    assert "--enforce-eager" in v and "--no-enable-prefix-caching" in v
    assert v[v.index("--dtype") + 1] == "bfloat16" and v[v.index("--max-num-seqs") + 1] == "4"
    assert v[v.index("--swap-space") + 1] == "1"
    # a typed option repeated in engine_args is passed once (the H100 records showed --load-format dummy twice)
    d = recipes.VLLM.build_command("/py", "/m", "127.0.0.1", 1, {"load_format": "dummy", "max_num_seqs": 8,
                                                                 "engine_args": {"load_format": "dummy"}})
    assert d.count("--load-format") == 1 and d[d.index("--load-format") + 1] == "dummy"
    lc = recipes.LLAMACPP.build_command("/py", "/m.gguf", "127.0.0.1", 9, {"n_ctx": 512, "n_threads": 2})
    assert lc[:3] == ["/py", "-m", "llama_cpp.server"] and lc[lc.index("--n_ctx") + 1] == "512"
    assert lc[lc.index("--interrupt_requests") + 1] == "False"
    assert recipes.LLAMACPP.force_length_fields(8, {"_eog_token_ids": [2, 7]}) == {
        "logit_bias": {"2": -1.0e9, "7": -1.0e9}}
    assert recipes.VLLM.force_length_fields(8, {}) == {"ignore_eos": True, "min_tokens": 8}
    sg = recipes.SGLANG.build_command("/py", "org/m", "127.0.0.1", 1, {"tensor_parallel_size": 2,
                                                                      "enable_prefix_caching": False})
    assert sg[:3] == ["/py", "-m", "sglang.launch_server"] and "--disable-radix-cache" in sg
    assert sg[sg.index("--tp-size") + 1] == "2"
    tr = recipes.TRTLLM.build_command("/v/bin/python", "org/m", "127.0.0.1", 1, {"max_num_seqs": 16})
    assert tr[:3] == ["/v/bin/trtllm-serve", "serve", "org/m"] and tr[tr.index("--max_batch_size") + 1] == "16"
    assert set(recipes.RECIPES) == {"vllm", "llamacpp", "sglang", "trtllm"}


# ------------------------------------------------------------------ server process lifecycle (real processes)
_FAMILY = textwrap.dedent("""
    import subprocess, sys, time, os
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("child", child.pid, flush=True)
    time.sleep(600)
""")


def test_server_stop_kills_the_whole_process_group(tmp_path):
    srv = ServerProcess([sys.executable, "-c", _FAMILY], log_path=tmp_path / "s.log", stop_timeout_s=2)
    deadline = time.time() + 10
    while "child" not in srv.log_tail() and time.time() < deadline:
        time.sleep(0.05)
    child = int(srv.log_tail().split()[1])
    assert os.getpgid(srv.pid) == srv.pid != os.getpgid(0)     # its own process group
    assert _alive(child)
    srv.stop()
    assert _wait_gone(srv.pid) and _wait_gone(child)
    assert srv.stop() is not None  # idempotent


def test_server_that_ignores_sigterm_is_killed_after_the_bound(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
    srv = ServerProcess([sys.executable, "-c", code], log_path=tmp_path / "s.log", stop_timeout_s=0.5)
    while "up" not in srv.log_tail():
        time.sleep(0.05)
    t0 = time.time()
    assert srv.stop() == -signal.SIGKILL
    assert time.time() - t0 < 5


def test_wait_ready_reports_an_early_exit_with_the_log(tmp_path):
    srv = ServerProcess([sys.executable, "-c", "print('bad flag --foo'); raise SystemExit(3)"],
                        log_path=tmp_path / "s.log")
    with pytest.raises(BackendError, match=r"exited with code 3(.|\n)*bad flag --foo"):
        srv.wait_ready(lambda: False, timeout_s=30)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_server_dies_with_the_process_that_started_it(tmp_path, how):
    """The worker is killed (even by SIGKILL): its server must not be left running."""
    repo_src = Path(__file__).resolve().parents[1] / "src"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(repo_src)!r})
        from joulebench.backends.served.server import ServerProcess
        s = ServerProcess([sys.executable, "-c", "import time; time.sleep(600)"])
        print(s.pid, flush=True)
        time.sleep(600)
    """)
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    server_pid = int(worker.stdout.readline())
    assert _alive(server_pid)
    worker.send_signal(getattr(signal, how))
    worker.wait(timeout=10)
    assert _wait_gone(server_pid), f"server {server_pid} survived its worker ({how})"


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_load_generator_reports_http_errors(tmp_path):
    """A real HTTP server that answers 400: the error text reaches the user."""
    code = textwrap.dedent("""
        import http.server, sys
        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.send_response(400); self.end_headers(); self.wfile.write(b'{"error": "max_tokens too large"}')
            def log_message(self, *a): pass
        http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """)
    port = free_port()
    with ServerProcess([sys.executable, "-c", code, str(port)], log_path=tmp_path / "h.log") as srv:
        import httpx

        srv.wait_ready(lambda: httpx.post(f"http://127.0.0.1:{port}/x").status_code == 400, timeout_s=20)
        gen = LoadGenerator(f"http://127.0.0.1:{port}")
        with pytest.raises(BackendError, match="400.*max_tokens too large"):
            gen.run([Request(0, "hi")], lambda r: {"prompt": r.prompt}, LoadSpec(concurrency=1))


STREAMING_SERVER = textwrap.dedent("""
    import http.server, json, socketserver, sys, time
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            n = int(body["max_tokens"])
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            time.sleep(0.05)                                   # prefill
            for k in range(1, n + 1):
                chunk = {"choices": [{"text": "x", "finish_reason": "length" if k == n else None}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": k}}
                self.wfile.write(("data: " + json.dumps(chunk) + "\\n\\n").encode())
                self.wfile.flush()
                time.sleep(0.02)
            self.wfile.write(b"data: [DONE]\\n\\n")
            self.wfile.flush()
        def log_message(self, *a): pass
    class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
    S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def test_live_hooks_fire_at_the_steady_window_edges_over_real_http(tmp_path):
    """A real streaming HTTP server: the hooks fire at the B-th first token and the (N-B)-th completion, the
    same instants steady_state() finds afterwards; per-request max_tokens reach the server."""
    port = free_port()
    with ServerProcess([sys.executable, "-c", STREAMING_SERVER, str(port)], log_path=tmp_path / "s.log") as srv:
        import httpx

        def ready():
            try:
                return httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"max_tokens": 1}).status_code == 200
            except httpx.HTTPError:
                return False
        srv.wait_ready(ready, timeout_s=20)
        fired = {}
        gen = LoadGenerator(f"http://127.0.0.1:{port}", on_window_start=lambda t: fired.setdefault("start", t),
                            on_window_end=lambda t: fired.setdefault("end", t))
        reqs = [Request(i, "hi", max_output_tokens=4 + i) for i in range(8)]
        res = gen.run(reqs, lambda r: {"prompt": r.prompt, "max_tokens": r.max_output_tokens},
                      LoadSpec(concurrency=3, batch=3))
        assert [r.output_tokens for r in res] == [4 + i for i in range(8)]
        assert all(r.completed_s >= r.token_times_s[-1] for r in res)
        ss = steady_state(res, 3)
        assert (fired["start"], fired["end"]) == (ss.start_s, ss.end_s)
        assert sorted(r.token_times_s[0] for r in res)[2] == ss.start_s
        assert sorted(r.completed_s for r in res)[8 - 3 - 1] == ss.end_s
        assert 0 < ss.running_batch_mean <= 3.0 + 1e-9
        # N < 2B: no hooks at all
        fired.clear()
        gen.run(reqs[:5], lambda r: {"prompt": r.prompt, "max_tokens": 2}, LoadSpec(batch=3))
        assert fired == {}


CHUNKED_SERVER = textwrap.dedent("""
    import asyncio, json, sys
    accepted = 0
    async def handle(reader, writer):
        global accepted
        accepted += 1
        try:
            while True:
                head = await reader.readuntil(b"\\r\\n\\r\\n")
                length = int([l.split(b":")[1] for l in head.split(b"\\r\\n") if l.lower().startswith(b"content-length")][0])
                body = json.loads(await reader.readexactly(length))
                if body.get("stall"):
                    writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-type: text/event-stream\\r\\ntransfer-encoding: chunked\\r\\n\\r\\n")
                    await asyncio.sleep(3600)
                n = int(body["max_tokens"])
                events = b"".join(("data: " + json.dumps({"choices": [{"text": "x", "finish_reason": "length" if k == n else None}],
                                   "usage": {"prompt_tokens": 2, "completion_tokens": k}}) + "\\r\\n\\r\\n").encode() for k in range(1, n + 1))
                events += b"data: [DONE]\\r\\n\\r\\n"
                writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-type: text/event-stream\\r\\ntransfer-encoding: chunked\\r\\n\\r\\n")
                # chunks that cut events (and the \\r\\n between lines) anywhere: 7 bytes each
                for i in range(0, len(events), 7):
                    part = events[i:i + 7]
                    writer.write(b"%x\\r\\n" % len(part) + part + b"\\r\\n")
                    await writer.drain()
                    await asyncio.sleep(0)
                writer.write(b"0\\r\\n\\r\\n")
                await writer.drain()
                if len(sys.argv) > 3:          # let the connection go after one response, without saying so
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
    async def count(reader, writer):                  # a second port: how many connections the first accepted
        writer.write(str(accepted).encode()); await writer.drain(); writer.close()
    async def main():
        a = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
        b = await asyncio.start_server(count, "127.0.0.1", int(sys.argv[2]))
        async with a, b:
            await asyncio.gather(a.serve_forever(), b.serve_forever())
    asyncio.run(main())
""")


def _accepted(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as s:
        return int(s.recv(64))


def test_chunked_streams_with_crlf_events_cut_anywhere_on_reused_connections(tmp_path):
    """Chunked transfer encoding (uvicorn's, vLLM's and SGLang's servers) with \\r\\n line ends (sse-starlette's, the
    llama.cpp server's), events cut across chunks at every byte offset: every token counted, in order, and a closed
    loop of 4 keeps its 4 keep-alive connections for all 24 requests."""
    port, count_port = free_port(), free_port()
    with ServerProcess([sys.executable, "-c", CHUNKED_SERVER, str(port), str(count_port)],
                       log_path=tmp_path / "c.log") as srv:
        srv.wait_ready(lambda: _accepted(count_port) == 0, timeout_s=20)
        gen = LoadGenerator(f"http://127.0.0.1:{port}")
        reqs = [Request(i, "hi", max_output_tokens=3 + i % 5) for i in range(24)]
        res = gen.run(reqs, lambda r: {"prompt": r.prompt, "max_tokens": r.max_output_tokens}, LoadSpec(concurrency=4))
        assert [r.output_tokens for r in res] == [3 + i % 5 for i in range(24)]
        assert all(r.token_times_exact and r.token_times_s == sorted(r.token_times_s) for r in res)
        assert all(r.finish_reason == "length" and r.input_tokens == 2 and r.text == "x" * r.output_tokens
                   for r in res)
        assert _accepted(count_port) == 4


def test_a_server_that_stops_sending_fails_the_request_after_the_timeout(tmp_path):
    port, count_port = free_port(), free_port()
    with ServerProcess([sys.executable, "-c", CHUNKED_SERVER, str(port), str(count_port)],
                       log_path=tmp_path / "c.log") as srv:
        srv.wait_ready(lambda: _accepted(count_port) == 0, timeout_s=20)
        gen = LoadGenerator(f"http://127.0.0.1:{port}")
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="no data from the server for 1 s"):
            gen.run([Request(0, "hi")], lambda r: {"prompt": r.prompt, "stall": True},
                    LoadSpec(concurrency=1, timeout_s=1.0))
        assert time.monotonic() - t0 < 10


def test_load_generator_only_speaks_plain_http():
    gen = LoadGenerator("https://example.invalid")
    with pytest.raises(BackendError, match="plain HTTP"):
        gen.run([Request(0, "hi")], lambda r: {"prompt": r.prompt}, LoadSpec(concurrency=1))


def test_the_garbage_collector_is_back_on_after_a_pass(tmp_path):
    import gc

    gen = LoadGenerator("https://example.invalid")
    assert gc.isenabled()
    with pytest.raises(BackendError):
        gen.run([Request(0, "hi")], lambda r: {"prompt": r.prompt}, LoadSpec(concurrency=1))
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_keep_alive_connection_the_server_let_go_is_replaced(tmp_path):
    """A server that closes every connection after one response without saying so (as a keep-alive timeout does
    to an idle connection): each reused connection fails before any response comes, and the request goes out
    again on a new one."""
    port, count_port = free_port(), free_port()
    with ServerProcess([sys.executable, "-c", CHUNKED_SERVER, str(port), str(count_port), "one-per-connection"],
                       log_path=tmp_path / "c.log") as srv:
        srv.wait_ready(lambda: _accepted(count_port) == 0, timeout_s=20)
        gen = LoadGenerator(f"http://127.0.0.1:{port}")
        reqs = [Request(i, "hi", max_output_tokens=4) for i in range(12)]
        res = gen.run(reqs, lambda r: {"prompt": r.prompt, "max_tokens": r.max_output_tokens}, LoadSpec(concurrency=3))
        assert [r.output_tokens for r in res] == [4] * 12
        assert _accepted(count_port) == 12
