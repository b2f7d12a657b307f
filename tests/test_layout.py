"""The package's shape: no import cycles between its modules, no sys.modules tricks, a thin command line."""
import ast
from pathlib import Path
from typing import Dict, List, Set

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> Dict[str, Set[str]]:
    """patnet module -> the patnet modules it imports (at any depth in the file, lazy imports included)."""
    files = {_module_name(p): p for p in (SRC / "patnet").rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in files and t != name}
        graph[name] = deps
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules (empty if none). A package importing its own submodules is not one."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(n: str) -> List[str]:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if d.startswith(n + "."):
                continue
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        state[n] = 2
        stack.pop()
        return []

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return []


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 10 and "patnet.models.patnet" in graph["patnet.weights"]  # the walk sees real edges
    assert find_cycle(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"p": {"p.x"}, "p.x": set()}) == []


def test_no_sys_modules_tricks_and_a_thin_command_line():
    for path in (SRC / "patnet").rglob("*.py"):
        assert "sys.modules" not in path.read_text(), path
    assert not (SRC / "patnet_cli.py").exists()
    assert len((SRC / "patnet" / "cli.py").read_text().splitlines()) <= 300


def _top_level_imports(path: Path) -> Set[str]:
    names: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_installed_package_holds_the_library_only():
    # Benchmarks, plots of results and the peers' data live in benchmarks/ (not installed), as timm keeps its
    # benchmark.py outside timm: the package ships only modules, imports neither folder, and plots nothing.
    assert [p for p in (SRC / "patnet").rglob("*") if p.is_file() and p.suffix != ".py"
            and "__pycache__" not in p.parts] == []
    for path in (SRC / "patnet").rglob("*.py"):
        assert not _top_level_imports(path) & {"benchmarks", "experiments", "matplotlib"}, path


def test_intra_package_imports_are_at_module_level():
    # Lazy imports hid the cycles this package once had; only optional third-party packages are imported lazily.
    lazy = []
    for path in (SRC / "patnet").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lazy += [f"{_module_name(path)}:{sub.lineno}" for sub in ast.walk(node)
                         if isinstance(sub, ast.ImportFrom) and (sub.level or (sub.module or "").startswith("patnet"))]
    assert lazy == []


def test_no_undefined_names_or_unused_imports():
    """pyflakes' checks (ruff's F rules) over the library, tests, benchmarks and experiments: an undefined name in
    a script no test runs end to end (experiments/elpv_prepare.py's ``defaultdict``) once crashed it mid-way."""
    import subprocess
    import sys

    root = SRC.parent
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F", "--output-format", "concise",
                           "--no-cache", "src", "tests", "benchmarks", "experiments"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-500:]
