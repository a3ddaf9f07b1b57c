"""Containers created through Podman's own (libpod) REST API, for CDI device names.

Podman's Docker-compatible API answers HTTP 500 to CDI names in ``Devices`` and silently ignores
device requests; its own API takes CDI names (``devices: [{"path": "nvidia.com/gpu=..."}]``). For
``gpu_passthrough: cdi`` the runner sends the same ``containers.create`` arguments it gives the
docker SDK, translated here into libpod's SpecGenerator JSON, over the SDK's own connection
(``client.api``: the same socket). Every isolation argument is translated or refused: an argument
this module does not know raises :class:`LibpodTranslationError`, it is never dropped. The created
container is handed back as an ordinary docker SDK ``Container`` (``client.containers.get``), so
start, logs, wait, stop and remove go through the Docker API as for any other container.
"""
from __future__ import annotations

import shlex
import signal
from typing import Any, Callable

from joulebench.errors import JoulebenchError

LIBPOD_API = "/v4.0.0/libpod"
CDI_DEVICES = "cdi_devices"     # the runner's key for fully-qualified CDI names (not a docker SDK argument)
UNLIMITED = 2 ** 64 - 1         # an rlimit of -1 (unlimited) as libpod's uint64
# A read-only root gets these as tmpfs through Podman's Docker API (its read-only-tmpfs default); libpod's
# API leaves that to its caller, so they are added here alike (unless mounted already).
READ_ONLY_TMPFS = ("/tmp", "/var/tmp", "/run")


class LibpodTranslationError(JoulebenchError):
    """A ``containers.create`` argument that has no libpod translation here (never dropped silently)."""


def _bytes(v: Any) -> int:
    from docker.utils import parse_bytes

    return int(parse_bytes(v))


def _str_map(v: Any, what: str) -> dict[str, str]:
    if isinstance(v, dict):
        return {str(k): "" if x is None else str(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        out = {}
        for item in v:
            k, sep, x = str(item).partition("=")
            out[k] = x if sep else ""
        return out
    raise LibpodTranslationError(f"{what}: expected a mapping or a list of KEY=VALUE, not {v!r}")


def _argv(v: Any) -> list[str]:
    return shlex.split(v) if isinstance(v, str) else [str(x) for x in v]


def _signal(v: Any) -> int:
    if isinstance(v, int):
        return v
    name = str(v).upper()
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except (KeyError, ValueError):
        raise LibpodTranslationError(f"stop_signal {v!r} is not a signal name") from None


def _namespace(v: str, key: str) -> dict[str, str]:
    v = str(v)
    if v.startswith("container:"):
        return {"nsmode": "container", "value": v.split(":", 1)[1]}
    modes = {"none": "none", "host": "host", "private": "private", "shareable": "shareable",
             "bridge": "bridge", "default": "bridge"}
    if key == "ipc_mode":
        modes.pop("bridge"), modes.pop("default")
    if v not in modes:
        raise LibpodTranslationError(f"{key} {v!r} has no libpod translation here")
    return {"nsmode": modes[v]}


def _mount(m: dict[str, Any]) -> dict[str, Any]:
    """A docker SDK ``Mount`` (a dict with Target, Source, Type, ReadOnly, ...) as an OCI mount."""
    known = {"Target", "Source", "Type", "ReadOnly", "BindOptions", "TmpfsOptions", "Consistency"}
    extra = set(m) - known
    if extra:
        raise LibpodTranslationError(f"mount {m.get('Target')}: {', '.join(sorted(extra))} "
                                     "have no libpod translation here")
    kind = m.get("Type", "volume")
    if m.get("Consistency") not in (None, "default", "consistent"):
        raise LibpodTranslationError(f"mount {m.get('Target')}: Consistency {m['Consistency']!r} "
                                     "has no libpod translation here")
    ro = "ro" if m.get("ReadOnly") else "rw"
    if kind == "bind":
        opts = ["rbind", ro]
        bind = dict(m.get("BindOptions") or {})
        if "Propagation" in bind:
            opts.append(str(bind.pop("Propagation")))
        if bind:
            raise LibpodTranslationError(f"mount {m['Target']}: BindOptions {sorted(bind)} have no libpod "
                                         "translation here")
        return {"destination": m["Target"], "source": m["Source"], "type": "bind", "options": opts}
    if kind == "tmpfs":
        opts = [ro]
        t = dict(m.get("TmpfsOptions") or {})
        if "SizeBytes" in t:
            opts.append(f"size={int(t.pop('SizeBytes'))}")
        if "Mode" in t:
            opts.append(f"mode={int(t.pop('Mode')):o}")
        if t:
            raise LibpodTranslationError(f"mount {m['Target']}: TmpfsOptions {sorted(t)} have no libpod "
                                         "translation here")
        return {"destination": m["Target"], "source": "tmpfs", "type": "tmpfs", "options": opts}
    raise LibpodTranslationError(f"mount {m.get('Target')}: type {kind!r} has no libpod translation here")


def _volumes(v: Any) -> list[dict[str, Any]]:
    """The docker SDK's ``volumes`` (``{host: {"bind": path, "mode": "ro"}}`` or ``["host:path:ro"]``) as
    bind mounts; named volumes are refused."""
    items: list[tuple[str, str, str]] = []
    if isinstance(v, dict):
        for host, b in v.items():
            if not isinstance(b, dict) or "bind" not in b:
                raise LibpodTranslationError(f"volumes {host!r}: expected {{'bind': path, 'mode': ...}}")
            items.append((str(host), str(b["bind"]), str(b.get("mode", "rw"))))
    else:
        for s in v:
            parts = str(s).split(":")
            if len(parts) not in (2, 3):
                raise LibpodTranslationError(f"volumes {s!r}: expected host:container[:mode]")
            items.append((parts[0], parts[1], parts[2] if len(parts) == 3 else "rw"))
    out = []
    for host, target, mode in items:
        if not host.startswith("/"):
            raise LibpodTranslationError(f"volumes {host!r}: named volumes have no libpod translation here")
        opts = [o for o in mode.split(",") if o]
        if not set(opts) <= {"ro", "rw", "z", "Z", "rbind", "bind", "shared", "slave", "private",
                             "rshared", "rslave", "rprivate"}:
            raise LibpodTranslationError(f"volumes {host!r}: mode {mode!r} has no libpod translation here")
        if not {"bind", "rbind"} & set(opts):
            opts.insert(0, "rbind")
        out.append({"destination": target, "source": host, "type": "bind", "options": opts})
    return out


def _tmpfs(v: Any) -> list[dict[str, Any]]:
    """The docker SDK's ``tmpfs`` (``{path: "opt,opt"}`` or ``["path:opt,opt"]``) as tmpfs mounts."""
    pairs = (list(v.items()) if isinstance(v, dict)
             else [tuple(s.split(":", 1)) if ":" in s else (s, "") for s in map(str, v)])
    return [{"destination": str(path), "source": "tmpfs", "type": "tmpfs",
             "options": [o for o in str(opts or "").split(",") if o]} for path, opts in pairs]


def _ulimit(u: Any) -> dict[str, Any]:
    name = u["Name"] if isinstance(u, dict) else u.name
    soft = u.get("Soft") if isinstance(u, dict) else u.soft
    hard = u.get("Hard") if isinstance(u, dict) else u.hard
    hard = soft if hard is None else hard

    def n(x: Any) -> int:
        return UNLIMITED if int(x) < 0 else int(x)

    return {"type": f"RLIMIT_{str(name).upper()}", "soft": n(soft), "hard": n(hard)}


def _security_opt(opts: list[str], spec: dict[str, Any]) -> None:
    for opt in opts:
        key, sep, val = str(opt).partition("=")
        if not sep:   # the older "key:value" form
            key, sep, val = str(opt).partition(":")
        if key == "no-new-privileges":
            spec["no_new_privileges"] = (val or "true").lower() == "true"
        elif key == "label" and sep:
            spec.setdefault("selinux_opts", []).append(val)
        elif key == "seccomp" and sep:
            spec["seccomp_profile_path"] = val
        elif key == "apparmor" and sep:
            spec["apparmor_profile"] = val
        else:
            raise LibpodTranslationError(f"security_opt {opt!r} has no libpod translation here")


def _limits(spec: dict[str, Any]) -> dict[str, Any]:
    return spec.setdefault("resource_limits", {})


def _set(path: tuple[str, ...], conv: Callable[[Any], Any] = lambda x: x):
    """A translator that puts the converted value at ``path`` under ``resource_limits``."""
    def put(spec: dict[str, Any], v: Any) -> None:
        d = _limits(spec)
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = conv(v)
    return put


def _nano_cpus(spec: dict[str, Any], v: Any) -> None:
    cpu = _limits(spec).setdefault("cpu", {})
    cpu["period"] = 100000
    cpu["quota"] = int(int(v) * 100000 // 10 ** 9)


def _field(name: str, conv: Callable[[Any], Any] = lambda x: x):
    def put(spec: dict[str, Any], v: Any) -> None:
        spec[name] = conv(v)
    return put


def _extend(name: str, conv: Callable[[Any], list]):
    def put(spec: dict[str, Any], v: Any) -> None:
        spec.setdefault(name, []).extend(conv(v))
    return put


def _detach(spec: dict[str, Any], v: Any) -> None:
    """A created container is always detached here: the runner follows it by its logs."""


def _devices(spec: dict[str, Any], v: Any) -> None:
    # "host[:container[:perms]]" strings (libpod parses them as the CLI's --device) or CDI names
    spec.setdefault("devices", []).extend({"path": str(d)} for d in v)


def _device_requests(spec: dict[str, Any], v: Any) -> None:
    if v:
        raise LibpodTranslationError("device_requests have no libpod translation (Podman ignores them through "
                                     "its Docker API): pass GPUs by CDI name (gpu_passthrough: cdi)")


TRANSLATE: dict[str, Callable[[dict[str, Any], Any], None]] = {
    "image": _field("image", str),
    "command": _field("command", _argv),
    "entrypoint": _field("entrypoint", _argv),
    "name": _field("name", str),
    "hostname": _field("hostname", str),
    "labels": _field("labels", lambda v: _str_map(v, "labels")),
    "environment": _field("env", lambda v: _str_map(v, "environment")),
    "working_dir": _field("work_dir", str),
    "user": _field("user", str),
    "group_add": _field("groups", lambda v: [str(g) for g in v]),
    "stop_signal": _field("stop_signal", _signal),
    "stop_timeout": _field("stop_timeout", int),
    "auto_remove": _field("remove", bool),
    "detach": _detach,
    "network_mode": _field("netns", lambda v: _namespace(v, "network_mode")),
    "ipc_mode": _field("ipcns", lambda v: _namespace(v, "ipc_mode")),
    "privileged": _field("privileged", bool),
    "cap_drop": _extend("cap_drop", list),
    "cap_add": _extend("cap_add", list),
    "security_opt": lambda spec, v: _security_opt(list(v), spec),
    "init": _field("init", bool),
    "read_only": _field("read_only_filesystem", bool),
    "tmpfs": _extend("mounts", _tmpfs),
    "mounts": _extend("mounts", lambda v: [_mount(dict(m)) for m in v]),
    "volumes": _extend("mounts", _volumes),
    "shm_size": _field("shm_size", _bytes),
    "mem_limit": _set(("memory", "limit"), _bytes),
    "mem_reservation": _set(("memory", "reservation"), _bytes),
    "memswap_limit": _set(("memory", "swap"), _bytes),
    "pids_limit": _set(("pids", "limit"), int),
    "nano_cpus": _nano_cpus,
    "cpu_quota": _set(("cpu", "quota"), int),
    "cpu_period": _set(("cpu", "period"), int),
    "cpu_shares": _set(("cpu", "shares"), int),
    "cpuset_cpus": _set(("cpu", "cpus"), str),
    "cpuset_mems": _set(("cpu", "mems"), str),
    "oom_score_adj": _field("oom_score_adj", int),
    "ulimits": _extend("r_limits", lambda v: [_ulimit(u) for u in v]),
    "devices": _devices,
    CDI_DEVICES: _devices,
    "device_requests": _device_requests,
}


def spec_generator(kwargs: dict[str, Any]) -> dict[str, Any]:
    """libpod's SpecGenerator JSON for the docker SDK ``containers.create`` arguments ``kwargs`` (plus
    ``cdi_devices``). Raises :class:`LibpodTranslationError` for any argument it cannot translate."""
    unknown = sorted(k for k in kwargs if k not in TRANSLATE)
    if unknown:
        raise LibpodTranslationError(f"container arguments {', '.join(unknown)} have no libpod translation "
                                     "here (gpu_passthrough cdi creates containers through Podman's own API); "
                                     "refusing to drop them")
    if "image" not in kwargs:
        raise LibpodTranslationError("no image to create the container from")
    spec: dict[str, Any] = {}
    for key, value in kwargs.items():
        if value is None:
            continue
        TRANSLATE[key](spec, value)
    if spec.get("read_only_filesystem"):
        taken = {m["destination"] for m in spec.get("mounts", [])}
        spec.setdefault("mounts", []).extend(
            {"destination": d, "source": "tmpfs", "type": "tmpfs",
             "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]}
            for d in READ_ONLY_TMPFS if d not in taken)
    return spec


def create_id(client, kwargs: dict[str, Any]) -> str:
    """Create the container through Podman's libpod API over the docker SDK's connection; its id."""
    api = client.api
    body = spec_generator(kwargs)
    res = api._post_json(api._url(f"{LIBPOD_API}/containers/create", versioned_api=False), data=body)
    return str(api._result(res, json=True)["Id"])


def create(client, kwargs: dict[str, Any]):
    """Create the container (libpod API) and return it as a docker SDK ``Container``."""
    return client.containers.get(create_id(client, kwargs))
