"""The SGLang environment scripts: the network setup script, the offline GPU pack (its pins) and the
install script, run for real on a small stand-in set of pieces (no GPU, no download)."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "benchmarks" / "sglang_gpu_pack.sh"
INSTALL = REPO / "benchmarks" / "sglang_gpu_install.sh"
SETUP = REPO / "scripts" / "setup-sglang-env.sh"


@pytest.mark.parametrize("script", [PACK, INSTALL, SETUP], ids=lambda p: p.name)
def test_scripts_parse_and_are_executable(script):
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_pack_pins_what_ran_on_the_gpu():
    text = PACK.read_text()
    for pin in ('"sglang==0.5.17"', '"sglang-kernel==0.4.5"', '"flashinfer-python[cu13]==0.6.15.post1"',
                "transformers==5.12.1", "tokenizers==0.22.2", "torch==2.11.0+img", "numba==0.65.1+img"):
        assert pin in text, pin
    assert "--python-version 3.12" in text and "manylinux_2_${n}_x86_64" in text and " 34;" in text
    assert "PIECE=${3:-58M}" in text and "flash_ops*.so" in text and "WITH_FA3" in text
    assert "carry = {\"transformers\", \"tokenizers\"}" in text
    for left_out in ("nvidia-cuda-nvcc", "nvidia-cutlass-dsl", "flash-attn-4", "tokenspeed-mla"):
        assert left_out in text
    assert "/work/" not in text and "shared/" not in text      # self-contained: no paths outside the repo


def test_setup_script_installs_the_cuda13_set():
    text = SETUP.read_text()
    assert "sglang==0.5.17" in text and "sglang-kernel==0.4.5" in text
    assert "flashinfer-python[cu13]==0.6.15.post1" in text and "whl/cu130" in text
    assert ".venvs/sglang" in text


def _dist_info(tar: tarfile.TarFile, name: str, version: str) -> None:
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    info = tarfile.TarInfo(f"./{name.replace('-', '_')}-{version}.dist-info/METADATA")
    info.size = len(meta)
    tar.addfile(info, io.BytesIO(meta))


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd binary")
def test_install_unpacks_the_pieces_and_makes_an_engine_environment(tmp_path):
    # a stand-in piece set: package metadata of the SGLang set, and a torch module (the image's, on the GPU)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, version in (("sglang", "0.5.17"), ("sglang-kernel", "0.4.5"), ("flashinfer-python", "0.6.15.post1"),
                              ("transformers", "5.12.1"), ("tokenizers", "0.22.2")):
            _dist_info(tar, name, version)
        code = b"__version__ = '2.11.0+stand-in'\n"
        info = tarfile.TarInfo("./torch/__init__.py")
        info.size = len(code)
        tar.addfile(info, io.BytesIO(code))
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    packed = subprocess.run(["zstd", "-q", "--long=27", "-c"], input=buf.getvalue(), capture_output=True,
                            check=True).stdout
    half = len(packed) // 2
    for suffix, part in (("aa", packed[:half]), ("ab", packed[half:])):
        (pieces / f"ssite.tar.zst.part-{suffix}").write_bytes(part)
    (pieces / "ssite.sha256").write_text("".join(
        f"{hashlib.sha256((pieces / f'ssite.tar.zst.part-{s}').read_bytes()).hexdigest()}  ssite.tar.zst.part-{s}\n"
        for s in ("aa", "ab")))
    target, envdir = tmp_path / "site", tmp_path / "env"
    # the launcher runs this interpreter (on the GPU machine: the image's python3, which has
    # joulebench's light dependencies); the pieces and joulebench's src/ come from the launcher
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = sys.executable
    r = subprocess.run(["bash", str(INSTALL), str(pieces), str(target), str(envdir)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sglang 0.5.17" in r.stdout and "torch 2.11.0+stand-in" in r.stdout
    launcher = envdir / "bin" / "python"
    assert f"export JOULEBENCH_SGLANG_PYTHON={launcher}" in r.stdout
    out = subprocess.run([str(launcher), "-c", "import sys, importlib.metadata as m; "
                          "print(sys.path[1:3], m.version('transformers'))"], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert str(target) in out and str(REPO / "src") in out and "5.12.1" in out
    # a damaged piece is refused before anything is unpacked
    (pieces / "ssite.tar.zst.part-ab").write_bytes(b"broken")
    r = subprocess.run(["bash", str(INSTALL), str(pieces), str(tmp_path / "site2"), str(tmp_path / "env2")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "send it again" in r.stderr and not (tmp_path / "site2").exists()
