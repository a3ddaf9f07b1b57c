#!/usr/bin/env python3
"""What does a container cost a host-bound loop? The same two micro-loops on the host and in containers.

An eager ``generate`` on a GPU is bound by the host: each decode step is a Python loop that launches many
small kernels and makes syscalls. A container can slow such a loop (its seccomp filter runs on every
syscall; cgroup limits; a different libc), which a per-token energy figure would then carry. This probe
separates the container's own cost from everything else, runs interleaved in one session:

* ``launches``: kernel launches per second of a tiny eager op (``x.add_(1)``) on the GPU
  (``--device cuda:0``; on a CPU machine the op runs on the CPU and says so);
* ``syscalls``: ``os.stat`` calls per second (each one a syscall through seccomp in a container).

Variants, rounds interleaved (host, joulebench, unconfined, host, ...) so drift hits all alike:

* ``host``: the loop in a subprocess on the host;
* ``joulebench``: in a container with joulebench's isolation and GPU passthrough (the runner's own
  ``isolation_kwargs``: no network, all capabilities dropped, no-new-privileges, read-only root, init,
  pids limit; the engine's default seccomp profile);
* ``unconfined``: the same with ``seccomp=unconfined``: the difference to ``joulebench`` is seccomp's share.

Rows go to ``--out`` (JSON lines: one per variant per round), and the medians with their ratio to the host
are printed and written as a last ``summary`` row. The image needs a Python with torch (on GPU hosts
without a registry: a tiny image with the host's ``/usr`` and ``/opt`` bound, as containers_gpu.py does).

    python3 benchmarks/container_probe.py --image localhost/hostshell --python python3 --user 0:0 \\
        --mount /usr --mount /opt --rounds 5 --out container-probe.jsonl
    python3 benchmarks/container_probe.py --smoke     # CPU machine, Podman/Docker, the base image
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

# The loops, run by whichever interpreter the variant uses: prints one JSON line.
INNER = r"""
import json, os, sys, time
seconds, device = float(sys.argv[1]), sys.argv[2]
out = {"pid": os.getpid(), "device": device}
def rate(body, seconds):
    end = time.perf_counter() + seconds
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() < end:
        body(); n += 1
    return n / (time.perf_counter() - t0)
try:
    import torch
    dev = device if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    x = torch.zeros(16, device=dev)
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    def launch():
        for _ in range(50):
            x.add_(1)
    launch(); sync()
    r = rate(launch, seconds) * 50
    sync()
    out.update(launches_per_s=r, launch_device=dev,
               gpu=torch.cuda.get_device_name(0) if dev.startswith("cuda") else None)
except ImportError:
    out.update(launches_per_s=None, launch_device=None)
def stat():
    for _ in range(50):
        os.stat("/")
out["syscalls_per_s"] = rate(stat, seconds) * 50
print(json.dumps(out), flush=True)
"""

VARIANTS = ("host", "joulebench", "unconfined")


def run_host(python: str, seconds: float, device: str) -> dict:
    r = subprocess.run([python, "-c", INNER, str(seconds), device], capture_output=True, text=True,
                       timeout=seconds * 3 + 120)
    if r.returncode != 0:
        raise RuntimeError(f"the host loop failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_container(client, args, mounts, env, passthrough, gpus, seconds: float, *, unconfined: bool) -> dict:
    """The loop in a container with joulebench's isolation (and optionally seccomp unconfined)."""
    from docker.types import Mount

    from joulebench.runners.docker.client import run_probe

    code, logs = run_probe(client, args.image, [args.python, "-c", INNER, str(seconds), args.device], gpus=gpus,
                           timeout_s=seconds * 3 + 300, passthrough=passthrough, environment=env,
                           mounts=[Mount(target=t, source=s, type="bind", read_only=True) for s, t in mounts],
                           user=args.user, extra_security_opt=["seccomp=unconfined"] if unconfined else None)
    if code != 0:
        raise RuntimeError(f"the container loop exited {code}: {logs[-2000:]}")
    lines = [ln for ln in logs.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def medians(rows: list[dict]) -> dict:
    """Per variant, the median rate of each loop and its ratio to the host's median (pure)."""
    out: dict = {}
    for v in VARIANTS:
        mine = [r for r in rows if r.get("variant") == v]
        if not mine:
            continue
        out[v] = {}
        for key in ("launches_per_s", "syscalls_per_s"):
            xs = [r[key] for r in mine if r.get(key)]
            out[v][key] = statistics.median(xs) if xs else None
    host = out.get("host") or {}
    for v, figs in out.items():
        for key in ("launches_per_s", "syscalls_per_s"):
            base = host.get(key)
            figs[key.replace("_per_s", "_ratio_to_host")] = (figs[key] / base) if figs.get(key) and base else None
    return out


def main(argv: list[str] | None = None) -> int:
    from containers_gpu import container_pythonpath, parse_env, parse_mount

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", help="image with a Python (and torch for the launch loop)")
    ap.add_argument("--python", default="python3", help="the interpreter in the image")
    ap.add_argument("--host-python", default=sys.executable, help="the interpreter on the host")
    ap.add_argument("--mount", action="append", default=[], metavar="SRC[:TARGET]", help="read-only bind (repeat)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--user", help="UID[:GID] in the container")
    ap.add_argument("--device", default="cuda:0", help="the GPU the launch loop uses (cpu: no GPU passed)")
    ap.add_argument("--driver-dir", help="the NVIDIA driver folder to bind (default: from ldconfig)")
    ap.add_argument("--gpu-passthrough", default="auto")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each loop")
    ap.add_argument("--out", help="JSON lines (default: the temp folder)")
    ap.add_argument("--smoke", action="store_true", help="CPU check: the base image, this interpreter bound in")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.rounds, args.seconds = "cpu", min(args.rounds, 2), min(args.seconds, 0.5)
        args.image = args.image or os.environ.get("JOULEBENCH_BASE_IMAGE", "localhost/joulebench-base:bookworm")
        if not args.mount:
            args.mount = list(dict.fromkeys([os.path.realpath(sys.base_prefix), sys.prefix]))
            args.python, args.user = sys.executable, args.user or "0:0"
    if not args.image:
        ap.error("--image is required (or --smoke)")

    from joulebench.runners.docker.client import connect
    from joulebench.runners.docker.gpu import Passthrough, host_gpu_table

    mounts = [parse_mount(m) for m in args.mount]
    env = parse_env(args.env)
    env["PYTHONPATH"] = container_pythonpath(mounts, env.get("PYTHONPATH"))
    client = connect()
    passthrough = Passthrough.for_client(client, args.gpu_passthrough, driver_dir=args.driver_dir)
    gpus: list[str] = []
    if args.device.startswith("cuda"):
        index = int(args.device.partition(":")[2] or 0)
        table = host_gpu_table()
        if not table:
            raise SystemExit(f"--device {args.device}: NVML sees no GPU on this host")
        gpus = [table[index].uuid]
    out = Path(args.out) if args.out else Path(tempfile.gettempdir()) / "container-probe.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    meta = {"engine": str(passthrough.engine), "gpu_passthrough": passthrough.method, "image": args.image,
            "device": args.device, "seconds": args.seconds, "rounds": args.rounds}
    with out.open("w") as fh:
        fh.write(json.dumps({"meta": meta}) + "\n")
        for rnd in range(args.rounds):
            order = VARIANTS if rnd % 2 == 0 else tuple(reversed(VARIANTS))
            for v in order:
                t0 = time.perf_counter()
                if v == "host":
                    r = run_host(args.host_python, args.seconds, args.device)
                else:
                    r = run_container(client, args, mounts, env, passthrough, gpus, args.seconds,
                                      unconfined=(v == "unconfined"))
                row = {"round": rnd, "variant": v, "wall_s": time.perf_counter() - t0, **r}
                rows.append(row)
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                print(f"round {rnd} {v:<11} launches/s {row.get('launches_per_s') or 0:>12.0f} "
                      f"({row.get('launch_device')})  syscalls/s {row['syscalls_per_s']:>12.0f}", flush=True)
        summary = medians(rows)
        fh.write(json.dumps({"summary": summary, "meta": meta}) + "\n")
    print(f"{'variant':<12}{'launches/s':>14}{'ratio':>8}{'syscalls/s':>14}{'ratio':>8}")
    for v, f in summary.items():
        print(f"{v:<12}{f['launches_per_s'] or 0:>14.0f}{f['launches_ratio_to_host'] or 0:>8.3f}"
              f"{f['syscalls_per_s'] or 0:>14.0f}{f['syscalls_ratio_to_host'] or 0:>8.3f}")
    print("written:", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
