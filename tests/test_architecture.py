"""The dependency direction holds: library modules (config, data, models, metrics, checkpoint, tracking,
inference, rundir, runtime, plots, ...) never import a command module (train, evaluate, predict, export, report),
commands never import each other, only cli dispatches to them, and the package's imports have no cycle. Read
from the source, so an import hidden inside a function counts like any other."""
import ast
from pathlib import Path

from mnist_dist import cli

PACKAGE = Path(__file__).resolve().parents[1] / "mnist_dist"
COMMANDS = {module.rsplit(".", 1)[1] for module, _ in cli.COMMANDS.values()}


def package_imports(path: Path) -> set[str]:
    """The mnist_dist modules a file imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mnist_dist.")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "mnist_dist":
                found |= {a.name for a in node.names}
            elif node.module.startswith("mnist_dist."):
                found.add(node.module.split(".")[1])
    return found


def graph(package: Path) -> dict[str, set[str]]:
    # A module's own name is left out: config's `python -m` block imports the package's copy of itself, no cycle.
    return {p.stem: package_imports(p) - {p.stem} for p in sorted(package.glob("*.py")) if p.stem != "__init__"}


def violations(imports: dict[str, set[str]]) -> list[str]:
    """Every import against the direction, and every cycle, as one line each."""
    bad = [f"{m} imports command {c}" for m, deps in imports.items() if m != "cli" for c in deps & COMMANDS]
    done, path = set(), []

    def visit(m):
        if m in path:
            bad.append("cycle: " + " -> ".join(path[path.index(m):] + [m]))
            return
        if m in done or m not in imports:
            return
        path.append(m)
        for dep in sorted(imports[m]):
            visit(dep)
        path.pop()
        done.add(m)
    for m in imports:
        visit(m)
    return bad


def test_commands_are_the_modules_cli_dispatches_to():
    assert COMMANDS == {"train", "evaluate", "predict", "export", "push", "report", "recipes", "sweep", "compare",
                        "convert", "download", "scripts"}
    assert COMMANDS <= set(graph(PACKAGE))


def test_no_library_module_imports_a_command_and_there_is_no_cycle():
    assert violations(graph(PACKAGE)) == []


def test_the_check_catches_what_it_should():
    """The checker itself can fail: the circle this package had before (evaluate -> train -> tracking -> report
    -> evaluate, hidden by function-level imports) and a plain cycle between library modules."""
    before = {"evaluate": {"train"}, "train": {"tracking"}, "tracking": {"report"}, "report": {"evaluate"}}
    found = violations(before)
    assert {"tracking imports command report", "report imports command evaluate",
            "evaluate imports command train"} <= set(found)
    assert any(v.startswith("cycle: ") for v in found)
    assert violations({"plots": {"data"}, "data": {"plots"}}) == ["cycle: plots -> data -> plots"]


# ----------------------------------------------------------------------------- tests as a codebase

TESTS = Path(__file__).resolve().parent


def imported_test_modules(source: str) -> set[str]:
    """The test_* modules a test file's source imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return {name for name in found if name.startswith("test_")}


def test_no_test_module_imports_another():
    """What tests share lives in helpers.py (or a conftest fixture), not in another test file."""
    found = {p.name: sorted(imported_test_modules(p.read_text())) for p in sorted(TESTS.glob("test_*.py"))}
    assert {name: imported for name, imported in found.items() if imported} == {}


def test_the_test_import_check_catches_what_it_should():
    """The import this suite had (test_multinode from test_slurm, test_sweep's inside a function) is found; helpers,
    conftest and slurm_cluster are not test modules."""
    before = "from test_slurm import ENDED\ndef f():\n    from test_resume import popen_train\n    import test_x.y\n"
    assert imported_test_modules(before) == {"test_slurm", "test_resume", "test_x"}
    assert imported_test_modules("from helpers import run_cli\nimport conftest\nfrom slurm_cluster import X\n") == set()
