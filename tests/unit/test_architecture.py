"""The layout shows the architecture, and the dependency direction holds: the package's folders are its layers
(LAYERS, bottom first) and a module imports only from its own layer or below; library modules never import a
command module (mnist_dist/commands/), commands never import each other, only cli dispatches to them, and the
imports have no cycle. Read from the source, so an import hidden inside a function counts like any other."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mnist_dist"


def modules(package: Path) -> dict[str, Path]:
    """Every module by its name under mnist_dist ("train.loop", "cli"); a folder's __init__ is the folder's name."""
    out = {}
    for p in sorted(package.rglob("*.py")):
        parts = p.relative_to(package).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            out[name] = p
    return out


def package_imports(path: Path, known: set[str]) -> set[str]:
    """The mnist_dist modules a file imports, at any depth of its code (`from mnist_dist.data import idx` is
    data.idx, `from mnist_dist.config import ConfigError` is config)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix("mnist_dist.") for a in node.names if a.name.startswith("mnist_dist.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mnist_dist" or node.module.startswith("mnist_dist."):
                base = node.module.removeprefix("mnist_dist").removeprefix(".")
                for a in node.names:
                    name = f"{base}.{a.name}".strip(".")
                    found.add(name if name in known else base)
    return found - {""}


def graph(package: Path) -> dict[str, set[str]]:
    # A module's own name is left out (a folder's __init__ naming its own modules is no cycle).
    found = modules(package)
    return {m: package_imports(p, set(found)) - {m} for m, p in found.items()}


COMMANDS = {f"commands.{p.stem}" for p in (PACKAGE / "commands").glob("*.py") if p.stem != "__init__"}


def violations(imports: dict[str, set[str]]) -> list[str]:
    """Every import against the direction, and every cycle, as one line each."""
    bad = [f"{m} imports command {c}" for m, deps in imports.items() if m != "cli" for c in sorted(deps & COMMANDS)]
    done, path = set(), []

    def visit(m):
        if m in path:
            bad.append("cycle: " + " -> ".join(path[path.index(m):] + [m]))
            return
        if m in done or m not in imports:
            return
        path.append(m)
        for dep in sorted(imports[m]):
            if not m.startswith(dep + "."):  # a module imports its own folder's __init__ first: no cycle
                visit(dep)
        path.pop()
        done.add(m)
    for m in imports:
        visit(m)
    return bad


# Bottom first: each folder (or top-level module) is a layer. A module imports from its own layer or a lower one;
# a new folder or top-level module must be given a layer here.
LAYERS = {
    "foundations": {"errors", "models"},
    "config": {"config"},
    "data": {"data"},
    "metrics": {"metrics"},
    "the run folder": {"run"},
    "outputs": {"outputs"},
    "training": {"train"},
    "commands": {"commands"},
    "entry points": {"cli", "__main__", "__init__"},
}


def layer_violations(imports: dict[str, set[str]], layers: dict[str, set[str]]) -> list[str]:
    """Every module without a layer, and every import of a module from a higher layer, as one line each (a
    module's layer is its folder's, or its own at the top)."""
    rank = {m: i for i, members in enumerate(layers.values()) for m in members}
    names = list(layers)
    top = {m: m.split(".")[0] for m in imports}
    bad = [f"{m} has no layer in LAYERS" for m in imports if top[m] not in rank]
    for m, deps in imports.items():
        for dep in sorted(deps):
            low, high = rank.get(top[m]), rank.get(dep.split(".")[0])
            if low is not None and high is not None and high > low:
                bad.append(f"{m} ({names[low]}) imports {dep} ({names[high]}), a higher layer")
    return bad


def test_every_module_imports_only_its_own_layer_or_below():
    assert layer_violations(graph(PACKAGE), LAYERS) == []


def test_the_layout_is_the_layers():
    """Every folder of the package is one layer, and every layer but the first and last is a folder."""
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set().union(*list(LAYERS.values())[1:-1]) - {"metrics"}


def test_the_layer_check_catches_what_it_should():
    layers = {"low": {"run"}, "high": {"outputs"}}
    graph_ = {"run.atomic": {"outputs.plots"}, "outputs.plots": {"run.atomic"}, "new": set()}
    assert layer_violations(graph_, layers) == [
        "new has no layer in LAYERS",
        "run.atomic (low) imports outputs.plots (high), a higher layer",
    ]


def test_models_are_plain_modules():
    """STYLE habit 1: models.py imports no accelerate and no torch.distributed."""
    source = (PACKAGE / "models.py").read_text()
    tree = ast.parse(source)
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {n for n in names if n.startswith(("accelerate", "torch.distributed", "mnist_dist"))}


def test_commands_are_the_modules_cli_dispatches_to():
    names = {c.removeprefix("commands.") for c in COMMANDS}
    assert names == {"train", "evaluate", "predict", "export", "push", "report", "recipes", "sweep", "compare",
                     "convert", "download", "scripts", "demo"}
    assert COMMANDS == graph(PACKAGE)["cli"] & COMMANDS  # cli imports every one of them, plainly


def test_no_library_module_imports_a_command_and_there_is_no_cycle():
    assert violations(graph(PACKAGE)) == []


def test_the_check_catches_what_it_should():
    """The checker itself can fail: the circle this package once had (evaluate -> train -> tracking -> report
    -> evaluate, hidden by function-level imports) and a plain cycle between library modules."""
    before = {"commands.evaluate": {"commands.train"}, "commands.train": {"outputs.tracking"},
              "outputs.tracking": {"commands.report"}, "commands.report": {"commands.evaluate"}}
    found = violations(before)
    assert {"outputs.tracking imports command commands.report", "commands.report imports command commands.evaluate",
            "commands.evaluate imports command commands.train"} <= set(found)
    assert any(v.startswith("cycle: ") for v in found)
    assert violations({"outputs.plots": {"data.sources"}, "data.sources": {"outputs.plots"}}) == [
        "cycle: outputs.plots -> data.sources -> outputs.plots"
    ]


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

