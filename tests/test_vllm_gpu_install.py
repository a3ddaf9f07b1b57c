"""scripts/vllm-gpu-install.sh: pieces joined, checked, unpacked, and an engine environment that imports them."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "vllm-gpu-install.sh"

pytestmark = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd not installed")


def _pieces(tmp_path: Path, size: int = 200) -> list[Path]:
    site = tmp_path / "site" / "fakeengine"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("__version__ = '9.9-test'\n")
    tar = tmp_path / "v.tar"
    with tarfile.open(tar, "w") as t:
        t.add(site, arcname="fakeengine")
    packed = tmp_path / "v.tar.zst"
    subprocess.run(["zstd", "-q", "--long=27", str(tar), "-o", str(packed)], check=True)
    data = packed.read_bytes()
    out = tmp_path / "pieces"
    out.mkdir()
    pieces = []
    for i in range(0, len(data), size):
        p = out / f"vsite.tar.zst.part-a{chr(ord('a') + i // size)}"
        p.write_bytes(data[i:i + size])
        pieces.append(p)
    (out / "vsite.sha256").write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                                              for p in pieces))
    assert len(pieces) >= 2
    return pieces


def _install(pieces, tmp_path, *extra):
    # pieces given out of order: the script joins them in name order
    return subprocess.run(["bash", str(SCRIPT), *map(str, reversed(pieces)), "--site", str(tmp_path / "vsite"),
                           "--venv", str(tmp_path / "venv"), "--python", sys.executable, "--no-check", *extra],
                          capture_output=True, text=True, timeout=120)


def test_install_makes_an_environment_that_imports_the_pieces_and_joulebench(tmp_path):
    pieces = _pieces(tmp_path)
    r = _install(pieces, tmp_path)
    assert r.returncode == 0, r.stderr
    python = r.stdout.strip().splitlines()[-1]
    assert python == str(tmp_path / "venv" / "bin" / "python")
    out = subprocess.run([python, "-c", "import fakeengine, joulebench, os; "
                                        "print(fakeengine.__version__, os.path.dirname(joulebench.__file__))"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "9.9-test"
    assert Path(out[1]) == REPO / "src" / "joulebench"


def test_a_corrupted_piece_is_refused(tmp_path):
    pieces = _pieces(tmp_path)
    pieces[1].write_bytes(b"x" + pieces[1].read_bytes()[1:])
    r = _install(pieces, tmp_path)
    assert r.returncode == 1
    assert "checksum mismatch" in r.stderr and pieces[1].name in r.stderr
    assert not (tmp_path / "venv").exists()


def test_an_image_python_that_is_itself_a_venv_keeps_its_packages(tmp_path):
    """The GPU image's Python is a venv (its torch lives in that venv's site-packages). A venv made from it
    sees the base interpreter's packages only, so the engine environment must add the parent's folders."""
    parent = tmp_path / "imagevenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(parent)], check=True)
    parent_py = parent / "bin" / "python"
    purelib = subprocess.run([str(parent_py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "imagepkg.py").write_text("WHERE = 'image venv'\n")
    pieces = _pieces(tmp_path)
    r = subprocess.run(["bash", str(SCRIPT), *map(str, pieces), "--site", str(tmp_path / "vsite"),
                        "--venv", str(tmp_path / "venv"), "--python", str(parent_py), "--no-check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    python = r.stdout.strip().splitlines()[-1]
    out = subprocess.run([python, "-c", "import imagepkg, fakeengine, sys; print(imagepkg.WHERE, '|', "
                                        "fakeengine.__version__, '|', sys.prefix)"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    where, version, prefix = (x.strip() for x in out.stdout.split("|"))
    assert (where, version) == ("image venv", "9.9-test")
    assert Path(prefix) == tmp_path / "venv"      # the engine environment, not the image's venv itself
