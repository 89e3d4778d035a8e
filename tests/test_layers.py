"""The package layout is a layering: read every module's imports (with ``ast``) and check it.

The layers, lowest first (docs/layout.md draws the same tree). A module may import its own
package and any package in a lower layer; packages that share a layer do not import each other.

    0  core                 types, errors, metrics, heap, labels
    1  io | vision | m2fp   frames in and out | image work around the network | the network
    2  parsing              the parser, its engines, the agreement gate, calibration
    3  config               the schema, built from the stages' option dataclasses
    4  pipeline             the threads that join source, stages and sinks
    5  apps | testing       the commands cli and eval, and apps.common (what every command
                            shares) | ``python -m streamer.testing.make_model``
       streamer | calibrate the public API (``streamer/__init__.py``) | the entry module of
                            ``python -m streamer.calibrate``
    6  batch | serve        the commands batch and serve (they use apps.common)

The order is the truthful one, read from the imports: parsing reads io (calibration opens
sources) and vision (crop reuse); config composes the option dataclasses of io, vision and
parsing; the pipeline reads config; the commands sit on the pipeline, and batch and serve also
on apps.common. ``apps.cli`` starts the other commands by module name (``importlib``), which is
no import of them.

No module reads another module's private names either: no ``from streamer.x import _y``, no
``x._y`` on an imported module (or ``getattr(x, "_y")``), and no ``obj._y`` where ``_y`` is a
private attribute that only a class of another module defines.
"""

from __future__ import annotations

import ast
import io
import runpy
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "streamer"

LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("io", "vision", "m2fp"),
    ("parsing",),
    ("config",),
    ("pipeline",),
    ("apps", "testing", "streamer", "calibrate"),
    ("batch", "serve"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


@dataclass(frozen=True)
class Module:
    name: str  # streamer.vision.render
    path: Path
    tree: ast.Module

    @property
    def layer(self) -> str:
        """``streamer.vision.render`` -> ``vision``; ``streamer`` -> ``streamer``."""
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 else parts[0]

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def _modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        found[name] = Module(name, path, ast.parse(path.read_text(), filename=str(path)))
    return found


MODULES = _modules()


def _layer_of(module_name: str) -> str:
    parts = module_name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _where(module: Module, node: ast.AST) -> str:
    return f"{module.path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` reads, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: Module) -> list[tuple[str, ast.AST]]:
    """Every streamer module this one imports, at any depth (lazy imports count too)."""
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            for alias in node.names:
                # `from streamer.vision import detect` imports the module streamer.vision.detect
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in MODULES else target, node))
    return [(name, node) for name, node in found
            if name == "streamer" or name.startswith("streamer.")]


def test_every_module_is_in_a_layer():
    loose = sorted({f"{m.path.relative_to(ROOT)} ({m.layer})" for m in MODULES.values()
                    if m.layer not in RANK})
    assert not loose, ("modules outside every layer; move each into a package and add it to "
                       f"LAYERS here and to docs/layout.md: {loose}")


def _layer_violations(module: Module) -> list[str]:
    wrong = []
    for target, node in _imports(module):
        layer = _layer_of(target)
        if layer == module.layer:
            continue
        if layer not in RANK or RANK[layer] >= RANK[module.layer]:
            wrong.append(f"{_where(module, node)}: {module.name} (layer {module.layer}) "
                         f"imports {target} (layer {layer})")
    return list(dict.fromkeys(wrong))  # one line per import, not per imported name


def test_lower_layers_never_import_upper_ones():
    wrong = [line for m in MODULES.values() if m.layer in RANK for line in _layer_violations(m)]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name, source, bad", [
    ("streamer.io.example", "def f():\n    from streamer.pipeline import Pipeline\n", True),
    ("streamer.io.example", "from streamer.vision import render\n", True),  # a peer
    ("streamer.core.example", "import streamer.io.sources\n", True),
    ("streamer.parsing.example", "from streamer.io.sources import open_source\n", False),
    ("streamer.io.example", "from . import buffers\n", False),
    ("streamer.io.example", "from ..config import Config\n", True),
])
def test_the_layer_check_sees(name, source, bad):
    # The check itself, on small made-up modules (lazy and relative imports included).
    path = PACKAGE.joinpath(*name.split(".")[1:]).with_suffix(".py")
    module = Module(name, path, ast.parse(source))
    assert bool(_layer_violations(module)) is bad


def test_the_layers_are_the_real_order():
    # No two layers could be merged: each one imports from the layer right below it.
    links = {(RANK[m.layer], RANK[_layer_of(t)]) for m in MODULES.values() if m.layer in RANK
             for t, _ in _imports(m) if _layer_of(t) in RANK}
    loose = [LAYERS[r] for r in range(1, len(LAYERS)) if (r, r - 1) not in links]
    assert not loose, f"layers that import nothing from the layer right below them: {loose}"


def _module_aliases(module: Module) -> dict[str, str]:
    """Local names bound to streamer modules: ``import streamer.x as m``, ``from a import mod``."""
    aliases = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("streamer"):
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:
                        aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
    return aliases


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def _owned_private_attributes(module: Module) -> set[str]:
    """Private attribute names a class of this module defines (``self._x = ...``, methods)."""
    owned = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    owned.add(item.name)
                elif isinstance(item, ast.Assign):
                    owned.update(t.id for t in item.targets if isinstance(t, ast.Name))
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    owned.add(item.target.id)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            owned.add(node.attr)
    return {name for name in owned if _private(name)}


def _private_reads(module: Module, owners: dict[str, set[str]]) -> list[str]:
    aliases = _module_aliases(module)
    mine = owners[module.name]
    found = []

    def on_module(expr: ast.AST) -> str | None:
        dotted = _dotted(expr)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        if head not in aliases:
            return None
        full = aliases[head] + (f".{rest}" if rest else "")
        return full if full in MODULES else None

    def attribute(where: ast.AST, owner: ast.AST, name: str) -> None:
        if not _private(name):
            return
        target = on_module(owner)
        if target is not None and target != module.name:
            found.append(f"{_where(module, where)}: {target}.{name}")
            return
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            return
        others = sorted(m for m, names in owners.items() if name in names and m != module.name)
        if others and name not in mine:
            found.append(f"{_where(module, where)}: .{name} of a class in {', '.join(others)}")

    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            if target.startswith("streamer") and target != module.name:
                found += [f"{_where(module, node)}: from {target} import {alias.name}"
                          for alias in node.names if _private(alias.name)]
        elif isinstance(node, ast.Attribute):
            attribute(node, node.value, node.attr)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str)):
            attribute(node, node.args[0], node.args[1].value)
    return found


def test_no_module_reads_another_modules_private_names():
    owners = {name: _owned_private_attributes(m) for name, m in MODULES.items()}
    found = [line for m in MODULES.values() for line in _private_reads(m, owners)]
    assert not found, ("private names read from another module; give the owner a public "
                       "name for it:\n" + "\n".join(found))


@pytest.mark.parametrize("source, wanted", [
    ("from streamer.core.heap import _libc\n", "from streamer.core.heap import _libc"),
    ("import streamer.core.heap as h\nh._libc()\n", "streamer.core.heap._libc"),
    ("from streamer.core import heap\ngetattr(heap, '_libc')\n", "streamer.core.heap._libc"),
    ("def f(p):\n    return p._buffers\n", "._buffers of a class in "),
])
def test_the_private_name_check_sees(source, wanted):
    # The check itself, on small made-up modules (so that it cannot pass by seeing nothing).
    module = Module("streamer.apps.example", PACKAGE / "apps" / "example.py", ast.parse(source))
    owners = {name: _owned_private_attributes(m) for name, m in MODULES.items()}
    owners[module.name] = set()
    assert "_buffers" in owners["streamer.pipeline"]
    assert any(wanted in line for line in _private_reads(module, owners))


def test_commands_kept_their_module_names(monkeypatch):
    # The moves changed no command: `python -m streamer.calibrate` and
    # `python -m streamer.testing.make_model` still start, and cli's subcommands import.
    import importlib

    from streamer.apps.cli import SUBCOMMANDS

    for command, name in SUBCOMMANDS.items():
        assert callable(importlib.import_module(name).main), command
    for name in ("streamer.calibrate", "streamer.testing.make_model"):
        monkeypatch.setattr(sys, "argv", [name, "--help"])
        out = io.StringIO()
        with redirect_stdout(out), pytest.raises(SystemExit) as stop:
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        assert stop.value.code == 0
        assert out.getvalue().startswith(f"usage: python -m {name} "), out.getvalue()[:200]
