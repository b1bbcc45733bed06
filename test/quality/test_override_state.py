"""``OverrideState`` (``modules.extensions_api``): state an extension derives from an override, kept on the layer.

Each test builds its own options store and host, so the seam's rules are checked on the helper alone: a value
set in ``on_opts_override_enter`` is seen by ``get()`` for exactly as long as that override is active, innermost
first, in the context that entered it (and contexts copied from it), and is gone after the block however it ends.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules import plugins, shared
from modules.extensions_api import OverrideState, hookimpl, run_in_thread, temporary_opts
from modules.options import OptionInfo, Options

ROOT = Path(__file__).resolve().parents[2]
KEY = "level"


class Boom(Exception):
    pass


class Deriver:
    """Sets ``state`` to ``derive(value)`` for every override of KEY whose value is not negative."""

    def __init__(self, state, derive=lambda v: f"derived {v}"):
        self.state, self.derive = state, derive

    @hookimpl
    def on_opts_override_enter(self, overrides):
        if KEY in overrides and overrides[KEY] >= 0:
            self.state.set(self.derive(overrides[KEY]))


class Raiser:
    @hookimpl
    def on_opts_override_enter(self, overrides):
        if overrides.get("fail"):
            raise Boom("enter")


@pytest.fixture
def seam():
    """``(opts, state, enter)``: a private store, a state on it, and ``enter(**overrides)`` -> ``temporary_opts``."""
    opts = Options({KEY: OptionInfo(0, KEY), "other": OptionInfo(0, "other"), "fail": OptionInfo(False, "fail")})
    state = OverrideState("test", opts=opts)
    host = plugins.Host(plugins.create_plugin_manager(), strict=True)
    host.register(Deriver(state), "deriver")
    host.register(Raiser(), "raiser")

    def enter(**overrides):
        return temporary_opts(overrides, opts=opts, host=host, owner="test")

    return opts, state, enter


def test_set_in_enter_get_inside_gone_after(seam):
    opts, state, enter = seam
    with pytest.raises(LookupError):
        state.get()
    assert state.get("none") == "none" and state.values() == []
    with enter(level=3):
        assert state.get() == "derived 3" and state.values() == ["derived 3"]
    with pytest.raises(LookupError):
        state.get()
    assert opts.layers() == ()


def test_default_of_the_state():
    state = OverrideState("with default", default=7)
    assert state.get() == 7 and state.get(8) == 8
    assert repr(state) == "<OverrideState 'with default'>"


def test_set_outside_an_enter_hook_is_refused(seam):
    _, state, enter = seam
    with pytest.raises(RuntimeError, match="on_opts_override_enter"):
        state.set("loose")
    with enter(level=1):
        with pytest.raises(RuntimeError, match="on_opts_override_enter"):
            state.set("inside the block, after the enter hooks")
        assert state.get() == "derived 1"


def test_nesting_innermost_wins_and_unwinds(seam):
    _, state, enter = seam
    with enter(level=1):
        with enter(other=5):  # sets nothing: the outer value stays in effect
            assert state.get() == "derived 1" and state.values() == ["derived 1"]
            with enter(level=2):
                assert state.get() == "derived 2" and state.values() == ["derived 1", "derived 2"]
            assert state.get() == "derived 1"
        assert state.get() == "derived 1"
    assert state.values() == []


def test_gone_when_the_block_raises(seam):
    opts, state, enter = seam
    with pytest.raises(Boom):
        with enter(level=1):
            raise Boom("body")
    assert state.values() == [] and opts.layers() == ()


def test_gone_when_a_later_enter_hook_fails(seam):
    opts, state, enter = seam
    with pytest.raises(plugins.HookError):
        with enter(level=1, fail=True):  # deriver sets, then raiser fails: the override never took effect
            pass
    assert state.values() == [] and opts.layers() == ()


def test_gone_with_restore_false_though_the_values_stay(seam):
    opts, state, enter = seam
    with temporary_opts({KEY: 4}, opts=opts, host=plugins.Host(plugins.create_plugin_manager()), restore=False):
        pass
    assert opts.get(KEY) == 4 and state.values() == []


def test_other_threads_never_see_it_copied_contexts_do(seam):
    _, state, enter = seam
    inside, release, seen = threading.Event(), threading.Event(), {}

    def job():
        with enter(level=9):
            seen["job"] = state.get()
            inside.set()
            assert release.wait(10)

    worker = threading.Thread(target=job)
    worker.start()
    try:
        assert inside.wait(10)
        seen["main"] = state.values()
        with enter(level=1):
            seen["copied"] = run_in_thread(state.get).result(timeout=10)
            plain = threading.Thread(target=lambda: seen.update(plain=state.values()))  # a fresh context
            plain.start()
            plain.join(10)
    finally:
        release.set()
        worker.join(10)
    assert seen == {"job": "derived 9", "main": [], "copied": "derived 1", "plain": []}


def test_asyncio_tasks_each_see_their_own(seam):
    _, state, enter = seam

    async def task(value, inside, go):
        with enter(level=value):
            inside.set()
            await go.wait()  # the other task enters and reads meanwhile
            return state.values()

    async def main():
        a_in, b_in, go = asyncio.Event(), asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(task(1, a_in, go)), asyncio.create_task(task(2, b_in, go))]
        await a_in.wait()
        await b_in.wait()
        outside = state.values()
        go.set()
        return outside, await asyncio.gather(*tasks)

    outside, results = asyncio.run(main())
    assert outside == [] and results == [["derived 1"], ["derived 2"]]


def test_the_seams_own_options_by_default(data_dir, register):
    state = OverrideState("on shared.opts")

    class Clip:
        @hookimpl
        def on_opts_override_enter(self, overrides):
            state.set(overrides.get("eta_noise_seed_delta"))

    register(Clip(), "clip")
    with temporary_opts({"eta_noise_seed_delta": 5}):
        assert state.get() == 5 == shared.opts.eta_noise_seed_delta
    assert state.values() == []


# One level of a random nesting: the value of KEY (negative: the deriver sets nothing) and whether the body
# raises at that level.
levels = st.lists(st.tuples(st.integers(-2, 5), st.booleans()), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(levels=levels)
def test_property_get_is_the_innermost_set_value_at_every_depth(levels):
    opts = Options({KEY: OptionInfo(0, KEY)})
    state = OverrideState("property", opts=opts)
    host = plugins.Host(plugins.create_plugin_manager(), strict=True)
    host.register(Deriver(state, derive=lambda v: v), "deriver")

    def expected(depth):
        return [v for v, _ in levels[:depth] if v >= 0]

    def run(depth):
        if depth == len(levels):
            return
        value, raises = levels[depth]
        with temporary_opts({KEY: value}, opts=opts, host=host):
            assert state.values() == expected(depth + 1)
            assert state.get(None) == (expected(depth + 1) or [None])[-1]
            if raises:
                raise Boom(depth)
            run(depth + 1)
            assert state.values() == expected(depth + 1)  # the inner levels' values went with them

    try:
        run(0)
    except Boom as e:
        assert levels[e.args[0]][1]
    assert state.values() == [] and opts.layers() == ()


@pytest.mark.parametrize("script", ["extensions-builtin/clip-skip-cache/scripts/clip_skip_cache.py",
                                    "extensions-builtin/override-infotext/scripts/override_infotext.py",
                                    "docs/extensions/example/scripts/word_filter.py"])
def test_builtins_and_the_docs_example_keep_no_stack_of_their_own(script):
    source = (ROOT / script).read_text(encoding="utf-8")
    assert "OverrideState(" in source and "ContextVar" not in source and "on_opts_override_exit" not in source
