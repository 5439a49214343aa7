"""The dependency direction holds: the package's modules stand in layers (LAYERS, bottom first) and import only
from their own layer or below; library modules never import a command module (train, evaluate, predict, export,
report, ...), commands never import each other, only cli dispatches to them, and the imports have no cycle. Read
from the source, so an import hidden inside a function counts like any other."""
import ast
from pathlib import Path

from mnist_dist import cli

PACKAGE = Path(__file__).resolve().parents[2] / "mnist_dist"
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


# Bottom first. A module imports from its own layer or a lower one; a new module must be given a layer here.
LAYERS = {
    "foundations": {"errors", "atomic", "procs", "provenance", "metrics", "models", "eager", "images"},
    "config": {"config"},
    "files and formats": {"rundir", "lock", "idx_cache", "idx", "data", "checkpoint", "artifact", "sweep_file"},
    "processes": {"runtime", "shm_allreduce", "stopping", "inference"},
    "outputs": {"plots", "run_report", "tracking", "hub"},
    "commands": COMMANDS,
    "entry points": {"cli", "__main__"},
}


def layer_violations(imports: dict[str, set[str]], layers: dict[str, set[str]]) -> list[str]:
    """Every module without a layer, and every import of a module from a higher layer, as one line each."""
    rank = {m: i for i, members in enumerate(layers.values()) for m in members}
    names = list(layers)
    bad = [f"{m} has no layer in LAYERS" for m in imports if m not in rank]
    for m, deps in imports.items():
        for dep in sorted(deps):
            if m in rank and dep in rank and rank[dep] > rank[m]:
                bad.append(f"{m} ({names[rank[m]]}) imports {dep} ({names[rank[dep]]}), a higher layer")
    return bad


def test_every_module_imports_only_its_own_layer_or_below():
    assert layer_violations(graph(PACKAGE), LAYERS) == []


def test_the_layer_check_catches_what_it_should():
    layers = {"low": {"atomic"}, "high": {"plots"}}
    assert layer_violations({"atomic": {"plots"}, "plots": {"atomic"}, "new": set()}, layers) == [
        "new has no layer in LAYERS",
        "atomic (low) imports plots (high), a higher layer",
    ]


def test_models_are_plain_modules():
    """STYLE habit 1: models.py imports no accelerate and no torch.distributed."""
    source = (PACKAGE / "models.py").read_text()
    tree = ast.parse(source)
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {n for n in names if n.startswith(("accelerate", "torch.distributed", "mnist_dist"))}


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

TESTS = Path(__file__).resolve().parents[1]  # tests/: unit/ and integration/


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
    files = sorted(TESTS.glob("*/test_*.py"))
    assert len(files) > 30  # both folders are read
    found = {p.name: sorted(imported_test_modules(p.read_text())) for p in files}
    assert {name: imported for name, imported in found.items() if imported} == {}


def test_unit_and_integration_tests_are_apart():
    """Every test file is in unit/ (in-process; tests/unit/conftest.py refuses to start a process) or integration/
    (the real entry points in subprocesses), and no file name is in both."""
    assert sorted(p.name for p in TESTS.glob("test_*.py")) == []
    unit, integration = ({p.name for p in (TESTS / d).glob("test_*.py")} for d in ("unit", "integration"))
    assert unit and integration and not unit & integration


def test_the_test_import_check_catches_what_it_should():
    """The import this suite had (test_multinode from test_slurm, test_sweep's inside a function) is found; helpers,
    conftest and slurm_cluster are not test modules."""
    before = "from test_slurm import ENDED\ndef f():\n    from test_resume import popen_train\n    import test_x.y\n"
    assert imported_test_modules(before) == {"test_slurm", "test_resume", "test_x"}
    assert imported_test_modules("from helpers import run_cli\nimport conftest\nfrom slurm_cluster import X\n") == set()
