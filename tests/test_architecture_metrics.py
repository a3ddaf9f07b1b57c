"""benchmarks/architecture_metrics.py counts what it claims to, on a tiny package of known shape."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from .conftest import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "architecture_metrics.py"


def _load():
    return load_benchmark("architecture_metrics")


def _package(root: Path) -> Path:
    pkg = root / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": """
            from pkg import b
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from pkg.sub import c


            class Big:
                def one(self, d):
                    return d["k"]

                def two(self, d):
                    return d.get("x", 1) + d.get(2, 0) + d[0]
            """,
        "b.py": """
            def late():
                from . import a
                import json
                return a, json
            """,
        "sub/__init__.py": "",
        "sub/c.py": "from ..sub import d\n",
        "sub/d.py": "import pkg.sub.c\n" + "x = 1\n" * 401,
    }
    for name, text in files.items():
        (pkg / name).write_text(textwrap.dedent(text).lstrip())
    long = "def long():\n" + "    y = 1\n" * 61
    (pkg / "e.py").write_text(long)
    return pkg


def test_figures_of_a_tiny_package(tmp_path):
    m = _load()
    f = m.measure(_package(tmp_path))
    assert f.top_level_modules == 4                               # __init__, a, b, e
    assert f.largest_class == (6, "pkg.a:Big")
    assert f.largest_function == (62, "pkg.e:long")
    assert f.string_key_accesses == 2                             # d["k"], d.get("x", 1); not d[0], d.get(2)
    assert f.function_level_imports == 2                          # both imports in b.late
    assert f.import_cycles == 2 and f.largest_cycle == 2          # a <-> b (relative, nested), c <-> d
    assert f.module_level_cycles == 1 and f.largest_module_level_cycle == 2    # c <-> d only
    assert f.modules_over_limit == ["pkg.sub.d"]
    assert f.functions_over_limit == ["pkg.e:long"]


def test_side_by_side_and_markdown(tmp_path):
    pkg = _package(tmp_path)
    (tmp_path / "after").mkdir()
    after = tmp_path / "after" / "pkg"
    after.mkdir()
    (after / "__init__.py").write_text("")
    md = tmp_path / "figures.md"
    r = subprocess.run([sys.executable, str(SCRIPT), "--before", str(pkg), "--after", str(after),
                        "--markdown", str(md)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "import cycles" in r.stdout
    assert "| import cycles | 2 (largest 2 modules) | 0 (largest 0 modules) |" in md.read_text()
    assert "| modules at the package top level | 4 | 1 |" in md.read_text()
