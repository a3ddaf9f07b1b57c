"""Architecture figures of a joulebench source tree, before and after, side by side.

    python benchmarks/architecture_metrics.py                       # cd44a30 vs the working tree
    python benchmarks/architecture_metrics.py --before cd44a30 --after HEAD --markdown figures.md

Each side is a path to a package folder (``src/joulebench``) or a git revision of this repository (its
``src/joulebench`` is extracted to a temporary folder). Figures, from the source alone (``ast``):

- modules at the package top level (``*.py`` directly in the package folder, ``__init__.py`` included);
- the largest class and the largest function or method (lines, qualified name);
- string-keyed dict accesses: subscripts by a string literal (``x["key"]``) and ``.get("key", ...)`` calls;
- function-level imports (import statements inside a function body);
- import cycles: strongly connected components of more than one module in the graph of the package's
  own imports (module-level and function-level; ``if TYPE_CHECKING:`` imports left out), their count and
  the size of the largest; also the same without the function-level imports;
- modules over 400 lines and functions over 60 lines.
"""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEFORE = "cd44a30"
MODULE_LINES = 400
FUNCTION_LINES = 60


@dataclass
class Figures:
    top_level_modules: int = 0
    largest_class: tuple[int, str] = (0, "-")
    largest_function: tuple[int, str] = (0, "-")
    string_key_accesses: int = 0
    function_level_imports: int = 0
    import_cycles: int = 0
    largest_cycle: int = 0
    module_level_cycles: int = 0
    largest_module_level_cycle: int = 0
    modules_over_limit: list[str] = field(default_factory=list)
    functions_over_limit: list[str] = field(default_factory=list)


def _span(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_string_key_access(node: ast.AST) -> bool:
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        first = node.args[0] if node.args else None
        return isinstance(first, ast.Constant) and isinstance(first.value, str)
    return False


class _ModuleVisitor(ast.NodeVisitor):
    """One module: its classes, functions, string-keyed accesses and imports (with their nesting)."""

    def __init__(self, module: str):
        self.module = module
        self.scope: list[str] = []
        self.in_function = 0
        self.classes: list[tuple[int, str]] = []
        self.functions: list[tuple[int, str]] = []
        self.string_keys = 0
        self.nested_imports = 0
        self.imports: list[tuple[ast.Import | ast.ImportFrom, bool]] = []     # (statement, in a function)

    def _qualname(self, name: str) -> str:
        return f"{self.module}:{'.'.join([*self.scope, name])}"

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classes.append((_span(node), self._qualname(node.name)))
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions.append((_span(node), self._qualname(node.name)))
        self.scope.append(node.name)
        self.in_function += 1
        self.generic_visit(node)
        self.in_function -= 1
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):       # typing-only imports are not run: no edge, no count
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.nested_imports += self.in_function > 0
        self.imports.append((node, self.in_function > 0))

    visit_Import = _import
    visit_ImportFrom = _import

    def generic_visit(self, node: ast.AST) -> None:
        self.string_keys += _is_string_key_access(node)
        super().generic_visit(node)


def _module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, the package folder's name as the root (``joulebench.study.plan``)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's own modules that one import statement loads (the deepest one that exists)."""
    if isinstance(node, ast.Import):
        wanted = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            anchor = parts if is_package else parts[:-1]
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        wanted = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    found = set()
    for name in wanted:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _cycles(graph: dict[str, set[str]]) -> tuple[int, int]:
    """How many import cycles (components of more than one module), and the size of the largest."""
    sizes = [len(c) for c in _strongly_connected(graph) if len(c) > 1]
    return len(sizes), max(sizes, default=0)


def measure(package_dir: Path) -> Figures:
    """The figures of one package folder."""
    package_dir = Path(package_dir)
    modules = _module_names(package_dir)
    known = set(modules)
    figures = Figures(top_level_modules=len(list(package_dir.glob("*.py"))))
    graph: dict[str, set[str]] = {name: set() for name in modules}
    module_level: dict[str, set[str]] = {name: set() for name in modules}
    classes, functions = [], []
    for name, path in modules.items():
        text = path.read_text()
        visitor = _ModuleVisitor(name)
        visitor.visit(ast.parse(text, filename=str(path)))
        classes += visitor.classes
        functions += visitor.functions
        figures.string_key_accesses += visitor.string_keys
        figures.function_level_imports += visitor.nested_imports
        for node, in_function in visitor.imports:
            targets = _targets(node, name, path.name == "__init__.py", known) - {name}
            graph[name] |= targets
            if not in_function:
                module_level[name] |= targets
        if len(text.splitlines()) > MODULE_LINES:
            figures.modules_over_limit.append(name)
    figures.largest_class = max(classes, default=(0, "-"))
    figures.largest_function = max(functions, default=(0, "-"))
    figures.functions_over_limit = sorted(q for n, q in functions if n > FUNCTION_LINES)
    figures.import_cycles, figures.largest_cycle = _cycles(graph)
    figures.module_level_cycles, figures.largest_module_level_cycle = _cycles(module_level)
    return figures


def package_dir_of(spec: str, workdir: Path) -> Path:
    """A package folder as given, else ``src/joulebench`` of a git revision extracted under ``workdir``."""
    if Path(spec).is_dir():
        return Path(spec)
    data = subprocess.run(["git", "-C", str(REPO), "archive", spec, "src/joulebench"], check=True,
                          capture_output=True).stdout
    target = workdir / spec.replace("/", "_")
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(target, filter="data")
    return target / "src" / "joulebench"


def rows(before: Figures, after: Figures) -> list[tuple[str, str, str]]:
    def largest(value: tuple[int, str]) -> str:
        return f"{value[0]} ({value[1]})"

    def cycles(f: Figures) -> str:
        return f"{f.import_cycles} (largest {f.largest_cycle} modules)"

    def module_level_cycles(f: Figures) -> str:
        return f"{f.module_level_cycles} (largest {f.largest_module_level_cycle} modules)"

    return [
        ("modules at the package top level", str(before.top_level_modules), str(after.top_level_modules)),
        ("largest class, lines", largest(before.largest_class), largest(after.largest_class)),
        ("largest function, lines", largest(before.largest_function), largest(after.largest_function)),
        ("string-keyed dict accesses", str(before.string_key_accesses), str(after.string_key_accesses)),
        ("function-level imports", str(before.function_level_imports), str(after.function_level_imports)),
        ("import cycles", cycles(before), cycles(after)),
        ("import cycles of module-level imports only", module_level_cycles(before), module_level_cycles(after)),
        (f"modules over {MODULE_LINES} lines", str(len(before.modules_over_limit)),
         str(len(after.modules_over_limit))),
        (f"functions over {FUNCTION_LINES} lines", str(len(before.functions_over_limit)),
         str(len(after.functions_over_limit))),
    ]


def markdown(table: list[tuple[str, str, str]], before: str, after: str) -> str:
    lines = [f"| figure | before ({before}) | after ({after}) |", "|---|---|---|"]
    lines += [f"| {name} | {b} | {a} |" for name, b, a in table]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help=f"package folder or git revision (default {BEFORE})")
    parser.add_argument("--after", default=str(REPO / "src" / "joulebench"),
                        help="package folder or git revision (default: this working tree)")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown to this file")
    parser.add_argument("--verbose", "-v", action="store_true", help="list the modules and functions over limit")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        before = measure(package_dir_of(args.before, Path(tmp)))
        after = measure(package_dir_of(args.after, Path(tmp)))
    table = rows(before, after)
    width = max(len(name) for name, _, _ in table)
    col = max(len(b) for _, b, _ in table) + 2
    print(f"{'':{width}}  {'before':{col}}after")
    for name, b, a in table:
        print(f"{name:{width}}  {b:{col}}{a}")
    if args.verbose:
        for label, f in (("before", before), ("after", after)):
            print(f"\n{label}: modules over {MODULE_LINES} lines: {', '.join(f.modules_over_limit) or '-'}")
            print(f"{label}: functions over {FUNCTION_LINES} lines: {', '.join(f.functions_over_limit) or '-'}")
    if args.markdown:
        args.markdown.write_text(markdown(table, args.before if not Path(args.before).is_dir() else "given",
                                          args.after if not Path(args.after).is_dir() else "working tree"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
