"""How the package's modules import each other: one way (the scripts' entry above the training code above the
helpers), no cycle, and an answer that needs no training before torch and Lightning load."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tinyvision"


def module_imports() -> dict[str, set[str]]:
    """Each tinyvision module's imports of other tinyvision modules at its top level (the imports that run when it
    is imported); ``from tinyvision.data import sources`` counts as an import of tinyvision.data.sources."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("tinyvision", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        modules[name] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tinyvision"):
                named = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
                graph[name] |= named or ({node.module} & modules.keys())
            elif isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names} & modules.keys()
        graph[name].discard(name)
    return graph


def test_the_package_s_modules_import_each_other_without_a_cycle():
    graph = module_imports()
    finished, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError(f"an import cycle: {' -> '.join(path[path.index(name):] + [name])}")
        if name in finished:
            return
        path.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        path.pop()
        finished.add(name)

    for name in sorted(graph):
        visit(name)


def test_nothing_below_the_scripts_entry_imports_it():
    """tinyvision.cli is the top: the training code, the search and the helpers word errors through
    tinyvision.console and claim folders through tinyvision.run_folders, even in imports made inside functions."""
    importers = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "tinyvision.cli" or \
                    isinstance(node, ast.Import) and any(alias.name == "tinyvision.cli" for alias in node.names):
                importers.append(str(path.relative_to(PACKAGE)))
    assert not importers


@pytest.mark.parametrize(("script", "typo", "answer"), [
    ("train", "optimzer.lr=0.1", "optimzer.lr=0.1: no key 'optimzer' in the config; did you mean optimizer.lr?"),
    ("train", "+bacth_size=5", "bacth_size=5: no such key; did you mean data.batch_size?"),  # added keys too
    ("eval", "++bacth_size=5", "bacth_size=5: no such key; did you mean batch_size?"),
])
def test_a_typo_is_answered_before_torch_and_lightning_are_imported(script, typo, answer):
    """The command line's check composes the config from YAML alone (the settings' defaults are generated files under
    conf/tinyvision/): a misspelt key is refused without loading torch, Lightning or the settings models."""
    probe = (f"import sys\nfrom tinyvision.cli import precheck\ntry:\n    precheck({script!r}, [{typo!r}])\n"
             "except SystemExit as stop:\n    print(stop.code, sorted(m for m in ('torch', 'lightning', 'tinyvision.config') "
             "if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[0] == "2 []", done.stdout + done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == f"error: {answer}"
