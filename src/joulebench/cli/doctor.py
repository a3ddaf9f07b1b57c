"""``joulebench doctor``: pre-flight checks for container runs on GPUs, each with a fix hint.

Checks, in order: the container engine answers; each engine image is current (or buildable);
the host has NVIDIA GPUs (NVML); a container sees them (an NVML and CUDA probe inside the engine image,
with the GPUs passed in as the runner passes them on this engine: a device request on Docker, device nodes
and the driver bind on Podman); the driver supports the CUDA version the
image's torch was built for; and the GPUs are free of other processes.

A check that does not apply (no GPU on this host) says so honestly and is not *required*:
the exit status is non-zero only when a required check fails.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

# Printed by the probe inside the image: JSON on the last line.
NVML_PROBE = r"""
import json
out = {}
try:
    import pynvml as n
    n.nvmlInit()
    def s(x):
        return x.decode() if isinstance(x, bytes) else x
    out["driver"] = s(n.nvmlSystemGetDriverVersion())
    out["cuda_driver"] = n.nvmlSystemGetCudaDriverVersion_v2()
    out["gpus"] = [{"uuid": s(n.nvmlDeviceGetUUID(h)), "name": s(n.nvmlDeviceGetName(h))}
                   for h in (n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount()))]
except Exception as e:
    out["nvml_error"] = f"{type(e).__name__}: {e}"
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = bool(torch.cuda.is_available())
    out["cuda_devices"] = torch.cuda.device_count() if out["cuda_available"] else 0
except Exception as e:
    out["torch_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        return "FAIL" if self.required else "warn"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def _cuda_str(v: int | None) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}" if v else "?"


def host_gpus() -> dict[str, Any]:
    """NVML on the host: driver, CUDA driver version, GPUs with their processes; or the reason there are none."""
    from joulebench.devices.nvml import load_nvml   # pynvml, or the trace-backed fake named by $JOULEBENCH_FAKE_NVML

    n = load_nvml()
    if n is None:
        return {"error": "nvidia-ml-py is not installed"}
    try:
        n.nvmlInit()
    except Exception as exc:   # pynvml.NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return {"error": f"NVML unavailable: {exc}"}
    try:
        def s(x):
            return x.decode() if isinstance(x, bytes) else x

        cuda = getattr(n, "nvmlSystemGetCudaDriverVersion_v2", None) or n.nvmlSystemGetCudaDriverVersion
        info: dict[str, Any] = {"driver": s(n.nvmlSystemGetDriverVersion()), "cuda_driver": int(cuda()), "gpus": []}
        for i in range(n.nvmlDeviceGetCount()):
            h = n.nvmlDeviceGetHandleByIndex(i)
            try:
                procs = [p.pid for p in n.nvmlDeviceGetComputeRunningProcesses(h)]
            except Exception:
                procs = []
            mem = n.nvmlDeviceGetMemoryInfo(h)
            info["gpus"].append({"index": i, "uuid": s(n.nvmlDeviceGetUUID(h)), "name": s(n.nvmlDeviceGetName(h)),
                                 "processes": procs, "memory_used_bytes": int(mem.used)})
        return info
    finally:
        try:
            n.nvmlShutdown()
        except Exception:
            pass


def check_engine() -> tuple[Check, Any]:
    from joulebench.runners.docker.client import docker_host, engine_available

    host = docker_host()
    if not engine_available(timeout_s=2.0):
        return Check("container engine", False, f"nothing answers at {host}",
                     "start Docker, or run scripts/podman-setup.sh and export the DOCKER_HOST it prints; "
                     "without an engine, studies run with runner: process"), None
    from joulebench.runners.docker.client import connect

    client = connect(timeout_s=30)
    try:
        v = client.version()
        comps = {c.get("Name"): c.get("Version") for c in v.get("Components", []) if isinstance(c, dict)}
        name = "Podman" if any("podman" in str(k).lower() for k in comps) else "Docker"
        detail = f"{name} {v.get('Version')} (API {v.get('ApiVersion')}) at {host}"
    except Exception as exc:
        detail = f"answers at {host} (version unknown: {exc})"
    return Check("container engine", True, detail), client


def check_images(client) -> list[Check]:
    from joulebench.runners.docker import images

    out = []
    try:
        infos = images.image_status(client=client)
    except Exception as exc:
        return [Check("images", False, f"cannot inspect images: {exc}",
                      "run from a joulebench source checkout (docker/<engine>/Dockerfile)")]
    base = images.resolve_build_args().get("BASE_IMAGE")
    for info in infos:
        if info.current:
            out.append(Check(f"image {info.engine}", True, f"{info.ref} is current"))
            continue
        buildable = f"buildable from docker/{info.engine}/Dockerfile"
        if info.engine in images.GPU_ONLY_ENGINES:
            state = f"stale (have {', '.join(info.stale_tags)})" if info.present else "missing"
            out.append(Check(f"image {info.engine}", False, f"{info.ref} {state}; a GPU-only image (no CPU "
                             f"build), {buildable} on a GPU host",
                             f"joulebench images build {info.engine} --gpu   (on the GPU host)", required=False))
            continue
        if base:
            try:
                client.images.get(base)
                buildable += f" on the local base {base}"
            except Exception:
                buildable += f"; the base {base} is not local and will be pulled"
        state = f"stale (have {', '.join(info.stale_tags)})" if info.present else "missing"
        out.append(Check(f"image {info.engine}", False, f"{info.ref} {state}; {buildable}",
                         f"joulebench images build {info.engine}   (or: make images)",
                         required=info.engine == "transformers"))
    return out


def probe_in_container(client, image: str, gpus: list[str] | None, *, passthrough=None,
                       python: str = "python") -> tuple[int | None, str]:
    """Run the NVML and CUDA probe in ``image`` with the runner's isolation and GPU passthrough; (exit code,
    output)."""
    from joulebench.runners.docker.client import run_probe

    return run_probe(client, image, [python, "-c", NVML_PROBE], gpus=gpus, timeout_s=120, passthrough=passthrough)


def run_checks(*, client=None, probe_image: str | None = None, gpu_passthrough: str = "auto",
               python: str = "python", driver_dir: str | None = None,
               cdi_spec_dirs: list[str] | None = None) -> list[Check]:
    """Every check. The GPU probe passes the GPUs as the runner would (``gpu_passthrough``: auto picks per
    engine; ``driver_dir`` for device nodes, ``cdi_spec_dirs`` for cdi) and runs ``python`` in the image."""
    checks: list[Check] = []
    if client is None:
        engine_check, client = check_engine()
        checks.append(engine_check)
    else:
        checks.append(Check("container engine", True, "client given"))
    if client is not None:
        checks += check_images(client)

    host = host_gpus()
    no_gpu = "error" in host or not host.get("gpus")
    if no_gpu:
        return checks + _no_gpu_checks(host)

    gpus = host["gpus"]
    checks.append(Check("host GPUs", True, f"{len(gpus)} x {gpus[0]['name']}, driver {host['driver']}, "
                                           f"CUDA driver {_cuda_str(host['cuda_driver'])}"))
    # GPU inside a container, with the exact device request the runner sends.
    image = probe_image
    if image is None and client is not None:
        image = _current_transformers_image(client)
    probe: dict[str, Any] = {}
    if client is None:
        checks.append(Check("GPU inside a container", False, "no container engine", "see 'container engine'"))
    elif image is None:
        checks.append(Check("GPU inside a container", False, "no engine image to probe with",
                            "joulebench images build transformers"))
    else:
        container_check, probe = _container_gpu_check(client, image, gpus, gpu_passthrough=gpu_passthrough,
                                                      python=python, driver_dir=driver_dir,
                                                      cdi_spec_dirs=cdi_spec_dirs)
        checks.append(container_check)
    checks.append(_cuda_check(probe, host))
    checks.append(_gpus_free_check(gpus))
    return checks


def _no_gpu_checks(host: dict[str, Any]) -> list[Check]:
    """The GPU checks on a host without an NVIDIA GPU: reported, none required."""
    why = host.get("error") or "NVML reports 0 GPUs"
    return [
        Check("host GPUs", False, f"no NVIDIA GPU on this host ({why})",
              "GPU studies need an NVIDIA GPU and driver; CPU studies still run "
              "(energy from RAPL where the CPU exposes it)", required=False),
        Check("GPU inside a container", False, "not run: this host has no NVIDIA GPU",
              "run `joulebench doctor` on the GPU machine", required=False),
        Check("driver / CUDA compatibility", False, "not run: no NVIDIA driver on this host",
              "", required=False),
        Check("GPUs free", False, "not run: no GPU on this host", "", required=False),
    ]


def _current_transformers_image(client) -> str | None:
    from joulebench.runners.docker import images

    infos = {i.engine: i for i in images.image_status(client=client)}
    t = infos.get("transformers")
    return t.ref if t and t.current else None


def _container_gpu_check(client, image: str, gpus: list[dict[str, Any]], *, gpu_passthrough: str = "auto",
                         python: str = "python", driver_dir: str | None = None,
                         cdi_spec_dirs: list[str] | None = None) -> tuple[Check, dict[str, Any]]:
    """Probe the GPUs inside ``image``, passed in as the runner passes them; the check and what the probe
    reported (empty if nothing)."""
    from joulebench.errors import JoulebenchError
    from joulebench.runners.docker.gpu import Passthrough
    from joulebench.worker.gpus import missing_piece

    try:
        pt = Passthrough.for_client(client, gpu_passthrough, driver_dir=driver_dir, cdi_spec_dirs=cdi_spec_dirs)
    except JoulebenchError as exc:   # cdi on Docker
        return Check("GPU inside a container", False, str(exc),
                     "use gpu_passthrough device-request (or auto) on Docker"), {}
    how = f"{pt.engine}, gpu_passthrough {pt.method}"
    try:
        code, output = probe_in_container(client, image, [g["uuid"] for g in gpus], passthrough=pt, python=python)
    except Exception as exc:   # the engine refused the GPU request (no NVIDIA runtime, no device nodes)
        from joulebench.runners.docker.client import api_message

        code, output = None, f"the engine refused the container: {api_message(exc)}"
    try:
        probe = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        probe = {}
    seen = probe.get("gpus") or []
    cuda_ok = "torch" not in probe or probe.get("cuda_devices", 0) >= len(gpus)
    if code == 0 and len(seen) == len(gpus) and cuda_ok:
        cuda = f", CUDA sees {probe['cuda_devices']}" if "torch" in probe else ""
        return Check("GPU inside a container", True,
                     f"NVML sees {len(seen)} GPU(s){cuda} in {image} ({how})"), probe
    runtimes = ""
    try:
        runtimes = ", ".join(sorted((client.info().get("Runtimes") or {}).keys()))
    except Exception:
        pass
    cuda = f", CUDA {probe.get('cuda_devices', 0)}" if "torch" in probe else ""
    return Check(
        "GPU inside a container", False,
        f"the probe in {image} ({how}) saw {len(seen)} of {len(gpus)} GPU(s) by NVML{cuda} (exit {code}): "
        f"{probe.get('nvml_error') or output.strip()[-300:]}; engine runtimes: {runtimes or '?'}",
        missing_piece(pt.method, str(pt.engine))), probe


def _cuda_check(probe: dict[str, Any], host: dict[str, Any]) -> Check:
    """Driver vs the image's CUDA."""
    torch_cuda = probe.get("torch_cuda")
    if not torch_cuda:
        if probe.get("torch"):
            return Check("driver / CUDA compatibility", False,
                         f"image torch {probe['torch']} is a CPU build; the GPUs would sit idle",
                         "build the GPU image: joulebench images build --gpu")
        return Check("driver / CUDA compatibility", False,
                     f"driver {host['driver']} supports CUDA {_cuda_str(host['cuda_driver'])}; "
                     "the image's CUDA is unknown (not probed)", "see 'GPU inside a container'",
                     required=False)
    want = tuple(int(x) for x in torch_cuda.split(".")[:2])
    have = (host["cuda_driver"] // 1000, (host["cuda_driver"] % 1000) // 10)
    ok = have >= want
    return Check("driver / CUDA compatibility", ok,
                 f"image torch {probe.get('torch')} needs CUDA {torch_cuda}; driver {host['driver']} "
                 f"supports {_cuda_str(host['cuda_driver'])}",
                 "" if ok else "update the NVIDIA driver, or build with an older TORCH_INDEX_URL/BASE_IMAGE")


def _gpus_free_check(gpus: list[dict[str, Any]]) -> Check:
    busy = [g for g in gpus if g["processes"]]
    return Check("GPUs free", not busy,
                 "no compute processes on any GPU" if not busy else
                 "; ".join(f"GPU {g['index']} ({g['uuid'][:12]}): pids {g['processes']}" for g in busy),
                 "" if not busy else "wait for those jobs, or pick other GPUs with runner_options.gpus",
                 required=False)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.required and not c.ok for c in checks) else 0

