"""The build context of an engine image: which files go into it, the tar sent to the engine, and
the hash of its inputs that tags the image."""
from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from joulebench import __version__


def source_files(root: Path) -> list[tuple[str, Path]]:
    """(archive name, file) of joulebench's own inputs."""
    out: list[tuple[str, Path]] = []
    for rel in ("pyproject.toml", "README.md"):
        if (root / rel).is_file():
            out.append((rel, root / rel))
    for p in sorted((root / "src").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo") \
                and not any(part.endswith(".egg-info") for part in p.parts):
            out.append((p.relative_to(root).as_posix(), p))
    for sub in ("common",):
        for p in sorted((root / "docker" / sub).rglob("*")):
            if p.is_file():
                out.append((p.relative_to(root).as_posix(), p))
    return out


def wheel_files(root: Path, wheels_dir: Path | None) -> list[tuple[str, Path]]:
    seen: dict[str, Path] = {}
    for d in [root / "docker" / "wheels"] + ([Path(wheels_dir)] if wheels_dir else []):
        if d.is_dir():
            for w in sorted(d.glob("*.whl")):
                seen.setdefault(w.name, w)
    return [(f"docker/wheels/{n}", p) for n, p in sorted(seen.items())]


def local_wheel_satisfies(spec: str, wheel_names: list[str]) -> bool:
    """True when ``name==version`` is pinned exactly and a wheel of that name and version is local."""
    name, sep, version = spec.partition("==")
    if not sep:
        return False
    prefix = f"docker/wheels/{name.strip().replace('-', '_')}-{version.strip()}-"
    return any(n.startswith(prefix) for n in wheel_names)


def _sha_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class BuildContext:
    engine: str
    dockerfile: str                      # path inside the context
    files: list[tuple[str, Path]] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    inputs_hash: str = ""

    def write_tar(self, fh) -> None:
        with tarfile.open(fileobj=fh, mode="w") as tar:
            for d in ("docker/wheels", "docker/certs"):   # the Dockerfiles COPY these even when empty
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
            for name, path in self.files:
                info = tar.gettarinfo(str(path), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                with open(path, "rb") as f:
                    tar.addfile(info, f)


def inputs_hash(engine: str, build_args: dict[str, str], hashed_files: list[tuple[str, Path]],
                wheels: list[tuple[str, Path]], length: int) -> str:
    """The hash of the inputs that change the image: engine, version, build arguments, files, wheels."""
    h = hashlib.sha256()
    h.update(json.dumps({"engine": engine, "joulebench": __version__, "build_args": build_args},
                        sort_keys=True).encode())
    for name, path in hashed_files:
        if name == "README.md":      # documentation does not change the image's behaviour
            continue
        h.update(name.encode() + b"\0" + _sha_file(path).encode() + b"\0")
    for name, path in wheels:        # wheels are large and immutable by name: name and size suffice
        h.update(name.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
    # CA certificates are used by the build stage only and never reach the image: not hashed.
    return h.hexdigest()[:length]
