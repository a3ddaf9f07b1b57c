"""Engine-agnostic load generator for OpenAI-compatible completion servers.

Two arrival processes, as in vLLM's serving benchmark:

* closed loop, ``concurrency=N``: at most N requests in flight; a new one is sent
  as soon as one finishes;
* open loop, ``request_rate=R`` (requests/s): Poisson arrivals (exponential gaps,
  seeded), optionally capped by ``concurrency``.

Every request is streamed (server-sent events). Each output token gets the
``time.perf_counter()`` time at which its chunk arrived. Token counts are exact
when the server reports them: a running ``usage.completion_tokens`` per chunk
(vLLM, SGLang, TensorRT-LLM with ``continuous_usage_stats``), else per-chunk
``logprobs.tokens``, else one token per content chunk, reconciled with the final
``usage`` or, without one, with ``max_tokens`` when the request finished for "length"
(then ``token_times_exact`` is False if they disagree).

The client is a lean HTTP/1.1 one of its own (``_Pool``) and Python's garbage collector is off while a
pass streams: the windows are timed here, so the client must keep pace with the server (at max_num_seqs 512
on an H100, ~15,000 single-token events a second; docs/measurement.md, "The load generator must keep pace").

Definitions (vLLM's): TTFT = submit -> first token; ITL = gaps between
consecutive tokens; TPOT = (latency - TTFT) / (output tokens - 1).

Steady-state window (ML.ENERGY's definition): B is the batch the server is meant to run at
(the smaller of the engine's ``max_num_seqs`` and the closed loop's ``concurrency``, each when
set, else N; see :func:`target_batch`). The window opens when the B-th request, in order of first-token
arrival, receives its first token (ramp-up over) and closes when the (N-B)-th request, in
order of completion, completes (after it, fewer than B requests remain: the tail). With
N < 2B, or an empty window, there is none. The generator fires ``on_window_start`` /
``on_window_end`` at exactly those moments (the protocol reads the energy counters there).
See ``steady_state``.
"""
from __future__ import annotations

import asyncio
import gc
import json
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from joulebench.errors import BackendError
from joulebench.backends.base import Request, RequestResult

WindowHook = Callable[[float], None]


STEADY_DEFINITION = "B-th first token -> (N-B)-th completion (ML.ENERGY), B = min(max_num_seqs, concurrency) | N"


def target_batch(n: int, *, max_num_seqs: int | None = None, concurrency: int | None = None) -> int:
    """B, the batch the server is meant to run at: the smaller of ``max_num_seqs`` and the closed loop's
    ``concurrency`` (each when set; a closed loop below ``max_num_seqs`` never fills the server), else every
    request (all sent at once). Not capped by N: with N < 2B there is no steady window."""
    caps = [int(c) for c in (max_num_seqs, concurrency) if c]
    return max(1, min(caps)) if caps else max(1, int(n))


def running_cap(n: int, *, max_num_seqs: int | None = None, concurrency: int | None = None) -> int:
    """How many of ``n`` requests can run at once: B (``target_batch``), never more than ``n``."""
    return min(n, target_batch(n, max_num_seqs=max_num_seqs, concurrency=concurrency)) if n else 0


def warmup_subset(requests: list, running: int, batches: float) -> list:
    """A served warm-up pass: ``batches`` x ``running`` requests (rounded up) picked at even steps through the
    workload, so each request class and length keeps its share; the whole workload when that is not fewer.
    One full running batch drains through every batch size the engine runs below it (every CUDA graph size),
    which is what a server that is already up needs before a window; ``batches <= 0``: the whole workload."""
    n = len(requests)
    k = math.ceil(batches * running) if batches > 0 else n
    if k >= n:
        return list(requests)
    return [requests[(i * n) // k] for i in range(k)]


def completion_s(r: RequestResult) -> float | None:
    """When a request completed: its response ended (``completed_s``), else its last token."""
    if r.completed_s is not None:
        return r.completed_s
    return r.token_times_s[-1] if r.token_times_s else None


def window_edges(results: list[RequestResult], batch: int) -> tuple[float, float] | None:
    """(B-th first-token time, (N-B)-th completion time); None when N < 2B or the window is empty."""
    n = len(results)
    if batch < 1 or n < 2 * batch:
        return None
    firsts = sorted(r.token_times_s[0] for r in results if r.token_times_s)
    dones = sorted(c for c in (completion_s(r) for r in results) if c is not None)
    if len(firsts) < batch or len(dones) < n - batch:
        return None
    start, end = firsts[batch - 1], dones[n - batch - 1]
    return (start, end) if end > start else None


def running_batch_mean(results: list[RequestResult], start_s: float, end_s: float) -> float | None:
    """Time-averaged number of requests running (between their first token and completion) in [start, end]."""
    if end_s <= start_s:
        return None
    busy = 0.0
    for r in results:
        if not r.token_times_s:
            continue
        a, b = max(start_s, r.token_times_s[0]), min(end_s, completion_s(r))
        if b > a:
            busy += b - a
    return busy / (end_s - start_s)


@dataclass(frozen=True)
class SteadyState:
    """The part of one pass where the server ran at its steady load (perf_counter seconds)."""

    start_s: float
    end_s: float
    output_tokens: int              # tokens whose timestamps fall inside [start_s, end_s]
    requests_inside: tuple[int, ...]  # request indices submitted and finished inside the window
    requests_overlapping: int       # requests with any token inside the window
    batch: int = 0                  # B
    running_batch_mean: float | None = None   # time-averaged requests between first token and completion
    definition: str = STEADY_DEFINITION

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def throughput_tok_s(self) -> float | None:
        return self.output_tokens / self.duration_s if self.duration_s > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {"start_s": self.start_s, "end_s": self.end_s, "duration_s": self.duration_s,
                "output_tokens": self.output_tokens, "requests_inside": list(self.requests_inside),
                "requests_overlapping": self.requests_overlapping, "batch": self.batch,
                "running_batch_mean": self.running_batch_mean, "definition": self.definition}


def steady_state(results: list[RequestResult], batch: int) -> SteadyState | None:
    """The steady window of one pass with target batch ``batch`` (B); None when N < 2B or it is empty."""
    edges = window_edges(results, batch)
    if edges is None:
        return None
    start, end = edges
    done = [r for r in results if r.token_times_s]
    tokens = 0
    overlapping = 0
    inside = []
    for r in done:
        n = sum(1 for t in r.token_times_s if start <= t <= end) if r.token_times_exact else 0
        tokens += n
        overlapping += n > 0
        if r.submit_s >= start and completion_s(r) <= end:
            inside.append(r.index)
    return SteadyState(start_s=start, end_s=end, output_tokens=tokens, requests_inside=tuple(sorted(inside)),
                       requests_overlapping=overlapping, batch=batch,
                       running_batch_mean=running_batch_mean(results, start, end))


def poisson_arrivals(n: int, rate_per_s: float, seed: int) -> list[float]:
    """Offsets (s) of n Poisson arrivals at ``rate_per_s``, first at 0, reproducible from ``seed``."""
    if rate_per_s <= 0:
        raise ValueError("request_rate must be positive")
    rng = random.Random(seed)
    t = 0.0
    out = []
    for i in range(n):
        if i:
            t += rng.expovariate(rate_per_s)
        out.append(t)
    return out


@dataclass
class LoadSpec:
    concurrency: int | None = None        # closed loop (or cap of the open loop)
    request_rate: float | None = None     # open loop, requests/s (Poisson)
    seed: int = 0
    timeout_s: float = 600.0              # per request
    batch: int | None = None              # B of the steady window (target_batch); None: concurrency or N


@dataclass
class _StreamState:
    times: list[float] = field(default_factory=list)
    running_usage: int = 0
    saw_running_usage: bool = False
    final_completion_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    text: list[str] = field(default_factory=list)
    counted_by_chunks: bool = False


def _consume_chunk(state: _StreamState, chunk: dict[str, Any], t: float) -> None:
    usage = chunk.get("usage") or None
    choices = chunk.get("choices") or []
    new = 0
    if choices:
        choice = choices[0]
        text = choice.get("text")
        if text is None:  # chat-style delta
            text = (choice.get("delta") or {}).get("content")
        if text:
            state.text.append(text)
        if choice.get("finish_reason"):
            state.finish_reason = choice["finish_reason"]
        logprobs = choice.get("logprobs") or {}
        if usage and usage.get("completion_tokens") is not None:
            state.saw_running_usage = True
            new = int(usage["completion_tokens"]) - state.running_usage
            state.running_usage = int(usage["completion_tokens"])
        elif isinstance(logprobs, dict) and logprobs.get("tokens") is not None:
            new = len(logprobs["tokens"])
        elif text:
            new = 1
            state.counted_by_chunks = True
    if usage:
        if usage.get("prompt_tokens") is not None:
            state.prompt_tokens = int(usage["prompt_tokens"])
        if usage.get("completion_tokens") is not None:
            state.final_completion_tokens = int(usage["completion_tokens"])
    if new > 0:
        state.times.extend([t] * new)


class LoadGenerator:
    """Drives one server: ``run(requests, body_for)`` returns one RequestResult per request."""

    def __init__(self, base_url: str, *, completions_path: str = "/v1/completions",
                 on_window_start: WindowHook | None = None, on_window_end: WindowHook | None = None):
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + completions_path
        self.on_window_start = on_window_start
        self.on_window_end = on_window_end

    def run(self, requests: list[Request], body_for: Callable[[Request], dict[str, Any]],
            spec: LoadSpec) -> list[RequestResult]:
        coro = self._run(requests, body_for, spec)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # Called from inside an event loop: run ours in a private thread.
        box: dict[str, Any] = {}

        def target():
            try:
                box["out"] = asyncio.run(coro)
            except BaseException as exc:  # noqa: BLE001
                box["err"] = exc
        th = threading.Thread(target=target)
        th.start()
        th.join()
        if "err" in box:
            raise box["err"]
        return box["out"]

    async def _run(self, requests, body_for, spec: LoadSpec) -> list[RequestResult]:
        n = len(requests)
        limit = spec.concurrency or n or 1
        sem = asyncio.Semaphore(limit)
        offsets = poisson_arrivals(n, spec.request_rate, spec.seed) if spec.request_rate else [0.0] * n
        batch = spec.batch or target_batch(n, concurrency=spec.concurrency)
        steady = n >= 2 * batch            # else no steady window: no hooks
        firsts = done = 0
        pool = _Pool(self.url, idle_timeout_s=spec.timeout_s)
        watchdog = asyncio.create_task(pool.watch())
        # The cyclic garbage collector stops the event loop for tens of ms when it runs over the many objects a
        # pass of hundreds of streams makes (a client that stalls stretches the windows it times): objects that
        # exist now are left out of its scans, and it does not run while the requests stream.
        gc_was_enabled = gc.isenabled()
        gc.freeze()
        gc.disable()
        try:
            t0 = time.perf_counter()

            def first_token(t: float) -> None:
                nonlocal firsts
                firsts += 1
                if steady and firsts == batch and self.on_window_start is not None:
                    self.on_window_start(t)

            async def one(req: Request, offset: float) -> RequestResult:
                nonlocal done
                delay = t0 + offset - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                async with sem:
                    body = body_for(req)
                    body["stream"] = True
                    state = _StreamState()
                    submit = time.perf_counter()
                    await pool.stream(json.dumps(body).encode(), req, state, first_token)
                    # the response ended: count it before anything awaits (completion order = count order)
                    completed = time.perf_counter()
                    done += 1
                    if steady and done == n - batch and self.on_window_end is not None:
                        self.on_window_end(completed)
                res = _to_result(req, submit, state, max_tokens=body.get("max_tokens"))
                res.completed_s = completed
                return res

            tasks = [asyncio.create_task(one(r, off)) for r, off in zip(requests, offsets)]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            watchdog.cancel()
            pool.close()
            gc.unfreeze()
            if gc_was_enabled:
                gc.enable()


class _Conn:
    """One HTTP/1.1 keep-alive connection to the server."""

    __slots__ = ("reader", "writer", "last_s", "busy")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.last_s = time.monotonic()
        self.busy = False


class _Stale(Exception):
    """A connection closed before any of the response came."""


class _Pool:
    """A lean HTTP/1.1 client for the local server's streamed completions: keep-alive connections (one per request
    in flight), chunked or sized bodies, server-sent events split into lines as they arrive. A general client
    (httpx) costs several times more CPU per event: at ~15,000 single-token events/s (max_num_seqs 512 on an
    H100) it took a whole core and fell behind, stretching the windows it timed
    (benchmarks/loadgen_capacity.py --step-ms). A connection idle for ``idle_timeout_s`` mid-response fails its
    request."""

    def __init__(self, url: str, *, idle_timeout_s: float):
        from urllib.parse import urlsplit

        u = urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise BackendError(f"the load generator speaks plain HTTP to the local server, not {url!r}")
        self.host, self.port = u.hostname, u.port or 80
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.idle_timeout_s = idle_timeout_s
        self.idle: list[_Conn] = []
        self.open: set[_Conn] = set()
        self.head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                     "Content-Type: application/json\r\nAccept: text/event-stream\r\n").encode()

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port, limit=1 << 22), 30.0)
        conn = _Conn(reader, writer)
        self.open.add(conn)
        return conn

    def _drop(self, conn: _Conn) -> None:
        self.open.discard(conn)
        conn.writer.close()

    async def watch(self) -> None:
        """Abort connections that got nothing for ``idle_timeout_s`` while a response was due."""
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout_s))
            now = time.monotonic()
            for conn in list(self.open):
                if conn.busy and now - conn.last_s > self.idle_timeout_s:
                    conn.writer.transport.abort()

    def close(self) -> None:
        for conn in list(self.open):
            self._drop(conn)
        self.idle.clear()

    async def stream(self, body: bytes, req: Request, state: _StreamState,
                     first_token: Callable[[float], None]) -> None:
        conn = self.idle.pop() if self.idle else None
        try:
            if conn is not None:
                conn.busy, conn.last_s = True, time.monotonic()
                try:
                    status_line = await self._send(conn, body)
                except _Stale:
                    self._drop(conn)
                    conn = None     # the server let it go while it sat idle (keep-alive timeout): once more, anew
            if conn is None:
                conn = await self._connect()
                conn.busy, conn.last_s = True, time.monotonic()
                status_line = await self._send(conn, body)
            reuse = await self._exchange(conn, status_line, req, state, first_token)
        except (_Stale, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            if conn is not None:
                self._drop(conn)
                if time.monotonic() - conn.last_s >= self.idle_timeout_s:
                    raise BackendError(f"request {req.index}: no data from the server for {self.idle_timeout_s:g} s") \
                        from exc
            raise BackendError(f"request {req.index}: the connection to the server failed: {exc!r}") from exc
        except BaseException:
            if conn is not None:
                self._drop(conn)
            raise
        conn.busy = False
        if reuse:
            self.idle.append(conn)
        else:
            self._drop(conn)

    async def _send(self, conn: _Conn, body: bytes) -> bytes:
        """Send a request and return its response's status line; ``_Stale`` when the connection was closed before
        any of the response came (a keep-alive connection the server let go)."""
        try:
            conn.writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            return await conn.reader.readuntil(b"\n")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if (isinstance(exc, asyncio.IncompleteReadError) and exc.partial) or \
                    time.monotonic() - conn.last_s >= self.idle_timeout_s:
                raise                   # part of a response came, or it timed out: not a connection let go
            raise _Stale() from exc

    async def _exchange(self, conn: _Conn, status_line: bytes, req: Request, state: _StreamState,
                        first_token: Callable[[float], None]) -> bool:
        """The rest of a response after its status line; whether the connection can be reused."""
        reader = conn.reader
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError(f"not an HTTP response: {status_line[:100]!r}")
        status = int(parts[1])
        length, chunked, keep = None, False, parts[0] != b"HTTP/1.0"
        while True:
            line = await reader.readuntil(b"\n")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                keep = value != b"close"
        sse = _SSE(req, state, first_token) if status == 200 else _Collect()
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\n")).split(b";")[0].strip(), 16)
                conn.last_s = time.monotonic()
                if size == 0:
                    while (await reader.readuntil(b"\n")) not in (b"\r\n", b"\n"):
                        pass
                    break
                data = await reader.readexactly(size + 2)
                conn.last_s = time.monotonic()
                sse.feed(data[:-2])
        elif length is not None:
            left = length
            while left > 0:
                data = await reader.read(min(left, 1 << 20))
                if not data:
                    raise asyncio.IncompleteReadError(b"", left)
                conn.last_s = time.monotonic()
                left -= len(data)
                sse.feed(data)
        else:
            keep = False
            while data := await reader.read(1 << 20):
                conn.last_s = time.monotonic()
                sse.feed(data)
        sse.feed(b"\n")                # a last line without its newline
        if status != 200:
            detail = sse.text()[:2000]
            raise BackendError(f"server answered {status} to request {req.index}: {detail}")
        return keep


class _Collect:
    """An error response's body."""

    def __init__(self):
        self.parts: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self.parts.append(data)

    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8", "replace").strip()


class _SSE:
    """Server-sent events of one response, line by line as bytes arrive (lines end in \\n or \\r\\n); every
    token of a read gets that read's time. What follows the stream's [DONE] is read (so the connection can be
    reused) and ignored."""

    __slots__ = ("req", "state", "first_token", "rest", "done")

    def __init__(self, req: Request, state: _StreamState, first_token: Callable[[float], None]):
        self.req, self.state, self.first_token = req, state, first_token
        self.rest = b""
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        t = time.perf_counter()
        buf = self.rest + data if self.rest else data
        lines = buf.split(b"\n")
        self.rest = lines.pop()
        state = self.state
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                return
            try:
                chunk = json.loads(payload)
            except ValueError:
                continue
            if "error" in chunk and not chunk.get("choices"):
                raise BackendError(f"server error on request {self.req.index}: {chunk['error']}")
            had_token = bool(state.times)
            _consume_chunk(state, chunk, t)
            if not had_token and state.times:
                self.first_token(t)


def _to_result(req: Request, submit: float, state: _StreamState, max_tokens: int | None = None) -> RequestResult:
    times = state.times
    exact = True
    n_out = len(times)
    final = state.final_completion_tokens
    if final is None and state.counted_by_chunks and state.finish_reason == "length" and max_tokens:
        # No usage from the server (llama-cpp-python): "length" means exactly max_tokens were generated;
        # a chunk can hold several tokens (text held back until it decodes as UTF-8).
        final = int(max_tokens)
    if final is not None and final != n_out:
        # Chunks did not map one-to-one to tokens: keep the count, not the per-token times.
        n_out = final
        exact = False
        times = [times[0], times[-1]] if times else []
    return RequestResult(index=req.index, input_tokens=state.prompt_tokens or 0, output_tokens=n_out,
                         submit_s=submit, token_times_s=times, token_times_exact=exact,
                         finish_reason=state.finish_reason, text="".join(state.text),
                         request_class=req.request_class)
