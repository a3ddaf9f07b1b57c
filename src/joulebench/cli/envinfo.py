"""`joulebench env`: what this machine can measure and run. Never crashes."""
from __future__ import annotations

import importlib.util
from importlib import metadata
from typing import Any

from rich.console import Console
from rich.table import Table


def _safe(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - env reports problems, it does not fail on them
        return {"error": f"{type(e).__name__}: {e}"}


def _backends() -> list[dict[str, Any]]:
    from joulebench.backends import ENGINE_PACKAGES, backend_names

    out = []
    for name in backend_names():
        pkgs = ENGINE_PACKAGES.get(name, ())
        missing = [p for p in pkgs if importlib.util.find_spec(p) is None]
        versions = {}
        for p in pkgs:
            for dist in (p, p.replace("_", "-"), "llama-cpp-python" if p == "llama_cpp" else p):
                try:
                    versions[p] = metadata.version(dist)
                    break
                except metadata.PackageNotFoundError:
                    continue
        out.append({"backend": name, "installed": not missing, "missing": missing, "versions": versions})
    return out


def _meters() -> list[dict[str, Any]]:
    from joulebench.devices import cpu_devices, nvml_available, resolve_gpus

    meters = []
    gpus = _safe(resolve_gpus, None)
    if isinstance(gpus, dict):
        meters.append({"meter": "nvml-counter", "available": False, "detail": gpus["error"]})
    else:
        meters.append({"meter": "nvml-counter", "available": bool(gpus) and nvml_available(),
                       "detail": f"{len(gpus)} GPU(s)" if gpus else "no NVIDIA GPU / NVML here"})
    cpus = _safe(cpu_devices)
    if isinstance(cpus, dict):
        meters.append({"meter": "rapl", "available": False, "detail": cpus["error"]})
    else:
        meters.append({"meter": "rapl", "available": bool(cpus),
                       "detail": ", ".join(d.info.name for d in cpus) if cpus else
                       "no readable /sys/class/powercap: CPU energy is unavailable"})
    return meters


def environment_report() -> dict[str, Any]:
    from joulebench.system.snapshot import collect_environment

    rep: dict[str, Any] = {"environment": _safe(collect_environment)}
    rep["meters"] = _safe(_meters)
    rep["backends"] = _safe(_backends)
    try:
        from joulebench.runners.docker.client import engine_available

        rep["container_engine"] = {"available": bool(_safe(engine_available) is True)}
    except ImportError:
        rep["container_engine"] = {"available": False, "detail": "docker runner not installed"}
    try:
        from joulebench.runners.docker.images import image_status

        st = _safe(image_status)
        rep["images"] = st if isinstance(st, dict) else [getattr(i, "__dict__", i) for i in st]
    except ImportError:
        rep["images"] = []
    try:
        from joulebench.runners.environments import list_environments

        rep["engine_environments"] = _safe(list_environments)
    except ImportError:
        rep["engine_environments"] = []
    try:
        import ray  # noqa: F401

        rep["ray"] = {"installed": True}
    except Exception:  # noqa: BLE001
        rep["ray"] = {"installed": False}
    return rep


def print_environment(rep: dict[str, Any], console: Console) -> None:
    env = rep.get("environment", {})
    console.print(f"[bold]joulebench {env.get('joulebench_version')}[/] on {env.get('hostname')} "
                  f"({env.get('os')}), Python {env.get('python')}")
    console.print(f"CPU: {env.get('cpu_model')} x{env.get('cpu_count')}, RAM "
                  f"{(env.get('ram_bytes') or 0) / 2**30:.1f} GiB")
    gpu = env.get("gpu") or {}
    gpus = gpu.get("gpus") or []
    if gpus:
        t = Table(title=f"GPUs (driver {gpu.get('driver_version')}, CUDA {gpu.get('cuda_driver_version')})")
        for col in ("index", "name", "uuid", "power limit W"):
            t.add_column(col)
        for g in gpus:
            t.add_row(str(g.get("index")), str(g.get("name")), str(g.get("uuid")), str(g.get("power_limit_w")))
        console.print(t)
    else:
        console.print("GPUs: none visible (no NVIDIA driver / NVML)")
    t = Table(title="meters")
    t.add_column("meter")
    t.add_column("available")
    t.add_column("detail")
    for m in rep.get("meters") or []:
        if isinstance(m, dict) and "meter" in m:
            t.add_row(m["meter"], "yes" if m["available"] else "no", str(m.get("detail", "")))
    console.print(t)
    t = Table(title="backends")
    t.add_column("backend")
    t.add_column("installed")
    t.add_column("versions / missing")
    for b in rep.get("backends") or []:
        if isinstance(b, dict) and "backend" in b:
            t.add_row(b["backend"], "yes" if b["installed"] else "no",
                      ", ".join(f"{k} {v}" for k, v in b["versions"].items()) if b["installed"]
                      else "missing: " + ", ".join(b["missing"]))
    console.print(t)
    ce = rep.get("container_engine", {})
    console.print(f"container engine: {'reachable' if ce.get('available') else 'not reachable'} "
                  f"(DOCKER_HOST or the default socket)")
    imgs = rep.get("images") or []
    if imgs and isinstance(imgs, list):
        for i in imgs:
            console.print(f"  image {i}")
    envs = rep.get("engine_environments") or []
    if envs and isinstance(envs, list):
        t = Table(title="engine environments (interpreters a worker can run in)")
        for col in ("backend", "python", "usable", "engine", "problem / fix"):
            t.add_column(col, overflow="fold")
        for e in envs:
            if not isinstance(e, dict):
                continue
            problem = "; ".join(e.get("errors") or [])
            if e.get("hint"):
                problem += f" -> {e['hint']}"
            t.add_row(str(e.get("backend")), str(e.get("python")), "yes" if e.get("ok") else "no",
                      f"{e.get('engine')} {e.get('engine_version') or ''}".strip(), problem or "-")
        console.print(t)
    console.print(f"ray: {'installed' if rep.get('ray', {}).get('installed') else 'not installed (pip install joulebench[ray])'}")
