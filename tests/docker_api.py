"""A recording Docker-API server for tests: the few endpoints the docker SDK calls, no engine.

It serves on 127.0.0.1 (set ``DOCKER_HOST=tcp://127.0.0.1:PORT``) in a thread and records every
``POST /containers/create`` body exactly as the client sent it (and Podman's libpod
``POST /libpod/containers/create``, with ``api="libpod"``), together with the experiment spec
the container would have read (the file bind-mounted at ``/jb/experiment.json``, read from the host
at create time, before the runner removes its staging folder). A created container "runs" by
printing ``exit_output`` and exiting with ``exit_code``: enough for a runner to follow it and fail
the experiment cleanly, after the request under test has been recorded.
"""
from __future__ import annotations

import json
import re
import struct
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

API_VERSION = "1.41"
EXPERIMENT_TARGET = "/jb/experiment.json"


@dataclass
class Created:
    """One recorded create request."""

    name: str | None
    body: dict[str, Any]
    experiment_spec: dict[str, Any] | None
    api: str = "docker"        # or "libpod": the body is a libpod SpecGenerator


@dataclass
class FakeEngine:
    exit_code: int = 1
    exit_output: str = "no engine here: the fake API only records the create request\n"
    version: dict[str, Any] | None = None      # the /version document (default: a Docker engine's)
    created: list[Created] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_create(self, name: str | None, body: dict[str, Any], api: str = "docker") -> str:
        spec = None
        mounts = ((body.get("HostConfig") or {}).get("Mounts") or []) + (body.get("mounts") or [])
        for m in mounts:
            if (m.get("Target") or m.get("destination")) == EXPERIMENT_TARGET:
                with open(m.get("Source") or m.get("source")) as fh:
                    spec = json.load(fh)
        cid = uuid.uuid4().hex * 2
        labels = body.get("Labels") or body.get("labels") or {}
        with self.lock:
            self.created.append(Created(name=name, body=body, experiment_spec=spec, api=api))
            self.containers[cid] = {"Id": cid, "Name": "/" + (name or cid[:12]), "Config": {
                "Tty": False, "Labels": labels, "Image": body.get("Image") or body.get("image")},
                "State": {"Status": "created", "OOMKilled": False}}
        return cid

    def find(self, ref: str) -> dict[str, Any] | None:
        with self.lock:
            for c in self.containers.values():
                if c["Id"].startswith(ref) or c["Name"] == "/" + ref:
                    return c
        return None


def _handler(engine: FakeEngine):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:   # quiet
            pass

        def _send(self, code: int, obj: Any = None, *, text: str | None = None) -> None:
            data = text.encode() if text is not None else (b"" if obj is None else json.dumps(obj).encode())
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if text is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Api-Version", API_VERSION)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}") if n else {}

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            path = re.sub(r"^/v[0-9.]+", "", url.path)
            engine.calls.append(f"{method} {path}")
            if path == "/_ping":
                return self._send(200, text="OK")
            if path == "/version":
                return self._send(200, engine.version or {"ApiVersion": API_VERSION, "Version": "fake",
                                                          "MinAPIVersion": "1.24"})
            if path == "/containers/json":
                return self._send(200, [])
            if path.startswith("/images/") and path.endswith("/json"):
                return self._send(200, {"Id": "sha256:" + "0" * 64, "RepoTags": [path[8:-5]], "Config": {}})
            if path == "/containers/create" and method == "POST":
                name = dict(p.split("=", 1) for p in url.query.split("&") if "=" in p).get("name")
                cid = engine.record_create(name, self._body())
                return self._send(201, {"Id": cid, "Warnings": []})
            if path == "/libpod/containers/create" and method == "POST":
                body = self._body()
                cid = engine.record_create(body.get("name"), body, api="libpod")
                return self._send(201, {"Id": cid, "Warnings": []})
            m = re.match(r"^/containers/([^/]+)(/[a-z]+)?$", path)
            c = engine.find(m.group(1)) if m else None
            if c is None:
                self._body()
                return self._send(404, {"message": f"No such container: {m.group(1) if m else path}"})
            action = m.group(2) or ""
            if method == "DELETE":
                with engine.lock:
                    engine.containers.pop(c["Id"], None)
                return self._send(204)
            if action == "/json":
                return self._send(200, c)
            if action in ("/start", "/stop", "/kill"):
                self._body()
                c["State"]["Status"] = "exited"
                return self._send(204)
            if action == "/wait":
                return self._send(200, {"StatusCode": engine.exit_code, "Error": None})
            if action == "/logs":
                return self._logs()
            return self._send(404, {"message": f"not served by the fake engine: {method} {path}"})

        def _logs(self) -> None:
            """The container's output as one stdout frame of Docker's multiplexed stream, then close."""
            data = engine.exit_output.encode()
            frame = struct.pack(">BxxxL", 1, len(data)) + data
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.docker.multiplexed-stream")
            self.send_header("Content-Length", str(len(frame)))
            self.end_headers()
            self.wfile.write(frame)

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_DELETE(self) -> None:
            self._route("DELETE")

        def do_HEAD(self) -> None:
            self._route("HEAD")

    return Handler


class FakeDockerApi:
    """``with FakeDockerApi() as api:`` serves until the block ends; ``api.docker_host`` for DOCKER_HOST."""

    def __init__(self, engine: FakeEngine | None = None):
        self.engine = engine or FakeEngine()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.engine))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-docker-api", daemon=True)

    @property
    def docker_host(self) -> str:
        host, port = self.server.server_address[:2]
        return f"tcp://{host}:{port}"

    @property
    def created(self) -> list[Created]:
        return self.engine.created

    def __enter__(self) -> "FakeDockerApi":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
