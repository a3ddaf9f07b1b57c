#!/usr/bin/env python3
"""GPU containers for real (issue 20): the same study with the process runner and the docker runner.

On a GPU host with a container engine serving the Docker API (``DOCKER_HOST``; Podman or Docker):

1. the study (transformers, synthetic Llama-3.2-1B shape in bf16, batch 1 and 16, AI Energy Score
   prompts from ``--prompts``, a fixed number of repeats) with ``runner: process``;
2. the same study with ``runner: docker``, the GPU passed in the way the engine takes it
   (``gpu_passthrough: auto``: device nodes and the driver bind on Podman, a device request on Docker;
   ``--gpu-passthrough cdi``: CDI names through Podman's own API),
   the image from ``--image`` with ``--mount``/``--env``/``--python`` for hosts without a registry;
3. a CONTROL: one container started the way joulebench used to start it (an NVIDIA device request only,
   which Podman's Docker API silently ignores) must fail its trial with ``gpu-unavailable`` instead of
   measuring the CPU. (On Docker with the NVIDIA toolkit the request is honoured: the control then
   reports that it did not fail, which is right there.)

Writes benchmarks/results/containers-gpu-<gpu>-<date>.json (``--out`` to override) and prints the
figures: J/output-token per configuration with 95 % intervals and window power for both runners, their
ratio, the share of wall time inside measured windows, the container start-to-ready cost per experiment.

    PYTHONPATH=$PWD/src:/tmp/site python3 benchmarks/containers_gpu.py \\
        --prompts data/aienergyscore_text_generation.jsonl \\
        --image localhost/hostshell --python python3 --user 0:0 \\
        --mount /usr --mount /opt --mount "$PWD/src:/jb-src" --mount /tmp/site:/jb-site

``--mount SRC[:TARGET]`` binds read-only (TARGET defaults to SRC). Unless ``--no-auto-pythonpath``, the
container's PYTHONPATH is this interpreter's own ``sys.path`` entries that lie under a mount, mapped to
their targets (so the same packages load inside), after any ``--env PYTHONPATH=...``.

``--smoke``: a check of the whole script on a CPU machine: tiny synthetic model on the CPU, a fake NVML
with one GPU on the host side (the control's assigned GPU; inside, none exists, which is exactly the
failure), the current transformers engine image with this checkout's src mounted.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def parse_mount(text: str) -> tuple[str, str]:
    src, _, target = text.partition(":")
    src = os.path.abspath(src)
    target = target or src
    if not os.path.isabs(target):
        raise SystemExit(f"--mount {text}: the target must be an absolute path")
    if not os.path.exists(src):
        raise SystemExit(f"--mount {text}: {src} does not exist on this host")
    return src, os.path.normpath(target)


def parse_env(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise SystemExit(f"--env {item}: expected NAME=VALUE")
        out[name] = value
    return out


def container_pythonpath(mounts: list[tuple[str, str]], given: str | None) -> str:
    """``given`` entries, then this interpreter's sys.path entries under a mount, as the container sees them."""
    parts = [p for p in (given or "").split(":") if p]
    for p in sys.path:
        if not p or not os.path.isabs(p):
            continue
        for src, target in sorted(mounts, key=lambda m: -len(m[0])):
            if p == src or p.startswith(src.rstrip("/") + "/"):
                mapped = target + p[len(src):]
                if mapped not in parts:
                    parts.append(mapped)
                break
    return ":".join(parts)


def base_study(args, name: str) -> dict:
    if args.smoke:
        model, dtype, device = "synthetic:tiny-llama", "float32", "cpu"
        measurement = {"min_window_s": 0.5, "device_idle_s": 0, "loaded_idle_s": 0,
                       "warmup": {"cv_target": 0.5, "k": 2, "min_passes": 1, "max_passes": 2}}
    else:
        model, dtype, device = args.model, "bfloat16", args.device
        measurement = {"min_window_s": args.min_window_s, "device_idle_s": 3, "loaded_idle_s": 1,
                       "warmup": {"cv_target": 0.05, "k": 2, "min_passes": 1, "max_passes": 3, "max_s": 20}}
    return {
        "name": name, "model": model, "backend": "transformers", "device": device,
        "engine": {"dtype": dtype},
        "workload": {"dataset": "aienergyscore", "dataset_path": str(Path(args.prompts).resolve()),
                     "prompts": args.n_prompts, "max_input_tokens": args.max_input_tokens,
                     "max_output_tokens": args.max_output_tokens, "force_output_tokens": True},
        "sweep": {"batch_size": args.batch_sizes},
        "repeats": args.repeats,
        "measurement": measurement,
        "runner_options": {"timeout_s": args.timeout_s},
    }


def docker_options(args, mounts: list[tuple[str, str]], env: dict[str, str], passthrough: str) -> dict:
    return {"image": args.image, "gpu_passthrough": passthrough, "python": args.python,
            **({"user": args.user} if args.user else {}),
            "mounts": [{"source": s, "target": t, "read_only": True} for s, t in mounts], "env": env,
            **({"driver_dir": args.driver_dir} if args.driver_dir else {})}


def records(study_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((study_dir / "trials").glob("*.json"))]


def summarize_runner(study_dir: Path, wall_s: float) -> dict:
    from joulebench.analysis.stats import mean_ci_t

    recs = records(study_dir)
    ok = [r for r in recs if r["status"] == "ok"]
    configs: dict[str, dict] = {}
    for cid in sorted({r["config_id"] for r in recs}):
        rs = [r for r in ok if r["config_id"] == cid]
        jpt = [r.get("energy_per_output_token_j") for r in rs]
        jpt = [x for x in jpt if x is not None]
        power = [r.get("mean_power_w") for r in rs if r.get("mean_power_w") is not None]
        ci = None
        mean = statistics.fmean(jpt) if jpt else None
        if len(jpt) >= 2:
            m, lo, hi = mean_ci_t(jpt)
            mean, ci = m, [lo, hi]
        first = next((r for r in recs if r["config_id"] == cid), {})
        configs[cid] = {
            "batch_size": first.get("params", {}).get("batch_size"),
            "trials_ok": len(rs), "trials": sum(r["config_id"] == cid for r in recs),
            "j_per_output_token_mean": mean, "ci95": ci,
            "j_per_output_token": jpt,
            "energy_source": sorted({str(r.get("energy_source")) for r in rs}),
            "window_power_w_mean": statistics.fmean(power) if power else None,
            "throughput_tok_s_mean": statistics.fmean([r["throughput_tok_s"] for r in rs
                                                      if r.get("throughput_tok_s")]) if rs else None,
            "errors": sorted({r.get("error") for r in recs if r["config_id"] == cid and r.get("error")})[:3],
        }
    windows = sum(r.get("duration_s") or 0.0 for r in ok)
    env = (ok or recs or [{}])[0].get("environment") or {}
    return {"configs": configs, "wall_s": wall_s, "windows_s": windows,
            "windows_share": windows / wall_s if wall_s > 0 else None,
            "trials_ok": len(ok), "trials": len(recs),
            "environment_runner": env.get("runner"),
            "libraries": env.get("libraries"),
            "workers": len({r.get("worker_id") for r in recs})}


def start_costs(study_dir: Path) -> dict:
    path = study_dir / "containers.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    xs = [r["start_to_ready_s"] for r in rows]
    return {"per_experiment": rows,
            "mean": statistics.fmean(xs) if xs else None, "min": min(xs) if xs else None,
            "max": max(xs) if xs else None, "containers": len(rows)}


def run(study: dict, out: Path) -> tuple[float, int]:
    import joulebench

    t0 = time.monotonic()
    res = joulebench.run_study(study, out=out, quiet=True, report=False)
    return time.monotonic() - t0, res.exit_code


def smoke_setup(args, tmp: Path) -> None:
    """A fake NVML with one GPU (host side only); the engine's base image with this interpreter, its
    packages and this checkout's src bound read-only (as the GPU hosts bind their /usr into a tiny image)."""
    spec = tmp / "fake-nvml.json"
    spec.write_text(json.dumps({"gpus": [{"uuid": "GPU-5a0ce000-0000-4000-8000-000000000000", "power_w": 90.0}]}))
    os.environ["JOULEBENCH_FAKE_NVML"] = str(spec)
    from joulebench.testing import install_from_environment

    install_from_environment()
    args.image = args.image or os.environ.get("JOULEBENCH_BASE_IMAGE", "localhost/joulebench-base:bookworm")
    if not args.mount:
        prefix = os.path.realpath(sys.base_prefix)
        args.mount = list(dict.fromkeys([prefix, sys.prefix])) + [f"{ROOT / 'src'}:/jb-src"]
        args.python = sys.executable
        args.user = args.user or "0:0"   # the interpreter may live under a private home folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", required=True, help="the AI Energy Score prompts (.jsonl, or its folder)")
    ap.add_argument("--image", help="container image for the docker runner (e.g. localhost/hostshell)")
    ap.add_argument("--mount", action="append", default=[], metavar="SRC[:TARGET]", help="read-only bind (repeat)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="container environment")
    ap.add_argument("--python", default="python3", help="the interpreter in the image")
    ap.add_argument("--user", help="UID[:GID] in the container (default: joulebench's: 10001 when root)")
    ap.add_argument("--no-auto-pythonpath", dest="auto_pythonpath", action="store_false")
    ap.add_argument("--driver-dir", help="the NVIDIA driver folder to bind (default: from ldconfig)")
    ap.add_argument("--gpu-passthrough", default="auto", choices=["auto", "device-request", "device-nodes", "cdi"],
                    help="how the docker runner passes the GPU (cdi: Podman with a CDI spec, e.g. /etc/cdi)")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--model", default="synthetic:llama-3.2-1b")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--max-input-tokens", type=int, default=256)
    ap.add_argument("--max-output-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-window-s", type=float, default=5.0)
    ap.add_argument("--timeout-s", type=float, default=900.0)
    ap.add_argument("--skip-process", action="store_true", help="only the docker runner and the control")
    ap.add_argument("--smoke", action="store_true", help="CPU check of the script (see the module docstring)")
    ap.add_argument("--out", help="result JSON (default benchmarks/results/containers-gpu-<gpu>-<date>.json)")
    args = ap.parse_args(argv)
    if not os.environ.get("DOCKER_HOST"):
        print("warning: DOCKER_HOST is unset; using the default Docker socket", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="jb-containers-gpu-"))
    from joulebench.testing import install_from_environment

    install_from_environment()   # the real NVML unless JOULEBENCH_FAKE_NVML names a fake
    if args.smoke:
        args.n_prompts, args.max_output_tokens, args.max_input_tokens = 4, 4, 32
        args.batch_sizes, args.repeats = [1, 2], 2
        smoke_setup(args, tmp)
    if args.image is None:
        raise SystemExit("--image is required (the image the docker runner starts)")
    from joulebench.runners.docker.client import connect
    from joulebench.runners.docker.gpu import engine_info, host_gpu_table, resolve_method

    client = connect()
    engine = engine_info(client)
    client.close()
    method = resolve_method(args.gpu_passthrough, engine)
    gpus = host_gpu_table()
    gpu_name = "cpu-smoke" if args.smoke else "no-gpu"
    if gpus and not args.smoke:
        from joulebench.devices import resolve_gpus

        gpu_name = resolve_gpus([0])[0].info.name
    mounts = [parse_mount(m) for m in args.mount]
    env = parse_env(args.env)
    if args.auto_pythonpath:
        env["PYTHONPATH"] = container_pythonpath(mounts, env.get("PYTHONPATH"))
    print(f"engine {engine}; passthrough {method}; host GPUs {[g.uuid for g in gpus]}; image {args.image}")
    print(f"container PYTHONPATH={env.get('PYTHONPATH')}; python {args.python}")

    result: dict = {"gpu": gpu_name, "engine": {"name": engine.name, "version": engine.version,
                                                "api_version": engine.api_version},
                    "passthrough": method, "image": args.image, "smoke": args.smoke,
                    "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "study": base_study(args, "containers-gpu"), "runners": {}}
    t_all = time.monotonic()
    # 1. process runner
    if not args.skip_process:
        study = {**base_study(args, "containers-gpu-process"), "runner": "process"}
        wall, code = run(study, tmp / "process")
        result["runners"]["process"] = {**summarize_runner(tmp / "process", wall), "exit_code": code}
        print(f"process runner: {wall:.1f} s, exit {code}")
    # 2. docker runner, the GPU passed in
    study = {**base_study(args, "containers-gpu-docker"), "runner": "docker"}
    study["runner_options"] = {**study["runner_options"], "docker": docker_options(args, mounts, env, args.gpu_passthrough)}
    wall, code = run(study, tmp / "docker")
    result["runners"]["docker"] = {**summarize_runner(tmp / "docker", wall), "exit_code": code,
                                   "container_start_s": start_costs(tmp / "docker")}
    result["container_start_s"] = result["runners"]["docker"]["container_start_s"]
    print(f"docker runner: {wall:.1f} s, exit {code}")
    # 3. the control: the old request (a device request only), one short trial on the GPU
    control = base_study(args, "containers-gpu-control")
    control.update(runner="docker", repeats=1, sweep={"batch_size": [args.batch_sizes[0]]})
    if args.smoke:
        control["device"] = "cuda:0"   # the fake NVML's GPU: assigned, absent inside
    control["runner_options"] = {**control["runner_options"],
                                 "docker": docker_options(args, mounts, env, "device-request")}
    wall, code = run(control, tmp / "control")
    crecs = records(tmp / "control")
    failed = bool(crecs) and all(r["status"] == "failed" and r.get("error_kind") == "gpu-unavailable" for r in crecs)
    result["control_no_gpu_failed"] = failed
    result["control"] = {"wall_s": wall, "exit_code": code, "passthrough": "device-request",
                         "error_kind": [r.get("error_kind") for r in crecs],
                         "error": next((r.get("error") for r in crecs if r.get("error")), None),
                         "measured_energy_source": [r.get("energy_source") for r in crecs if r["status"] == "ok"]}
    result["wall_s"] = time.monotonic() - t_all

    # ratios and the printout
    proc, dock = result["runners"].get("process"), result["runners"]["docker"]
    print(f"\n{'config':<28} {'runner':<8} {'J/tok mean':>11} {'95% CI':>24} {'window W':>9} {'source':>10}")
    ratios = {}
    for cid, d in dock["configs"].items():
        rows = [("process", proc["configs"].get(cid) if proc else None), ("docker", d)]
        for name, c in rows:
            if c is None:
                continue
            ci = c["ci95"]
            fmt = lambda x: "n/a" if x is None else f"{x:.6g}"   # noqa: E731
            print(f"{cid[:28]:<28} {name:<8} {fmt(c['j_per_output_token_mean']):>11} "
                  f"{('[' + fmt(ci[0]) + ', ' + fmt(ci[1]) + ']') if ci else 'n/a':>24} "
                  f"{fmt(c['window_power_w_mean']):>9} {','.join(c['energy_source']):>10}")
        p = proc["configs"].get(cid) if proc else None
        if p and p["j_per_output_token_mean"] and d["j_per_output_token_mean"]:
            ratios[cid] = d["j_per_output_token_mean"] / p["j_per_output_token_mean"]
            print(f"{'':<28} docker/process J/tok = {ratios[cid]:.3f}")
    result["j_per_token_ratio_docker_over_process"] = ratios
    for name, r in result["runners"].items():
        share = r["windows_share"]
        print(f"{name}: wall {r['wall_s']:.1f} s, windows {r['windows_s']:.1f} s, share "
              f"{'n/a' if share is None else f'{share:.1%}'}, trials ok {r['trials_ok']}/{r['trials']}, "
              f"workers {r['workers']}; runner in records: {r['environment_runner']}")
    cs = result["container_start_s"]
    if cs["containers"]:
        print(f"container start-to-ready: mean {cs['mean']:.2f} s, min {cs['min']:.2f}, max {cs['max']:.2f} "
              f"({cs['containers']} containers)")
    print(f"control (device request only): failed loudly = {failed}; {result['control']['error']}")
    print(f"total {result['wall_s']:.1f} s")

    date = dt.date.today().isoformat()
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"containers-gpu-{slug}-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    ok = failed and all(r["trials_ok"] == r["trials"] and r["trials"] > 0 for r in result["runners"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
