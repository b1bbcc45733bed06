"""Layers that import downward only (M08): no import circle among ``modules/`` and no module over 600 lines, and
the rules that keep the lower layers below the upper ones.

Imports are read from the source (``ast``), inside functions too: a late import still ties two modules together,
it only hides the tie from the interpreter until the function runs.
"""

from __future__ import annotations

import ast
import os
from functools import cache

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_LINES = 600

# What the options layer must never reach: model code and what loads it.
MODEL_MODULES = {"modules.sd_models", "modules.sd_vae", "modules.sd_models_loader", "modules.sd_models_writer",
                 "modules.checkpoint_info", "modules.model_options", "modules.devices", "modules.processing",
                 "modules.sd_pipeline", "modules.sd_samplers"}
OPTIONS_LAYER = ("modules.option_info", "modules.options", "modules.settings_file", "modules.shared_options")


@cache
def module_files() -> dict[str, str]:
    """``{dotted name: path}`` of every module under ``modules/`` (a package by its ``__init__``)."""
    found = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "modules")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def _known(name: str) -> str | None:
    """The module of ``modules/`` that importing ``name`` loads (a name inside a module is that module)."""
    mods = module_files()
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports_of(module: str) -> frozenset[str]:
    """The modules of ``modules/`` that ``module`` imports anywhere in its source."""
    path = module_files()[module]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_known(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(_known(candidate) if candidate in module_files() else _known(base))
    return frozenset(found - {None, module})


def reachable(module: str) -> set[str]:
    """Every module that importing ``module`` can end up importing, itself excluded."""
    seen, todo = set(), [module]
    while todo:
        for dep in imports_of(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen - {module}


def strongly_connected() -> list[list[str]]:
    """Groups of modules that import each other, directly or round a circle (Tarjan), each of two or more."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(imports_of(v)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(module_files()):
        if module not in index:
            visit(module)
    return groups


def a_circle(group: list[str]) -> list[str]:
    """One import circle through the first module of ``group``: ``[a, b, ..., a]``."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    todo = [start]
    while todo:  # breadth first: the shortest way back to the start
        v = todo.pop(0)
        for w in sorted(imports_of(v) & members):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    raise AssertionError(f"{group} is not a circle")


def test_no_import_circle_among_modules():
    circles = [" -> ".join(a_circle(g)) + f"  (all of: {', '.join(g)})" for g in strongly_connected()]
    assert not circles, "import circles among modules/:\n" + "\n".join(circles)


def test_the_checker_sees_imports_inside_functions_and_circles(tmp_path, monkeypatch):
    (tmp_path / "modules" / "pkg").mkdir(parents=True)
    (tmp_path / "modules" / "a.py").write_text("def f():\n    from modules import b\n")
    (tmp_path / "modules" / "b.py").write_text("from modules.pkg import c\n")
    (tmp_path / "modules" / "pkg" / "__init__.py").write_text("")
    (tmp_path / "modules" / "pkg" / "c.py").write_text("from .. import a\nimport os\n")
    monkeypatch.setitem(globals(), "ROOT", str(tmp_path))
    for cached in (module_files, imports_of):
        cached.cache_clear()
    try:
        assert imports_of("modules.a") == {"modules.b"}
        assert strongly_connected() == [["modules.a", "modules.b", "modules.pkg.c"]]
        assert a_circle(["modules.a", "modules.b", "modules.pkg.c"]) == \
            ["modules.a", "modules.b", "modules.pkg.c", "modules.a"]
    finally:
        for cached in (module_files, imports_of):
            cached.cache_clear()


def test_no_module_over_600_lines():
    long = {}
    for module, path in sorted(module_files().items()):
        with open(path, encoding="utf-8") as f:
            lines = sum(1 for _ in f)
        if lines > MAX_LINES:
            long[os.path.relpath(path, ROOT)] = lines
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("module", OPTIONS_LAYER)
def test_the_options_layer_knows_no_models(module):
    # The model layer attaches the model options' checks at start-up (modules.model_options).
    assert not reachable(module) & MODEL_MODULES, sorted(reachable(module) & MODEL_MODULES)


def test_option_declarations_and_checks_are_a_leaf():
    assert imports_of("modules.option_info") == set()


def test_devices_take_flags_as_arguments():
    assert "modules.shared" not in reachable("modules.devices"), sorted(reachable("modules.devices"))


def test_checkpoint_info_is_a_leaf():
    assert imports_of("modules.checkpoint_info") <= {"modules.paths"}


def test_model_facts_and_the_cache_file_are_leaves():
    # Facts kept in cache.json are rebuilt at start-up without the model stack (test_startup.py, warm start).
    for module in ("modules.model_facts", "modules.cache_file"):
        assert imports_of(module) == set(), module


def test_the_loader_and_writer_do_not_import_the_checkpoint_list():
    for module in ("modules.sd_models_loader", "modules.sd_models_writer"):
        assert "modules.sd_models" not in reachable(module), module


def test_every_core_option_is_declared_in_shared_options():
    # Registering options as a side effect of importing a module (the API did) makes the set of options depend on
    # what happened to be imported; extensions register theirs through the on_ui_settings hook.
    registering = []
    for module, path in sorted(module_files().items()):
        if module == "modules.options":
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        registering += [f"{module}:{node.lineno}" for node in ast.walk(tree)
                        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "add_option"]
    assert not registering, registering


ARCHITECTURE_PAGE = os.path.join(ROOT, "docs", "architecture.md")


def architecture_layers() -> dict[str, int]:
    """``{dotted module: row}`` from the layer table of ``docs/architecture.md`` (row 0 is the bottom layer)."""
    import re
    with open(ARCHITECTURE_PAGE, encoding="utf-8") as f:
        page = f.read()
    table = page.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[2] for line in table.splitlines() if line.startswith("| ") and "`" in line]
    placed = {}
    for index, cell in enumerate(rows):
        for name in re.findall(r"`([a-z0-9_/]+)`", cell):
            if name not in ("webui.py", "launch.py"):
                placed["modules." + name.replace("/", ".")] = index
    return placed


def test_architecture_page_places_every_module_in_a_layer_its_imports_respect():
    # The contributors' page is true to the code: every module is in the table, and none imports a module that
    # the table puts in a higher layer.
    placed = architecture_layers()
    modules = set(module_files()) - {"modules"}
    assert sorted(modules - set(placed)) == [], "modules missing from docs/architecture.md's layer table"
    assert sorted(set(placed) - modules) == [], "docs/architecture.md names modules that do not exist"
    upward = sorted(f"{m} (layer {placed[m]}) imports {dep} (layer {placed[dep]})"
                    for m in modules for dep in imports_of(m) if dep in placed and placed[dep] > placed[m])
    assert upward == []
