"""The layers' rules, checked on the source with `ast` (every import, at any depth: inside functions
too), so a broken rule names each offending `file:line: import`.

Each rule is a table below; the folder docstrings say the same in words ("May import: ..."), and
`test_docstrings_state_the_table` keeps the two in step: change a rule in both places or neither.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pneumo_ray"

# Which other layers of pneumo_ray a layer may import (it may always import itself). In the order
# of the flow: nothing imports a layer to its right, except where this table says so.
MAY_IMPORT: dict[str, set[str]] = {
    "config": set(),
    "storage": {"config"},
    "data": {"config", "storage"},
    "analysis": {"config"},
    "train": {"config", "storage", "data", "analysis"},
    "distributed": {"config", "storage", "data", "analysis", "train"},
    "report": {"config", "storage", "data", "analysis", "train"},
    "deploy": {"config"},
}
LAYERS = set(MAY_IMPORT)
LIBRARY = LAYERS | {"pneumo_ray"}  # "pneumo_ray": the package's own __init__.py
PLACES = LIBRARY | {"study"}  # study/*.py: the command lines

# Packages that some places must not import (a package also stands for its submodules: "ray" is
# "ray.tune" too): package -> (places, why).
NOT_IMPORTED_BY: dict[str, tuple[set[str], str]] = {
    "ray": (PLACES - {"distributed"}, "distributed/ is the only folder that imports Ray"),
    "torch": ({"config", "data", "analysis"}, "no model code below train/: data and metrics work without torch"),
    "torchvision": ({"config", "data", "analysis"}, "no model code below train/"),
    "study": (LIBRARY, "the command lines sit on top of the library, never under it"),
    "argparse": (LIBRARY, "argparse stays in study/*.py; the library takes keyword arguments and dataclasses"),
}
# besides its own modules and the layers it may import: config (every layer and the CLIs read it) and
# deploy (it runs on an air-gapped target before anything is installed there)
STANDARD_LIBRARY_ONLY = {"config", "deploy"}


# --- reading the source ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    text: str
    targets: tuple[str, ...]  # dotted names it binds: `from a.b import c` → ("a.b", "a.b.c")

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.text}"


def modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def place_of(path: Path) -> str:
    """Where a module sits: a layer name, "study" (the command lines) or "pneumo_ray" (the package's own)."""
    rel = path.relative_to(ROOT).parts
    if rel[0] == "study":
        return "study"
    return rel[1] if len(rel) > 2 else "pneumo_ray"


def _package(path: Path) -> list[str]:
    """The package a relative import in `path` starts from: its folder, as dotted parts."""
    return list(path.relative_to(ROOT).parent.parts)


def _dynamic(node: ast.Call) -> str | None:
    """The module of `importlib.import_module("x")` / `__import__("x")` with a literal name."""
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
        return str(node.args[0].value)
    return None


def imports(path: Path) -> list[Import]:
    """Every import statement of a module, wherever it stands, plus literal dynamic imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = tuple(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package(path)
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            targets = (base, *(f"{base}.{a.name}" for a in node.names if a.name != "*"))
        elif isinstance(node, ast.Call) and (module := _dynamic(node)):
            targets = (module,)
        else:
            continue
        found.append(Import(path, node.lineno, ast.unparse(node), targets))
    return found


def imports_package(imp: Import, package: str) -> bool:
    return any(t == package or t.startswith(package + ".") for t in imp.targets)


def layers_imported(imp: Import) -> set[str]:
    return {t.split(".")[1] for t in imp.targets if t.startswith("pneumo_ray.")} & LAYERS


def fail_on(offending: list, rule: str) -> None:
    """Fail with one `file:line: import` per offending import, under the rule it breaks."""
    if offending:
        pytest.fail(f"{rule}:\n" + "\n".join(f"  {o}" for o in offending), pytrace=False)


LIBRARY_MODULES = modules(PKG)
CLI_MODULES = modules(ROOT / "study")
ALL_IMPORTS = [imp for path in LIBRARY_MODULES + CLI_MODULES for imp in imports(path)]


# --- the folders --------------------------------------------------------------------------------


def test_every_module_belongs_to_a_layer():
    """A new folder (or a module beside the layers) needs its row in MAY_IMPORT first."""
    strays = [
        p.relative_to(ROOT)
        for p in LIBRARY_MODULES
        if place_of(p) not in LIBRARY or (place_of(p) == "pneumo_ray" and p.name != "__init__.py")
    ]
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    fail_on(strays, "modules outside the layer folders (give the folder its row in MAY_IMPORT)")
    assert folders == LAYERS, f"layer folders {sorted(folders)} != MAY_IMPORT's {sorted(LAYERS)}"


def _stated(layer: str) -> set[str]:
    """The layers named by the "May import: ..." sentence of the layer's __init__ docstring."""
    doc = ast.get_docstring(ast.parse((PKG / layer / "__init__.py").read_text())) or ""
    m = re.search(r"May import:\s*(.*?)\.(?:\s|$)", doc, re.DOTALL)
    assert m, f"pneumo_ray/{layer}/__init__.py: no 'May import: ...' sentence in its docstring"
    named = set(re.findall(r"\b(" + "|".join(sorted(LAYERS)) + r")\b", m.group(1))) - {layer}
    return (LAYERS - named - {layer}) if re.search(r"\bevery layer but\b", m.group(1)) else named


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_docstrings_state_the_table(layer):
    assert _stated(layer) == MAY_IMPORT[layer], (
        f"pneumo_ray/{layer}/__init__.py says it may import {sorted(_stated(layer))}, "
        f"MAY_IMPORT says {sorted(MAY_IMPORT[layer])}"
    )
    top = ast.get_docstring(ast.parse((PKG / "__init__.py").read_text())) or ""
    assert re.search(rf"^\s*{layer}/\s", top, re.MULTILINE), f"pneumo_ray/__init__.py does not list {layer}/"


# --- the import rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_imports_only_the_layers_it_may(layer):
    allowed = MAY_IMPORT[layer] | {layer}
    offending = [imp for imp in ALL_IMPORTS if place_of(imp.path) == layer and layers_imported(imp) - allowed]
    fail_on(offending, f"{layer}/ may import {sorted(MAY_IMPORT[layer]) or 'no other layer'}")


@pytest.mark.parametrize("package", sorted(NOT_IMPORTED_BY))
def test_package_stays_where_it_belongs(package):
    places, why = NOT_IMPORTED_BY[package]
    offending = [imp for imp in ALL_IMPORTS if place_of(imp.path) in places and imports_package(imp, package)]
    fail_on(offending, f"{package} imported where it must not be ({why})")


@pytest.mark.parametrize("layer", sorted(STANDARD_LIBRARY_ONLY))
def test_standard_library_only(layer):
    def foreign(imp: Import) -> bool:
        return any(
            t.split(".")[0] not in sys.stdlib_module_names
            and not any((t + ".").startswith(f"pneumo_ray.{ok}.") for ok in {layer, *MAY_IMPORT[layer]})
            for t in imp.targets
            if t
        )

    offending = [imp for imp in ALL_IMPORTS if place_of(imp.path) == layer and foreign(imp)]
    fail_on(offending, f"{layer}/ imports the standard library and itself only")


def _private(name: str) -> bool:
    return any(part.startswith("_") and not (part.startswith("__") and part.endswith("__")) for part in name.split("."))


def test_command_lines_use_public_names_only():
    """study/*.py are thin: argparse and calls into pneumo_ray's public modules and names, never a
    `_private` module, function or attribute (that would be library code living in a script)."""
    offending = []
    for path in CLI_MODULES:
        tree = ast.parse(path.read_text(), str(path))
        for imp in imports(path):
            if any(_private(t) for t in imp.targets if t.split(".")[0] == "pneumo_ray"):
                offending.append(str(imp))
        bound = set()  # names that pneumo_ray's imports bind in the script
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bound |= {a.asname or "pneumo_ray" for a in node.names if a.name.split(".")[0] == "pneumo_ray"}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pneumo_ray":
                bound |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in bound:
                    offending.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    fail_on(offending, "private names of pneumo_ray used by the command lines")


# --- type hints -----------------------------------------------------------------------------------

# Files whose public functions are still untyped because another change owns them: their misses
# are listed and the layer's test xfails; a miss anywhere else fails it. Delete a row when its
# change lands (the test then holds the whole layer to the rule).
UNTYPED_FOR_NOW: dict[str, str] = {}  # every public function of the library is typed: keep it empty
CALLED_DUNDERS = {"__init__", "__call__"}  # their parameters are the public signature of the class


def _public(name: str) -> bool:
    return not name.startswith("_") or name in CALLED_DUNDERS


def _defs(body: list[ast.stmt], prefix: str = "") -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, bool]]:
    """(qualified name, def, is a method) of the public functions and methods of public classes."""
    out = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(node.name):
            out.append((prefix + node.name, node, bool(prefix)))
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            out += _defs(node.body, f"{prefix}{node.name}.")
        elif isinstance(node, (ast.If, ast.Try)):
            out += _defs(node.body + node.orelse, prefix)
    return out


def untyped(path: Path) -> list[str]:
    """`file:line: name(unannotated parameters) -> ?` for each public function missing a hint."""
    misses = []
    for name, fn, method in _defs(ast.parse(path.read_text(), str(path)).body):
        a = fn.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, [a.vararg, a.kwarg])]
        static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
        if method and not static:
            params = params[1:]  # self / cls
        bare = [p.arg for p in params if p.annotation is None]
        no_return = fn.returns is None and fn.name != "__init__"
        if bare or no_return:
            misses.append(
                f"{path.relative_to(ROOT)}:{fn.lineno}: {name}({', '.join(bare)})" + (" -> ?" if no_return else "")
            )
    return misses


def _left_for_now(miss: str) -> str | None:
    return next((why for prefix, why in UNTYPED_FOR_NOW.items() if miss.startswith(prefix)), None)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_public_functions_are_typed(layer):
    """Every public function (and __init__/__call__ of a public class) annotates each parameter and
    its return, so a reader sees what it takes and gives without reading its body."""
    misses = [m for p in LIBRARY_MODULES if place_of(p) == layer for m in untyped(p)]
    blocking = [m for m in misses if _left_for_now(m) is None]
    fail_on(blocking, "public functions without type hints")
    if misses:
        reasons = sorted({_left_for_now(m) for m in misses})
        pytest.xfail("; ".join(reasons) + ":\n" + "\n".join(f"  {m}" for m in misses))
