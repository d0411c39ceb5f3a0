"""The package's layers: features below training below serving, no circles, short modules.

Read from the source with `ast` (nothing is imported): every `import` of a churnlens
module, at module level or inside a function, counts.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import churnlens

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"features": "churnlens.features", "training": "churnlens.training",
            "serving": "churnlens.serving", "cli": "churnlens.cli", "churnlens": "churnlens"}
MAX_LINES = 400


@functools.cache
def modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package (the repository's folders)."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            out[name] = path
    return out


def imports(path: Path, name: str, top_level_only: bool = False) -> set[str]:
    """The churnlens modules PATH imports (relative imports resolved against NAME).

    `from PACKAGE import MODULE` is an edge to MODULE (Python imports a sub-module of a
    package being initialised without a circle); `from MODULE import NAME` one to MODULE.
    """
    known = modules()
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            subs = {f"{base}.{a.name}" for a in node.names} & set(known)
            found |= subs if subs else {base}
    return {m for m in found if m == "churnlens" or m.startswith("churnlens.")}


def test_the_repository_is_the_installed_package():
    assert Path(churnlens.__file__).resolve().parent == ROOT / "churnlens"


def test_features_and_training_never_import_serving_or_the_cli():
    found = {}
    for name, path in modules().items():
        if name.startswith(("churnlens.features", "churnlens.training")):
            upward = sorted(m for m in imports(path, name)
                            if m.startswith(("churnlens.serving", "churnlens.cli")))
            if upward:
                found[name] = upward
    assert found == {}, f"imports from a lower layer into a higher one: {found}"


def test_features_never_import_training():
    found = {name: sorted(m for m in imports(path, name) if m.startswith("churnlens.training"))
             for name, path in modules().items() if name.startswith("churnlens.features")}
    assert {k: v for k, v in found.items() if v} == {}


def test_no_import_circle_at_module_level():
    known = modules()
    graph = {name: {m for m in imports(path, name, top_level_only=True) if m in known}
             - {name} for name, path in known.items()}
    # A package imports its own sub-modules' names on purpose; only module-to-module edges.
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*trail[trail.index(nxt):], nxt] if nxt in trail
                               else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_no_module_is_longer_than_400_lines():
    long = {str(path.relative_to(ROOT)): n for path in modules().values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
