"""The extension loader (``modules.extensions``, ``extension_discovery``, ``extension_order``): discovery,
metadata.ini, order, enable/disable, Requires, failure containment, entry points, per-hook order and the printed
order. Extension folders are built in ``tmp_path``; each test loads them
into its own ``plugins.Host`` (strict, as the suite), so the process-wide host is untouched.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules import extension_discovery, extension_order, extensions, plugins, shared
from modules.extensions_api import testing
from modules.option_info import OptionError
from modules.runtime_utils import temporary_opts

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------------
# Helpers: extension folders on disk, and a module they report to
# ---------------------------------------------------------------------------------------------------------------

RECORDER = '''
import serena_test_events as ev
from modules.extensions_api import hookimpl

ev.imported.append({name!r})

@hookimpl{marker}
def on_opts_override_enter(overrides):
    ev.events.append(("enter", {name!r}))

@hookimpl
def on_opts_override_exit(overrides):
    ev.events.append(("exit", {name!r}))
'''


def recorder(name: str, marker: str = "") -> str:
    return RECORDER.format(name=name, marker=marker)


def make_ext(root: Path, folder: str, scripts: dict[str, str] | str | None = None, metadata: str | None = None) -> Path:
    """``root/folder/`` with ``scripts/*.py`` (a str is ``scripts/<folder>.py``) and an optional metadata.ini."""
    path = root / folder
    (path / "scripts").mkdir(parents=True, exist_ok=True)
    if scripts is None:
        scripts = recorder(folder)
    if isinstance(scripts, str):
        scripts = {folder.replace("-", "_"): scripts}
    for stem, source in scripts.items():
        (path / "scripts" / f"{stem}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    if metadata is not None:
        (path / "metadata.ini").write_text(textwrap.dedent(metadata), encoding="utf-8")
    return path


@pytest.fixture
def ev(monkeypatch):
    """The module test extensions report to: ``imported`` (at import) and ``events`` (hook calls)."""
    module = types.ModuleType("serena_test_events")
    module.imported, module.events = [], []
    monkeypatch.setitem(sys.modules, "serena_test_events", module)
    return module


@pytest.fixture
def host():
    return plugins.Host(strict=True)


@pytest.fixture
def dirs(tmp_path):
    builtin, user = tmp_path / "extensions-builtin", tmp_path / "data" / "extensions"
    builtin.mkdir()
    user.mkdir(parents=True)
    return types.SimpleNamespace(builtin=builtin, user=user)


@pytest.fixture
def load(dirs, host, data_dir):
    """``load(**kwargs)``: ``load_all`` over the two test folders into the test's host (no entry points)."""
    loaded: list = []

    def _load(**kwargs):
        kwargs.setdefault("builtin_dir", str(dirs.builtin))
        kwargs.setdefault("user_dir", str(dirs.user))
        kwargs.setdefault("disabled", [])
        kwargs.setdefault("disable_all", False)
        kwargs.setdefault("disable_extra", False)
        kwargs.setdefault("entry_points", False)
        result = extensions.load_all(host=host, **kwargs)
        loaded.extend(result)
        return {e.name: e for e in result}

    yield _load
    extensions.unload(loaded, host)


def order(host, hook="on_opts_override_enter"):
    return host.resolved_order(hook)


HOOKED = """
@hookimpl
def on_before_process(p):
    ev.events.append(("before", {name!r}))

@hookimpl
def on_process(p):
    ev.events.append(("process", {name!r}))
"""


def hooked(dirs, name: str, metadata: str | None = None) -> Path:
    """A user extension implementing the override hooks, ``on_before_process`` and ``on_process``."""
    return make_ext(dirs.user, name, recorder(name) + HOOKED.format(name=name), metadata)


# ---------------------------------------------------------------------------------------------------------------
# Discovery and names
# ---------------------------------------------------------------------------------------------------------------

class TestDiscovery:
    def test_builtin_first_then_user_each_by_name(self, dirs, load, host, ev):
        make_ext(dirs.user, "b-user")
        make_ext(dirs.user, "a-user")
        make_ext(dirs.builtin, "z-builtin")
        exts = load()
        assert order(host) == ["z-builtin", "a-user", "b-user"]
        assert ev.imported == ["z-builtin", "a-user", "b-user"]
        assert {n: (e.group, e.loaded, e.enabled) for n, e in exts.items()} == {
            "z-builtin": ("builtin", True, True), "a-user": ("user", True, True), "b-user": ("user", True, True)}
        assert dict(host.registered())["z-builtin"] == plugins.BUILTIN_GROUP
        assert exts["a-user"].path == str(dirs.user / "a-user")

    def test_name_from_metadata_else_folder(self, dirs, load, host, ev):
        make_ext(dirs.user, "folder-x", recorder("pretty"), "[Extension]\nName = Pretty\n")
        exts = load()
        assert "Pretty" in exts and exts["Pretty"].folder == "folder-x"
        assert order(host) == ["Pretty"]

    def test_one_script_is_named_after_the_extension_several_get_stems(self, dirs, load, host, ev):
        make_ext(dirs.user, "single", {"main": recorder("single")})
        make_ext(dirs.user, "multi", {"b_second": recorder("multi/b"), "a_first": recorder("multi/a")})
        exts = load()
        assert exts["single"].plugins == ["single"]
        assert exts["multi"].plugins == ["multi/a_first", "multi/b_second"]  # scripts in name order
        assert order(host) == ["multi/a_first", "multi/b_second", "single"]

    def test_same_script_name_in_two_extensions_does_not_clash(self, dirs, load, host, ev):
        for name in ("one", "two"):
            make_ext(dirs.user, name, {"main": recorder(name) + f"\nWHO = {name!r}\n"})
        exts = load()
        one, two = host.pm.get_plugin("one"), host.pm.get_plugin("two")
        assert (one.WHO, two.WHO) == ("one", "two")
        assert one.__name__ == "serena_ext.one.main" and two.__name__ == "serena_ext.two.main"
        assert exts["one"].modules[-1] == "serena_ext.one.main"

    def test_duplicate_name_first_wins(self, dirs, load, host, ev):
        make_ext(dirs.builtin, "dup", recorder("dup-builtin"))
        make_ext(dirs.user, "other", recorder("dup-user"), "[Extension]\nName = DUP\n")
        exts = load()
        assert ev.imported == ["dup-builtin"]
        skipped = [e for e in extensions.extensions() if e.folder == "other"][0]
        assert skipped.status == "skipped" and not skipped.loaded
        assert "was found first" in skipped.problems[0]
        assert exts["dup"].loaded

    def test_sibling_imports_and_sys_path(self, dirs, load, host, ev):
        make_ext(dirs.user, "helpers", {
            "main": "from . import util\nfrom modules.extensions_api import hookimpl\n"
                    "import helperlib\nVALUE = util.VALUE + helperlib.VALUE\n"
                    "@hookimpl\ndef on_process(p):\n    pass\n",
            "util": "VALUE = 1\n"})
        (dirs.user / "helpers" / "helperlib.py").write_text("VALUE = 10\n")
        before = list(sys.path)
        exts = load()
        try:
            assert exts["helpers"].loaded, exts["helpers"].problems
            assert host.pm.get_plugin("helpers/main").VALUE == 11
            # util was imported once, by main, and registered as the same module object
            assert host.pm.get_plugin("helpers/util") is sys.modules["serena_ext.helpers.util"]
            assert sys.path == before
        finally:
            sys.modules.pop("helperlib", None)

    def test_ignores_files_hidden_folders_and_empty_extensions(self, dirs, load, host, ev):
        (dirs.user / "README.txt").write_text("not an extension")
        make_ext(dirs.user, ".hidden")
        (dirs.user / "assets-only").mkdir()
        exts = load()
        assert set(exts) == {"assets-only"}
        assert exts["assets-only"].loaded and exts["assets-only"].plugins == []

    def test_missing_folders_are_fine(self, tmp_path, host, data_dir):
        assert extensions.load_all(builtin_dir=str(tmp_path / "no"), user_dir=None, host=host,
                                   entry_points=False) == []


class TestMetadata:
    def test_lists_accept_commas_and_spaces(self, tmp_path):
        make_ext(tmp_path, "m", "", """\
            [Extension]
            Name = Meta
            Requires = a, b  c
            Before = x,y
            After = p|q

            [hooks/on_process]
            Before = r
            After = s, t
            """)
        metadata, notes = extension_discovery.read_metadata(str(tmp_path / "m"))
        assert metadata.name == "Meta"
        assert metadata.requires == ["a", "b", "c"] and metadata.before == ["x", "y"] and metadata.after == ["p|q"]
        assert metadata.hooks["on_process"].before == ["r"] and metadata.hooks["on_process"].after == ["s", "t"]
        assert notes == []

    def test_unreadable_and_unused_sections_are_reported(self, dirs, load, ev):
        make_ext(dirs.user, "bad-ini", metadata="this is not ini\n")
        make_ext(dirs.user, "a1111-ini", metadata="[scripts/x.py]\nBefore = y\n")
        exts = load()
        assert exts["bad-ini"].loaded and "metadata.ini is unreadable" in exts["bad-ini"].problems[0]
        assert exts["a1111-ini"].loaded and "[scripts/x.py] is not used" in exts["a1111-ini"].problems[0]


# ---------------------------------------------------------------------------------------------------------------
# Order
# ---------------------------------------------------------------------------------------------------------------

class TestOrder:
    def test_before_after_adjust_name_order(self, dirs, load, host, ev):
        make_ext(dirs.user, "a")
        make_ext(dirs.user, "b", metadata="[Extension]\nBefore = a\n")
        make_ext(dirs.user, "c", metadata="[Extension]\nAfter = d\n")
        make_ext(dirs.user, "d")
        load()
        assert order(host) == ["b", "a", "d", "c"]
        with temporary_opts({"CLIP_stop_at_last_layers": 2}, host=host):
            pass
        assert ev.events == [("enter", n) for n in "badc"] + [("exit", n) for n in "cdab"]

    def test_ties_break_by_name_and_requires_means_after(self, dirs, load, host, ev):
        make_ext(dirs.user, "a", metadata="[Extension]\nRequires = z\n")
        make_ext(dirs.user, "m")
        make_ext(dirs.user, "z")
        load()
        assert order(host) == ["m", "z", "a"]

    def test_constraint_on_absent_extension_is_ignored_with_a_note(self, dirs, load, host, ev):
        make_ext(dirs.user, "a", metadata="[Extension]\nBefore = ghost\nAfter = off\n")
        make_ext(dirs.user, "off")
        exts = load(disabled=["off"])
        assert exts["a"].loaded and order(host) == ["a"]
        assert any("Before = ghost: ignored; 'ghost' is not installed" in p for p in exts["a"].problems)
        assert any("After = off: ignored; 'off' is disabled" in p for p in exts["a"].problems)

    def test_cycle_drops_only_its_own_constraints_and_is_reported_on_every_member(self, dirs, load, host, ev):
        make_ext(dirs.user, "c", metadata="[Extension]\nBefore = a\n")
        make_ext(dirs.user, "a", metadata="[Extension]\nBefore = b\n")
        make_ext(dirs.user, "b", metadata="[Extension]\nBefore = c\n")
        make_ext(dirs.user, "d", metadata="[Extension]\nBefore = a\n")  # not in the cycle: still holds
        make_ext(dirs.builtin, "y", metadata="[Extension]\nAfter = x\n")  # other group keeps its order
        make_ext(dirs.builtin, "x")
        exts = load()
        # a, b, c in name order between themselves, except that d's constraint puts d before a
        assert order(host) == ["x", "y", "b", "c", "d", "a"]
        for name in "abc":
            [message] = [p for p in exts[name].problems if "cycle" in p]
            assert message.startswith("Before/After/Requires form a cycle between 'a', 'b', 'c' "
                                      "(a before b; b before c; c before a): these constraints are dropped")
        assert exts["d"].problems == [] and exts["x"].problems == []
        [dropped] = host.dropped
        assert (dropped.hook, dropped.members) == (None, ("a", "b", "c"))

    def test_constraints_across_groups(self, dirs, load, host, ev):
        make_ext(dirs.builtin, "core-ish", metadata="[Extension]\nAfter = late\nBefore = late\n")
        make_ext(dirs.user, "late", metadata="[Extension]\nAfter = core-ish\n")
        exts = load()
        assert order(host) == ["core-ish", "late"]
        assert [p for p in exts["core-ish"].problems] == [
            "After = late: ignored; built-in extensions always run before user ones"]
        assert exts["late"].problems == []

    def test_tryfirst_and_trylast_move_across_groups(self, dirs, load, host, ev):
        make_ext(dirs.builtin, "builtin")
        make_ext(dirs.user, "first", recorder("first", "(tryfirst=True)"))
        make_ext(dirs.user, "last", recorder("last", "(trylast=True)"))
        make_ext(dirs.user, "middle")
        load()
        assert order(host) == ["first", "builtin", "middle", "last"]

    def test_per_hook_constraints(self, dirs, load, host, ev):
        on_process = "\n@hookimpl\ndef on_process(p):\n    ev.events.append(('process', {!r}))\n"
        make_ext(dirs.user, "a", recorder("a") + on_process.format("a"),
                 "[hooks/on_process]\nAfter = b\n[hooks/no_such_hook]\nBefore = b\n")
        make_ext(dirs.user, "b", recorder("b") + on_process.format("b"))
        exts = load()
        assert order(host, "on_process") == ["b", "a"]
        assert order(host) == ["a", "b"]  # other hooks keep the load order
        assert host.hook_orders["on_process"] == ["b", "a"]
        assert any("[hooks/no_such_hook] ignored" in p for p in exts["a"].problems)
        host.call("on_process", p=None)
        assert [e for e in ev.events if e[0] == "process"] == [("process", "b"), ("process", "a")]

    def test_per_hook_cycle_drops_only_its_constraints(self, dirs, load, host, ev):
        hooked(dirs, "a", "[hooks/on_process]\nAfter = b\n")
        hooked(dirs, "b", "[hooks/on_process]\nAfter = a\n")
        hooked(dirs, "c", "[hooks/on_process]\nAfter = d\n")  # unrelated to the cycle: still holds
        hooked(dirs, "d")
        exts = load()
        assert order(host, "on_process") == ["a", "b", "d", "c"]
        assert order(host) == ["a", "b", "c", "d"]  # other hooks keep the load order
        for name in "ab":
            [message] = [p for p in exts[name].problems if "cycle" in p]
            assert message.startswith("[hooks/on_process] Before/After form a cycle between 'a', 'b' "
                                      "(a before b; b before a): these constraints are dropped")
        assert exts["c"].problems == [] and exts["d"].problems == []
        assert host.dropped == [plugins.DroppedCycle("on_process", ("a", "b"), (("a", "b"), ("b", "a")))]

    def test_three_extension_cycle_on_a_hook(self, dirs, load, host, ev):
        hooked(dirs, "a", "[hooks/on_process]\nAfter = c\n")
        hooked(dirs, "b", "[hooks/on_process]\nAfter = a\n")
        hooked(dirs, "c", "[hooks/on_process]\nAfter = b\n")
        hooked(dirs, "d", "[hooks/on_process]\nBefore = b\n")  # touches a member, is not in the cycle
        exts = load()
        assert order(host, "on_process") == ["a", "c", "d", "b"]
        [cycle] = host.dropped
        assert cycle.members == ("a", "b", "c") and cycle.constraints == (("a", "b"), ("b", "c"), ("c", "a"))
        assert all(cycle.message() in exts[n].problems for n in "abc") and exts["d"].problems == []

    def test_cycle_on_one_hook_leaves_another_hook_alone(self, dirs, load, host, ev):
        hooked(dirs, "a", "[hooks/on_process]\nAfter = b\n[hooks/on_before_process]\nAfter = b\n")
        hooked(dirs, "b", "[hooks/on_process]\nAfter = a\n")
        load()
        assert order(host, "on_process") == ["a", "b"]
        assert order(host, "on_before_process") == ["b", "a"]
        view = host.describe_hooks()
        assert [d.hook for d in view["on_process"]["dropped"]] == ["on_process"]
        assert view["on_before_process"]["dropped"] == []
        host.call("on_before_process", p=None)
        host.call("on_process", p=None)
        assert [e for e in ev.events if e[0] != "enter"] == [("before", "b"), ("before", "a"),
                                                            ("process", "a"), ("process", "b")]

    def test_list_hooks_shows_the_order_and_the_dropped_constraints(self, dirs, load, host, ev):
        hooked(dirs, "a", "[Extension]\nBefore = b\n[hooks/on_process]\nAfter = b\n")
        hooked(dirs, "b", "[Extension]\nBefore = a\n[hooks/on_process]\nAfter = a\n")
        hooked(dirs, "c", "[hooks/on_process]\nBefore = a\n")
        load()
        text = extensions.format_hook_order(host)
        assert ("Load order: dropped: Before/After/Requires form a cycle between 'a', 'b' (a before b; "
                "b before a): these constraints are dropped and name order decides") in text
        section = text.split("on_process  (ordered by metadata.ini [hooks/on_process])\n")[1].split("\non_")[0]
        lines = section.splitlines()
        # whatever is free to run next runs in load order (a, b, c): b, then c, which must precede a
        assert [line.split()[1] for line in lines[:3]] == ["b", "c", "a"]
        assert lines[3].startswith("    dropped: [hooks/on_process] Before/After form a cycle between 'a', 'b' "
                                   "(a before b; b before a)")
        assert len(lines) == 4
        before = text.split("on_before_process\n")[1].split("\non_")[0]
        assert "dropped" not in before and [line.split()[1] for line in before.splitlines()] == ["a", "b", "c"]
        # the API and extensions see the same order (names of what is called)
        assert host.hook_order()["on_process"] == ["b", "c", "a"] == order(host, "on_process")


@st.composite
def constraint_graphs(draw):
    """``(names in load order, edges)``: up to 8 extensions and any set of "a before b" constraints."""
    n = draw(st.integers(1, 8))
    names = [f"e{i}" for i in draw(st.permutations(range(n)))]
    pairs = [(a, b) for a in names for b in names if a != b]
    edges = draw(st.sets(st.sampled_from(pairs), max_size=len(pairs))) if pairs else set()
    return names, edges


def _reaches(edges, start, goal) -> bool:
    seen, todo = set(), [start]
    while todo:
        k = todo.pop()
        if k == goal:
            return True
        if k not in seen:
            seen.add(k)
            todo.extend(b for a, b in edges if a == k)
    return False


@settings(max_examples=300, deadline=None)
@given(graph=constraint_graphs())
def test_property_only_cycle_constraints_are_dropped(graph):
    names, edges = graph
    got, cycles = extension_order.resolve(names, edges)
    assert sorted(got) == sorted(names)  # a permutation of every implementation
    position = {name: i for i, name in enumerate(got)}
    in_cycle = {(a, b) for a, b in edges if _reaches(edges, b, a)}
    kept = edges - in_cycle
    assert all(position[a] < position[b] for a, b in kept)  # every constraint not in a cycle is respected
    assert {edge for _, dropped in cycles for edge in dropped} == in_cycle  # and exactly those are dropped
    for members, _ in cycles:  # each reported cycle is mutually reachable, in load order
        assert members == sorted(members, key=names.index)
        assert all(_reaches(edges, a, b) for a in members for b in members)
    # stable: whatever is free to go next goes in load order
    for i, name in enumerate(got):
        free = [n for n in got[i:] if all(position[a] < i for a, b in kept if b == n)]
        assert name == min(free, key=names.index)


# ---------------------------------------------------------------------------------------------------------------
# Enable / disable / Requires
# ---------------------------------------------------------------------------------------------------------------

class TestEnableDisable:
    @pytest.fixture
    def three(self, dirs, ev):
        make_ext(dirs.builtin, "bi")
        make_ext(dirs.user, "folder-name", recorder("named"), "[Extension]\nName = named\n")
        make_ext(dirs.user, "plain")

    @pytest.mark.parametrize("kwargs, expected", [
        ({}, ["bi", "named", "plain"]),
        ({"disabled": ["plain"]}, ["bi", "named"]),
        ({"disabled": ["NAMED"]}, ["bi", "plain"]),          # by name, case-insensitive
        ({"disabled": ["folder-name", "bi"]}, ["plain"]),     # by folder name; built-ins too (as A1111)
        ({"disable_extra": True}, ["bi"]),
        ({"disable_all": True}, []),
    ])
    def test_disabled_modules_are_never_imported(self, three, load, host, ev, kwargs, expected):
        exts = load(**kwargs)
        assert ev.imported == expected
        assert order(host) == expected
        for name, ext in exts.items():
            assert ext.loaded == (name in expected)
            assert ext.enabled == (name in expected)
            if not ext.enabled:
                assert ext.status == "disabled" and ext.disabled_reason and ext.problems == []
                assert not any(m.startswith(f"serena_ext.{name}") for m in sys.modules)

    def test_load_configured_reads_flags_and_settings(self, dirs, host, ev, data_dir, monkeypatch):
        make_ext(dirs.builtin, "bi")
        make_ext(dirs.user, "plain")
        paths = types.SimpleNamespace(extensions_builtin_dir=str(dirs.builtin), extensions_dir=str(dirs.user))
        flags = types.SimpleNamespace(disable_all_extensions=False, disable_extra_extensions=False)
        shared.opts.set("disable_all_extensions", "extra")
        exts = extensions.load_configured(host=host, entry_points=False, cmd_opts=flags, data_paths=paths)
        assert [e.name for e in exts if e.loaded] == ["bi"]
        extensions.unload(exts, host)


class TestRequires:
    def test_missing_or_disabled_requirement_blocks_loading(self, dirs, load, host, ev):
        make_ext(dirs.user, "needs-ghost", metadata="[Extension]\nRequires = ghost\n")
        make_ext(dirs.user, "needs-off", metadata="[Extension]\nRequires = off\n")
        make_ext(dirs.user, "needs-needy", metadata="[Extension]\nRequires = needs-ghost\n")
        make_ext(dirs.user, "off")
        make_ext(dirs.user, "fine")
        exts = load(disabled=["off"])
        assert ev.imported == ["fine"]
        assert exts["needs-ghost"].problems == ["not loaded: requires 'ghost' ('ghost' is not installed)"]
        assert exts["needs-off"].problems == ["not loaded: requires 'off' ('off' is disabled)"]
        assert "cannot load" in exts["needs-needy"].problems[0]
        assert {exts[n].status for n in ("needs-ghost", "needs-off", "needs-needy")} == {"requires"}

    def test_alternatives_pick_the_first_present(self, dirs, load, host, ev):
        make_ext(dirs.user, "flex", metadata="[Extension]\nRequires = ghost|zz-real\n")
        make_ext(dirs.user, "zz-real")
        exts = load()
        assert exts["flex"].loaded and order(host) == ["zz-real", "flex"]

    def test_requirement_that_fails_at_import_blocks_its_dependant(self, dirs, load, host, ev):
        make_ext(dirs.user, "a-app", metadata="[Extension]\nRequires = z-lib\n")
        make_ext(dirs.user, "z-lib", "raise ImportError('no torch here')\n")
        exts = load()
        assert not exts["a-app"].loaded and ev.imported == []  # z-lib is loaded first (Requires = After)
        assert exts["a-app"].problems == ["not loaded: requires 'z-lib' ('z-lib' failed to load)"]

    def test_failed_alternative_blocks_before_import(self, dirs, load, host, ev):
        make_ext(dirs.user, "a-app", metadata="[Extension]\nRequires = off|z-lib\n")
        make_ext(dirs.user, "off")
        make_ext(dirs.user, "z-lib", "raise ImportError('no torch here')\n")
        exts = load(disabled=["off"])
        assert ev.imported == [] and exts["a-app"].status == "requires"
        assert "'off' is disabled; 'z-lib' failed to load" in exts["a-app"].problems[0]

    def test_builtin_requiring_a_failing_user_extension_is_unloaded(self, dirs, load, host, ev):
        make_ext(dirs.builtin, "bi", metadata="[Extension]\nRequires = broken\n")
        make_ext(dirs.user, "broken", "raise RuntimeError('boom')\n")
        exts = load()
        assert not exts["bi"].loaded and exts["bi"].status == "requires"
        assert host.registered() == [] and not any(m.startswith("serena_ext.bi") for m in sys.modules)


# ---------------------------------------------------------------------------------------------------------------
# Failure containment
# ---------------------------------------------------------------------------------------------------------------

BAD = {
    "import-error": ("raise ZeroDivisionError('at import')\n",
                     "importing scripts/import_error.py raised ZeroDivisionError: at import"),
    "syntax-error": ("def broken(:\n", "importing scripts/syntax_error.py raised SyntaxError"),
    "exits": ("import sys\nsys.exit(3)\n", "raised SystemExit: 3"),
    "unknown-hook": ("from modules.extensions_api import hookimpl\n@hookimpl\ndef on_no_such_hook():\n    pass\n",
                     "no hook named 'on_no_such_hook'"),
    "bad-signature": ("from modules.extensions_api import hookimpl\n@hookimpl\ndef on_process(p, nonsense):\n"
                      "    pass\n", "nonsense"),
    "wrapper": ("from modules.extensions_api import hookimpl\n@hookimpl(wrapper=True)\ndef on_process(p):\n"
                "    yield\n", "wrappers are not supported"),
}


class TestContainment:
    @pytest.mark.parametrize("kind", sorted(BAD))
    def test_bad_extension_is_reported_once_and_the_rest_load(self, dirs, load, host, ev, kind, caplog):
        source, expected = BAD[kind]
        make_ext(dirs.user, "a-good")
        make_ext(dirs.user, kind, source)
        make_ext(dirs.user, "z-good")
        exts = load()
        bad = exts[kind]
        assert not bad.loaded and bad.status == "failed"
        assert len(bad.problems) == 1 and expected in bad.problems[0]
        assert order(host) == ["a-good", "z-good"]
        assert [p for p in extensions.problems() if p.startswith(f"{kind}:")] == [f"{kind}: {bad.problems[0]}"]
        logged = [r for r in caplog.records if kind in r.getMessage() and "not loaded" in r.getMessage()]
        assert len(logged) == 1 and logged[0].levelname == "ERROR"  # reported once
        assert not any(m.startswith(f"serena_ext.{kind.replace('-', '_')}.") for m in sys.modules)

    def test_failing_script_leaves_no_half_registered_extension(self, dirs, load, host, ev):
        make_ext(dirs.user, "half", {"a_good": recorder("half/a"),
                                     "b_bad": "from modules.extensions_api import hookimpl\n"
                                              "@hookimpl\ndef on_nothing():\n    pass\n"})
        make_ext(dirs.user, "half2", {"a_good": recorder("half2/a"), "b_bad": "1/0\n"})
        exts = load()
        assert not exts["half"].loaded and not exts["half2"].loaded
        assert host.registered() == []
        assert exts["half"].plugins == [] and exts["half"].modules == []
        assert not any(m.startswith("serena_ext.half") for m in sys.modules)

    def test_plugin_name_taken_on_the_host_is_contained(self, dirs, load, host, ev):
        host.register(types.SimpleNamespace(), "taken", plugins.USER_GROUP)
        make_ext(dirs.user, "taken")
        exts = load()
        assert not exts["taken"].loaded and "already registered" in exts["taken"].problems[0]

    def test_settings_changed_at_import_are_put_back(self, dirs, load, host, ev, data_dir):
        shared.opts.set("eta_noise_seed_delta", 5)
        make_ext(dirs.user, "meddler", recorder("meddler") + textwrap.dedent("""
            from modules.extensions_api import opts
            opts.CLIP_stop_at_last_layers = 7
            opts.eta_noise_seed_delta = 0
            opts.data["samples_save"] = False
            """))
        make_ext(dirs.user, "crasher", "from modules.extensions_api import opts\nopts.CLIP_stop_at_last_layers = 9\n"
                                        "raise RuntimeError('after meddling')\n")
        before = shared.opts.stored()
        exts = load()
        assert shared.opts.stored() == before == {"eta_noise_seed_delta": 5}
        assert shared.opts.CLIP_stop_at_last_layers == 1 and shared.opts.samples_save is True
        assert exts["meddler"].loaded and exts["meddler"].problems == [extensions.SETTINGS_AT_IMPORT]
        assert not exts["crasher"].loaded and extensions.SETTINGS_AT_IMPORT in exts["crasher"].problems
        shared.opts.save()
        assert (data_dir / "config.json").read_text().count(":") == 1

    def test_exit_without_enter_is_noted(self, dirs, load, host, ev):
        make_ext(dirs.user, "exit-only", "from modules.extensions_api import hookimpl\n"
                                          "@hookimpl\ndef on_opts_override_exit(overrides):\n    pass\n")
        exts = load()
        assert exts["exit-only"].loaded
        assert "never called" in exts["exit-only"].problems[0]
        assert "never called" in extensions.format_hook_order(host)


# ---------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """An installed-looking distribution ``fake_pkg`` 1.0 with ``[serena] fake-pkg = fake_pkg``."""
    site = tmp_path / "site"
    (site / "fake_pkg").mkdir(parents=True)
    (site / "fake_pkg" / "__init__.py").write_text(recorder("fake-pkg"))
    (site / "broken_pkg").mkdir()
    (site / "broken_pkg" / "__init__.py").write_text("raise ImportError('missing dependency')\n")
    info = site / "fake_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake_pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[serena]\nfake-pkg = fake_pkg\nbroken-pkg = broken_pkg\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in ("fake_pkg", "broken_pkg"):
        sys.modules.pop(name, None)


class TestEntryPoints:
    def test_package_extensions_load_after_user_folders(self, dirs, load, host, ev, fake_distribution):
        make_ext(dirs.user, "zz-folder")
        make_ext(dirs.builtin, "bi")
        exts = load(entry_points=True)
        pkg = exts["fake-pkg"]
        assert pkg.loaded and pkg.group == "package" and pkg.plugins == ["fake-pkg"]
        assert pkg.path == str(fake_distribution / "fake_pkg" / "__init__.py")
        assert "fake_pkg 1.0" in pkg.source
        assert order(host) == ["bi", "zz-folder", "fake-pkg"]
        assert dict(host.registered())["fake-pkg"] == plugins.USER_GROUP
        assert not exts["broken-pkg"].loaded and "missing dependency" in exts["broken-pkg"].problems[0]

    def test_packages_can_be_disabled_and_ordered_against(self, dirs, load, host, ev, fake_distribution):
        make_ext(dirs.user, "after-pkg", metadata="[Extension]\nAfter = fake-pkg\n")
        exts = load(entry_points=True, disabled=["broken-pkg"])
        assert order(host) == ["fake-pkg", "after-pkg"]
        assert exts["broken-pkg"].status == "disabled"
        exts2 = load(entry_points=True, disable_extra=True)
        assert not exts2["fake-pkg"].loaded and exts2["fake-pkg"].status == "disabled"


# ---------------------------------------------------------------------------------------------------------------
# Options, records, printed order, test helper
# ---------------------------------------------------------------------------------------------------------------

class TestOptionsAndRecords:
    def test_register_extension_options_fires_on_ui_settings(self, dirs, load, host, ev, data_dir, monkeypatch):
        monkeypatch.setattr(shared.opts, "data_labels", dict(shared.opts.data_labels))
        make_ext(dirs.user, "opt", textwrap.dedent("""
            from modules.extensions_api import OptionInfo, hookimpl, opts
            @hookimpl
            def on_ui_settings():
                opts.add_option("opt_test_value", OptionInfo(3, "A test option", section=("opt", "Opt")))
            """))
        (data_dir / "config.json").write_text('{"opt_test_value": 4}')
        shared.opts.load()
        load()
        assert extensions.register_extension_options(host) == []
        assert shared.opts.opt_test_value == 4
        with temporary_opts({"opt_test_value": 9}, host=host):
            assert shared.opts.opt_test_value == 9
        assert shared.opts.opt_test_value == 4

    GUARDED = """
        import threading
        from modules.extensions_api import OptionInfo, hookimpl, opts

        @hookimpl
        def on_ui_settings():
            opts.add_option("guarded_own", OptionInfo(1, "Its own option", section=("guarded", "Guarded")))

        @hookimpl
        def on_process(p):
            opts.guarded_own = 2             # its own option: allowed
            opts.CLIP_stop_at_last_layers = 5  # not its own: refused

        def meddle(kind):
            if kind == "own":
                opts.guarded_own = 3
            elif kind == "attribute":
                opts.CLIP_stop_at_last_layers = 5
            elif kind == "set":
                opts.set("CLIP_stop_at_last_layers", 5)
            elif kind == "data":
                opts.data["CLIP_stop_at_last_layers"] = 5
            elif kind == "set_many":  # its own and another: neither is applied
                opts.set_many({"guarded_own": 3, "CLIP_stop_at_last_layers": 5})
            elif kind == "unset":
                opts.unset("eta_noise_seed_delta")
            elif kind == "register":
                opts.add_option("CLIP_stop_at_last_layers", OptionInfo(9, "Taken over"))

        def in_thread(kind):
            errors = []

            def run():
                try:
                    meddle(kind)
                except ValueError as e:
                    errors.append(e)

            thread = threading.Thread(target=run)
            thread.start()
            thread.join()
            return errors
        """

    @pytest.fixture
    def guarded(self, dirs, load, host, ev, data_dir, monkeypatch):
        """The ``guarded`` extension loaded, its option registered; ``eta_noise_seed_delta`` stored and saved."""
        monkeypatch.setattr(shared.opts, "data_labels", dict(shared.opts.data_labels))
        monkeypatch.setattr(shared.opts, "_aliases", dict(shared.opts._aliases))
        make_ext(dirs.user, "guarded", recorder("guarded") + textwrap.dedent(self.GUARDED))
        shared.opts.set("eta_noise_seed_delta", 7)
        shared.opts.save()
        exts = load()
        assert extensions.register_extension_options(host) == []
        return exts["guarded"], host.pm.get_plugin("guarded")

    @pytest.mark.parametrize("kind", ["attribute", "set", "data", "set_many", "unset", "register"])
    def test_extension_thread_cannot_change_options_it_did_not_register(self, guarded, data_dir, kind):
        ext, module = guarded
        before, saved = shared.opts.stored(), (data_dir / "config.json").read_text()
        [error] = module.in_thread(kind)
        key = "eta_noise_seed_delta" if kind == "unset" else "CLIP_stop_at_last_layers"
        verb = "register" if kind == "register" else "change"
        message = f"extension 'guarded' may not {verb} option {key!r}"
        assert error.key == key and error.reason.startswith(message)
        assert shared.opts.stored() == before and shared.opts.CLIP_stop_at_last_layers == 1
        assert shared.opts.data_labels["CLIP_stop_at_last_layers"].default == 1
        assert any(p.startswith(message) for p in ext.problems)
        shared.opts.save()  # the next unrelated save persists nothing of it
        assert (data_dir / "config.json").read_text() == saved

    def test_thread_started_at_import_is_refused_while_the_import_runs(self, dirs, load, data_dir):
        """Only the importing thread's writes are let through and put back: a write from a thread the extension
        started could land after the put-back and stay (the hostile smoke test found it)."""
        make_ext(dirs.user, "early", """
            import threading
            from modules.extensions_api import opts

            errors = []

            def write():
                try:
                    opts.CLIP_stop_at_last_layers = 2
                except ValueError as e:
                    errors.append(e)

            thread = threading.Thread(target=write)
            thread.start()
            thread.join()  # still importing
        """)
        exts = load()
        module = next(m for n, m in sys.modules.items() if n.startswith("serena_ext.early") and hasattr(m, "errors"))
        [error] = module.errors
        assert error.key == "CLIP_stop_at_last_layers" and "extension 'early' may not change" in error.reason
        assert exts["early"].loaded and not shared.opts.is_stored("CLIP_stop_at_last_layers")

    def test_extension_changes_its_own_option_from_its_thread(self, guarded, data_dir):
        ext, module = guarded
        assert module.in_thread("own") == []
        shared.opts.save()
        assert '"guarded_own": 3' in (data_dir / "config.json").read_text() and ext.problems == []
        shared.opts.set("CLIP_stop_at_last_layers", 3)  # Serena's own code still writes any option
        assert shared.opts.CLIP_stop_at_last_layers == 3

    @pytest.mark.parametrize("strict", [True, False])
    def test_write_inside_a_hook_is_refused_and_reported(self, guarded, host, strict):
        ext, _ = guarded
        host.strict = strict
        failures = []
        if strict:
            with pytest.raises(plugins.HookError) as info:
                host.call_each("on_process", {"p": None}, failures=failures)
            assert info.value.plugin == "guarded" and isinstance(info.value.__cause__, OptionError)
        else:
            host.call_each("on_process", {"p": None}, failures=failures)
        [failure] = failures
        assert "extension 'guarded' may not change option 'CLIP_stop_at_last_layers'" in failure.message()
        assert shared.opts.guarded_own == 2 and not shared.opts.is_stored("CLIP_stop_at_last_layers")

    def test_on_ui_settings_failure_is_reported_on_the_extension(self, dirs, load, host, ev, lenient_hooks):
        host.strict = False
        make_ext(dirs.user, "bad-opt", "from modules.extensions_api import hookimpl\n"
                                        "@hookimpl\ndef on_ui_settings():\n    raise KeyError('x')\n")
        exts = load()
        [message] = extensions.register_extension_options(host)
        assert "bad-opt" in message
        assert exts["bad-opt"].problems == ["on_ui_settings failed: KeyError: 'x'"]
        assert "bad-opt: on_ui_settings failed: KeyError: 'x'" in extensions.problems()

    def test_record_and_as_dict(self, dirs, load, host, ev):
        make_ext(dirs.user, "a", metadata="[Extension]\nRequires = b\n[hooks/on_process]\nAfter = b\n")
        make_ext(dirs.user, "b")
        load()
        [a, b] = extensions.extensions()
        assert (a.name, b.name) == ("b", "a")  # load order
        d = b.as_dict()
        assert d["status"] == "loaded" and d["metadata"]["requires"] == ["b"]
        assert d["metadata"]["hooks"] == {"on_process": {"before": [], "after": ["b"]}}
        assert extensions.problems() == []

    def test_format_hook_order(self, dirs, load, host, ev):
        from modules import core_hooks  # the process-wide host has the core; this test's host gets it too
        host.register(core_hooks, "serena.core", plugins.CORE_GROUP)
        make_ext(dirs.builtin, "bi")
        make_ext(dirs.user, "late", recorder("late", "(trylast=True)"))
        make_ext(dirs.user, "early", recorder("early", "(tryfirst=True)"))
        load()
        text = extensions.format_hook_order(host)
        enter = text.split("on_opts_override_enter\n")[1].split("\non_")[0].splitlines()
        assert [line.split()[1] for line in enter] == ["early", "serena.core", "bi", "late"]
        assert "early  [user, tryfirst]" in text and "late  [user, trylast]" in text and "bi  [builtin]" in text
        exit_ = text.split("on_opts_override_exit  (reverse of on_opts_override_enter)\n")[1].split("\non_")[0]
        assert [line.split()[1] for line in exit_.splitlines()] == ["late", "bi", "early"]
        assert "on_app_started\n    (no implementations)" in text
        described = host.describe_hooks()
        assert set(described) == set(plugins.hook_names(host.pm))
        assert described["on_opts_override_enter"]["order"][0] == {"name": "early", "group": "user", "tryfirst": True,
                                                          "trylast": False, "called": True}

    def test_the_api_and_list_hooks_show_one_order(self, dirs, ev, data_dir, api_client):
        """``GET /serena/v1/hooks`` and ``--list-hooks`` render the one ``describe_hooks``: the same implementations
        in the same order, with tryfirst/trylast and ``[hooks/<hook>]`` constraints in play."""
        make_ext(dirs.builtin, "bi", recorder("bi") + HOOKED.format(name="bi"))
        make_ext(dirs.user, "early", recorder("early", "(tryfirst=True)"))
        make_ext(dirs.user, "late", recorder("late", "(trylast=True)"))
        hooked(dirs, "a", "[hooks/on_process]\nAfter = c\n")
        hooked(dirs, "b", "[hooks/on_process]\nBefore = a\n[hooks/on_before_process]\nAfter = c\n")
        hooked(dirs, "c")
        exts = extensions.load_all(builtin_dir=str(dirs.builtin), user_dir=str(dirs.user), host=plugins.host,
                                   entry_points=False)
        try:
            api = api_client.get("/serena/v1/hooks").json()
            listed: dict[str, list[str]] = {}
            hook = None
            for line in extensions.format_hook_order(plugins.host).splitlines():
                if line and not line.startswith(" ") and line.split()[0] in api:
                    hook = listed.setdefault(line.split()[0], [])
                elif hook is not None and line.split(".", 1)[0].strip().isdigit():
                    hook.append(line.split()[1])
            assert listed == api
            assert api["on_process"] == ["serena.core", "bi", "b", "c", "a"]  # the core: always-on scripts
            assert api["on_before_process"] == ["serena.core", "bi", "a", "c", "b"]
            assert api["on_opts_override_enter"] == ["early", "serena.core", "bi", "a", "b", "c", "late"]
            assert api["on_opts_override_exit"] == ["late", "c", "b", "a", "bi", "early"]
        finally:
            extensions.unload(exts)

    def test_loaded_helper_cleans_up(self, tmp_path, host, ev):
        path = make_ext(tmp_path, "solo", recorder("solo") + textwrap.dedent("""
            from modules.extensions_api import OptionInfo, opts
            @hookimpl
            def on_ui_settings():
                opts.add_option("solo_option", OptionInfo(1, "Solo", aliases=("solo_old_name",)))
            """))
        with testing.loaded(str(path), host=host) as ext:
            assert ext.plugins == ["solo"] and shared.opts.solo_option == 1
            assert shared.opts.canonical_key("solo_old_name") == "solo_option"
            with temporary_opts({"solo_option": 2}, host=host):
                pass
        assert ev.events == [("enter", "solo"), ("exit", "solo")]
        assert host.registered() == [] and "solo_option" not in shared.opts.data_labels
        assert shared.opts.canonical_key("solo_old_name") is None
        assert "serena_ext.solo.solo" not in sys.modules

    def test_loaded_helper_raises_with_the_problems(self, tmp_path, host):
        path = make_ext(tmp_path, "broken", "1/0\n")
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            with testing.loaded(str(path), host=host):
                pass


# ---------------------------------------------------------------------------------------------------------------
# The built-in extensions load cleanly, and the documented example's own tests run with the suite
# ---------------------------------------------------------------------------------------------------------------

def test_builtin_extensions_load_without_problems(host, data_dir):
    exts = extensions.load_all(builtin_dir=str(ROOT / "extensions-builtin"), user_dir=None, host=host,
                               entry_points=False)
    try:
        assert [e.name for e in exts] == ["clip-skip-cache", "Lora", "override-infotext", "override-inspector",
                                         "prompts-from-file", "sd-upscale", "xyz-grid"]
        assert all(e.loaded and e.problems == [] for e in exts)
        for path in (ROOT / "extensions-builtin").glob("*/scripts/**/*.py"):
            imports = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
            assert all("modules" not in line or "modules.extensions_api" in line for line in imports), path
    finally:
        extensions.unload(exts, host)


def _doc_example_tests():
    spec = importlib.util.spec_from_file_location(
        "serena_docs_example_test", ROOT / "docs" / "extensions" / "example" / "test_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# docs/extensions/example/test_example.py is the tutorial's test: its fixtures and tests run here, unchanged.
_example = _doc_example_tests()
globals().update({name: value for name, value in vars(_example).items()
                  if name.startswith("test_") or name in getattr(_example, "FIXTURES", ())})
