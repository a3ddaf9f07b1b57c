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
PROOFS = REPO / "benchmarks" / "gpu_proofs.sh"


@pytest.mark.parametrize("script", [PACK, INSTALL, SETUP], ids=lambda p: p.name)
def test_scripts_parse_and_are_executable(script):
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_gpu_proofs_parses():
    subprocess.run(["bash", "-n", str(PROOFS)], check=True)      # run as `bash benchmarks/gpu_proofs.sh`


def test_pack_pins_what_ran_on_the_gpu():
    text = PACK.read_text()
    for pin in ('"sglang==0.5.17"', '"sglang-kernel==0.4.5"', '"flashinfer-python[cu13]==0.6.15.post1"',
                "transformers==5.12.1", "tokenizers==0.22.2", "torch==2.11.0+img", "numba==0.65.1+img"):
        assert pin in text, pin
    assert "--python-version 3.12" in text and "manylinux_2_${n}_x86_64" in text and " 34;" in text
    assert "PIECE=${3:-60800000}" in text and "LIMIT=60800000" in text      # one piece + the repo in a transfer
    assert "flash_ops*.so" in text and "WITH_FA3" in text and "trim_fa3 || exit 1" in text
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
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    parts, sums = _stand_in_pieces(tmp_path, n=2)
    for i, part in enumerate(parts):
        (pieces / f"ssite.tar.zst.part-a{chr(97 + i)}").write_bytes(part)
    (pieces / "ssite.sha256").write_text(sums)
    target, envdir = tmp_path / "site", tmp_path / "env"
    # the launcher runs this interpreter (on the GPU machine: the image's python3, which has
    # joulebench's light dependencies); the pieces and joulebench's src/ come from the launcher
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = sys.executable
    env["IMPORT_CHECK"] = "0"     # the stand-in pieces have no server modules
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


def _trim(tmp_path: Path, *, files: tuple[str, ...], with_fa3: bool = False) -> subprocess.CompletedProcess:
    kernel = tmp_path / "w" / "site" / "sgl_kernel"
    kernel.mkdir(parents=True, exist_ok=True)
    for f in files:
        (kernel / f).parent.mkdir(parents=True, exist_ok=True)
        (kernel / f).write_bytes(b"\0")
    env = {**os.environ, "ONLY_TRIM": "1", "WITH_FA3": "1" if with_fa3 else "0"}
    return subprocess.run(["bash", str(PACK), str(tmp_path / "w"), str(tmp_path / "pieces")], capture_output=True,
                          text=True, env=env, timeout=60)


def test_fa3_is_left_out_where_sglang_kernel_keeps_it(tmp_path):
    r = _trim(tmp_path, files=("flash_ops.abi3.so", "flashmla_ops.abi3.so", "sm90/common_ops.abi3.so"))
    assert r.returncode == 0, r.stderr
    kernel = tmp_path / "w" / "site" / "sgl_kernel"
    assert "FA3 left out: site/sgl_kernel/flash_ops.abi3.so" in r.stdout
    assert not (kernel / "flash_ops.abi3.so").exists()
    assert (kernel / "flashmla_ops.abi3.so").exists() and (kernel / "sm90" / "common_ops.abi3.so").exists()


def test_fa3_trim_fails_loudly_when_the_library_is_not_found(tmp_path):
    # another layout (nothing named flash_ops*.so): neither "left out" nor "kept" can be promised
    for with_fa3 in (False, True):
        r = _trim(tmp_path, files=("flash_attn3_ops.abi3.so",), with_fa3=with_fa3)
        assert r.returncode != 0 and "FA3 check failed" in r.stderr, r.stdout + r.stderr


def test_fa3_is_kept_with_with_fa3(tmp_path):
    r = _trim(tmp_path, files=("sm90/flash_ops.abi3.so",), with_fa3=True)
    assert r.returncode == 0 and "FA3 kept" in r.stdout, r.stderr
    assert (tmp_path / "w" / "site" / "sgl_kernel" / "sm90" / "flash_ops.abi3.so").exists()


def _stand_in_pieces(tmp_path: Path, n: int = 3) -> tuple[list[bytes], str]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, version in (("sglang", "0.5.17"), ("sglang-kernel", "0.4.5"), ("flashinfer-python", "0.6.15.post1"),
                              ("transformers", "5.12.1"), ("tokenizers", "0.22.2")):
            _dist_info(tar, name, version)
        code = b"__version__ = '2.11.0+stand-in'\n"
        info = tarfile.TarInfo("./torch/__init__.py")
        info.size = len(code)
        tar.addfile(info, io.BytesIO(code))
    packed = subprocess.run(["zstd", "-q", "--long=27", "-c"], input=buf.getvalue(), capture_output=True,
                            check=True).stdout
    size = -(-len(packed) // n)
    parts = [packed[i * size:(i + 1) * size] for i in range(n)]
    sums = "".join(f"{hashlib.sha256(p).hexdigest()}  ssite.tar.zst.part-a{chr(97 + i)}\n" for i, p in enumerate(parts))
    return parts, sums


def _checkout(tmp_path: Path) -> Path:
    """A stand-in checkout for gpu_proofs.sh: the repository's folders linked, its own ignored folders."""
    root = tmp_path / "checkout"
    root.mkdir()
    for name in ("benchmarks", "src", "studies"):
        (root / name).symlink_to(REPO / name)
    bin_dir = tmp_path / "bin"        # python3 = this interpreter; an nvidia-smi that finds no GPU
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed: no devices were found'\nexit 9\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    return root


def _proofs(root: Path, tmp_path: Path, *stages: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JOULEBENCH_VLLM_PYTHON",
                                                             "JOULEBENCH_SGLANG_PYTHON")}
    env.update(PATH=f"{tmp_path / 'bin'}:{env['PATH']}", OUT=str(tmp_path / "out"), JB_WORK=str(tmp_path / "work"),
               PYTHON=sys.executable, IMPORT_CHECK="0")
    env.update(env_extra)
    return subprocess.run(["bash", str(PROOFS), *stages], cwd=root, capture_output=True, text=True, env=env,
                          timeout=300)


def _bring_sglang_piece(root: Path, parts: list[bytes], sums: str, i: int) -> None:
    """What one call brings: one .sgN folder with piece i and the checksum file (the first also zstd)."""
    for old in root.glob(".sg*"):
        shutil.rmtree(old)
    folder = root / f".sg{i + 1}"
    folder.mkdir()
    (folder / f"ssite.tar.zst.part-a{chr(97 + i)}").write_bytes(parts[i])
    (folder / "ssite.sha256").write_text(sums)
    if i == 0:
        shutil.copy(shutil.which("zstd"), folder / "zstd")


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd binary")
def test_pieces_brought_in_separate_calls_are_stashed_then_installed(tmp_path):
    parts, sums = _stand_in_pieces(tmp_path)
    root = _checkout(tmp_path)
    stash = tmp_path / "work" / "sgstash"
    for i in range(len(parts)):
        _bring_sglang_piece(root, parts, sums, i)
        r = _proofs(root, tmp_path, "stash")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"ssite.tar.zst.part-a{chr(97 + i)}: OK" in r.stdout
        missing = [f"ssite.tar.zst.part-a{chr(97 + j)}" for j in range(i + 1, len(parts))]
        for name in missing:
            assert f"SGLang piece still missing: {name}" in r.stdout
        if i == 0:
            # the install refuses to start with pieces missing, and says which
            r = _proofs(root, tmp_path, "sglang-install")
            assert r.returncode == 1 and "sglang-install failed" in r.stdout
            assert "1 of 3 pieces" in r.stdout and "ssite.tar.zst.part-ab ssite.tar.zst.part-ac" in r.stdout
            assert not (tmp_path / "work" / "ssite").exists()
    assert (tmp_path / "work" / "zstd").exists()
    assert sorted(p.name for p in stash.iterdir()) == ["ssite.sha256"] + [f"ssite.tar.zst.part-a{c}" for c in "abc"]
    # the install uses the zstd the stash copied from .sg1/ before one on PATH (here a broken one)
    (tmp_path / "bin" / "zstd").write_text("#!/bin/sh\nexit 42\n")
    (tmp_path / "bin" / "zstd").chmod(0o755)
    r = _proofs(root, tmp_path, "sglang-install")
    log = (tmp_path / "out" / "sglang-install.log").read_text()
    assert r.returncode == 0, r.stdout + r.stderr + log
    assert "3 pieces checked against ssite.sha256" in log and "sglang 0.5.17" in log
    assert (root / ".venvs" / "sglang" / "bin" / "python").exists()
    # a piece of another build in the stash is refused
    (stash / "ssite.tar.zst.part-ad").write_bytes(b"old")
    r = _proofs(root, tmp_path, "sglang-install")
    assert r.returncode == 1 and "not listed in ssite.sha256" in r.stdout + r.stderr


def test_engines_stage_says_what_it_lacks_without_a_gpu(tmp_path):
    root = _checkout(tmp_path)
    r = _proofs(root, tmp_path, "engines")
    assert r.returncode == 1 and "no vllm engine environment" in r.stdout and "vllm-install" in r.stdout
    for b in ("vllm", "sglang"):
        (root / ".venvs" / b / "bin").mkdir(parents=True)
        (root / ".venvs" / b / "bin" / "python").symlink_to(sys.executable)
    r = _proofs(root, tmp_path, "engines")
    assert r.returncode == 1 and "engines: no GPU here" in r.stdout and "no devices were found" in r.stdout
    r = _proofs(root, tmp_path, "engines", "--bogus")
    assert r.returncode == 2 and "unknown option --bogus" in r.stdout


def test_gpu_proofs_header_lists_the_sglang_stages():
    head = PROOFS.read_text().split("set -u", 1)[0]
    for item in (".sgN/ssite.tar.zst.part-*", "sglang-install", "engines [--smoke]", "ENGINES_TIMEOUT",
                 "engines-gpu-<gpu>-<date>.json", "$JB_WORK/sgstash"):
        assert item in head, item


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd binary")
def test_background_run_waits_for_pieces_that_later_calls_bring_then_collects(tmp_path):
    """`bg` starts the install before its pieces are all there (a real process in its own session); the
    later calls `stash` the rest and `collect` what the background run wrote."""
    parts, sums = _stand_in_pieces(tmp_path)
    root = _checkout(tmp_path)

    _bring_sglang_piece(root, parts, sums, 0)
    r = _proofs(root, tmp_path, "stash", "bg", "sglang-install", SGLANG_PIECES_WAIT="120")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bg: started sglang-install" in r.stdout
    pid = int((tmp_path / "work" / "bg.pid").read_text())
    os.kill(pid, 0)                                  # still waiting for its pieces
    assert (tmp_path / "work" / "repo" / "benchmarks").exists()    # it runs from a snapshot
    r = _proofs(root, tmp_path, "bg", "sglang-install")
    assert r.returncode == 1 and "still going" in r.stdout          # one background run at a time
    r = _proofs(root, tmp_path, "collect")
    assert "the background run is running" in r.stdout
    for i in (1, 2):
        _bring_sglang_piece(root, parts, sums, i)
        assert _proofs(root, tmp_path, "stash").returncode == 0
    r = _proofs(root, tmp_path, "collect", "120")
    assert "the background run is finished" in r.stdout, r.stdout
    assert "sglang-install: waited" in r.stdout
    log = (tmp_path / "out" / "sglang-install.log").read_text()
    assert "3 pieces checked against ssite.sha256" in log and "sglang 0.5.17" in log
    assert (tmp_path / "work" / "repo" / ".venvs" / "sglang" / "bin" / "python").exists()
    assert (tmp_path / "out" / "bg.log").exists()


def test_vllm_pieces_are_marked_complete_when_all_are_stashed(tmp_path):
    root = _checkout(tmp_path)
    for i in range(2):
        for old in root.glob(".vp*"):
            shutil.rmtree(old)
        folder = root / f".vp{i + 1}"
        folder.mkdir()
        (folder / f"vsite.tar.zst.part-a{chr(97 + i)}").write_bytes(b"x" * 10)
        (folder / "vsite.count").write_text("2\n")
        r = _proofs(root, tmp_path, "stash")
        assert r.returncode == 0, r.stdout + r.stderr
        assert ((tmp_path / "work" / "stash" / ".complete").exists()) == (i == 1)
        assert ("vLLM pieces: all 2 stashed" in r.stdout) == (i == 1)
