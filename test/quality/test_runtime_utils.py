"""The override seam (shared/design/seam.md): one test class per numbered rule, plus property tests."""

from __future__ import annotations

import asyncio
import json
import threading
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modules import plugins, shared
from modules.hookspecs import hookimpl
from modules.runtime_utils import (OverrideError, active_overrides, run_in_thread, running_overrides,
                                   temporary_opts, with_overrides)


class Boom(Exception):
    pass


class Recorder:
    """A plugin that logs every enter/exit with what it saw, and fails where told."""

    def __init__(self, name, log, fail_enter=False, fail_exit=False, raises=None):
        self.name, self.log = name, log
        self.fail_enter, self.fail_exit = fail_enter, fail_exit
        self.raises = raises or {}  # {"enter" or "exit": an exception class to raise there}

    @hookimpl
    def on_opts_override_enter(self, overrides, previous, p):
        seen = {k: shared.opts.get(k) for k in overrides}
        self.log.append(("enter", self.name, dict(overrides), dict(previous), seen, p))
        if "enter" in self.raises:
            raise self.raises["enter"]()
        if self.fail_enter:
            raise Boom(f"{self.name} enter")

    @hookimpl
    def on_opts_override_exit(self, overrides, previous, p, error, restored):
        seen = {k: shared.opts.get(k) for k in overrides}
        self.log.append(("exit", self.name, dict(overrides), dict(previous), seen, error, restored))
        if "exit" in self.raises:
            raise self.raises["exit"]()
        if self.fail_exit:
            raise Boom(f"{self.name} exit")


def events(log, kind):
    return [e[1] for e in log if e[0] == kind]


@pytest.fixture
def log():
    return []


@pytest.fixture
def three(register, log):
    """Three extensions, one per group, registered out of order to prove the group order wins."""
    register(Recorder("user-a", log), "user-a", plugins.USER_GROUP)
    register(Recorder("builtin-b", log), "builtin-b", plugins.BUILTIN_GROUP)
    register(Recorder("user-c", log), "user-c", plugins.USER_GROUP)
    return ["serena.core", "builtin-b", "user-a", "user-c"]


class TestRule1EmptyIsFree:
    @pytest.mark.parametrize("overrides", [None, {}])
    def test_no_hook_no_layer(self, data_dir, register, log, overrides):
        register(Recorder("r", log), "r")
        with temporary_opts(overrides) as ctx:
            assert shared.opts.layers() == ()
            assert active_overrides() == []
        assert log == [] and ctx.applied == {}


class TestRule2ValidateAllOrNothing:
    def test_every_bad_key_listed_nothing_applied(self, data_dir, register, log, monkeypatch):
        register(Recorder("r", log), "r")
        bad = {
            "no_such_option": 1,
            "CLIP_stop_at_last_layers": "2",          # str for int
            "samples_save": 1,                         # int for bool
            "outdir_samples": "/tmp/x",               # restrict_api
            "sd_model_checkpoint": "missing-model",   # unknown checkpoint
            "samples_format": "gif",                  # not one of the fixed choices
            "eta_noise_seed_delta": 5,                 # valid: must not be applied either
        }
        with pytest.raises(OverrideError) as info:
            with temporary_opts(bad):
                pytest.fail("the block must not run")
        errors = info.value.errors
        assert set(errors) == set(bad) - {"eta_noise_seed_delta"}
        assert "unknown option" in errors["no_such_option"]
        assert "missing-model" in errors["sd_model_checkpoint"] and "alpha" in errors["sd_model_checkpoint"]
        assert isinstance(info.value, ValueError)
        assert shared.opts.eta_noise_seed_delta == 0 and shared.opts.layers() == () and log == []

    def test_frozen_settings_refuse_overrides(self, data_dir, monkeypatch):
        monkeypatch.setattr(shared.opts, "frozen", True)
        with pytest.raises(OverrideError) as info:
            with temporary_opts({"CLIP_stop_at_last_layers": 2}):
                pass
        assert "frozen" in info.value.errors["CLIP_stop_at_last_layers"]

    def test_int_for_float_and_integral_float_for_int(self, data_dir):
        with temporary_opts({"CLIP_stop_at_last_layers": 2.0}) as ctx:
            assert shared.opts.CLIP_stop_at_last_layers == 2
            assert type(ctx.applied["CLIP_stop_at_last_layers"]) is int

    def test_checkpoint_by_short_hash_becomes_its_title(self, data_dir, fake_models):
        from modules import sd_models
        beta = next(c for c in sd_models.list_checkpoints() if c.name == "beta.safetensors")
        with temporary_opts({"sd_model_checkpoint": beta.shorthash}):
            assert shared.opts.sd_model_checkpoint == beta.title

    def test_alias_applies_to_current_name_with_warning(self, data_dir, monkeypatch):
        info = shared.opts.data_labels["CLIP_stop_at_last_layers"]
        monkeypatch.setattr(info, "aliases", ("clip_skip",))
        monkeypatch.setitem(shared.opts._aliases, "clip_skip", "CLIP_stop_at_last_layers")
        with temporary_opts({"clip_skip": 3}) as ctx:
            assert shared.opts.CLIP_stop_at_last_layers == 3
        assert any("deprecated" in w for w in ctx.warnings)

    def test_not_a_mapping_is_a_type_error(self):
        with pytest.raises(TypeError):
            temporary_opts([("CLIP_stop_at_last_layers", 2)])


class TestRule3And4Hooks:
    def test_enter_sees_overrides_exit_sees_previous(self, data_dir, register, log):
        register(Recorder("r", log), "r")
        shared.opts.set("CLIP_stop_at_last_layers", 3)
        p = object()
        with temporary_opts({"CLIP_stop_at_last_layers": 5}, p=p):
            pass
        enter = next(e for e in log if e[0] == "enter")
        exit_ = next(e for e in log if e[0] == "exit")
        assert enter[2] == {"CLIP_stop_at_last_layers": 5} and enter[3] == {"CLIP_stop_at_last_layers": 3}
        assert enter[4] == {"CLIP_stop_at_last_layers": 5} and enter[5] is p
        assert exit_[4] == {"CLIP_stop_at_last_layers": 3}
        assert exit_[5] is None and exit_[6] is True

    def test_mappings_are_read_only(self, data_dir, register):
        caught = []

        class Mutator:
            @hookimpl
            def on_opts_override_enter(self, overrides):
                try:
                    overrides["CLIP_stop_at_last_layers"] = 9
                except TypeError as e:
                    caught.append(e)

        register(Mutator(), "mutator")
        with temporary_opts({"CLIP_stop_at_last_layers": 2}):
            assert shared.opts.CLIP_stop_at_last_layers == 2
        assert caught

    def test_exit_gets_the_error_leaving_the_block(self, data_dir, register, log):
        register(Recorder("r", log), "r")
        with pytest.raises(Boom):
            with temporary_opts({"CLIP_stop_at_last_layers": 2}):
                raise Boom("body")
        exit_ = next(e for e in log if e[0] == "exit")
        assert isinstance(exit_[5], Boom)

    def test_failing_enter_is_still_owed_its_exit(self, data_dir, register, log, lenient_hooks):
        register(Recorder("a", log), "a")
        register(Recorder("b", log, fail_enter=True), "b")
        register(Recorder("c", log), "c")
        with temporary_opts({"CLIP_stop_at_last_layers": 2}) as ctx:
            pass
        assert events(log, "enter") == ["a", "b", "c"]
        assert events(log, "exit") == ["c", "b", "a"]
        assert any("'b'" in w and "on_opts_override_enter" in w for w in ctx.warnings)


class TestRule5Order:
    def test_core_builtin_user_then_reverse(self, data_dir, three, log):
        assert plugins.resolved_order("on_opts_override_enter") == three
        with temporary_opts({"CLIP_stop_at_last_layers": 2}):
            pass
        assert events(log, "enter") == three[1:]
        assert events(log, "exit") == list(reversed(three[1:]))

    def test_tryfirst_and_trylast_move_to_the_ends(self, data_dir, register, log):
        class First(Recorder):
            @hookimpl(tryfirst=True)
            def on_opts_override_enter(self, overrides, previous, p):
                super().on_opts_override_enter(overrides, previous, p)

        class Last(Recorder):
            @hookimpl(trylast=True)
            def on_opts_override_enter(self, overrides, previous, p):
                super().on_opts_override_enter(overrides, previous, p)

        register(Last("last", log), "last")
        register(Recorder("middle", log), "middle")
        register(First("first", log), "first")
        order = plugins.resolved_order("on_opts_override_enter")
        assert order[0] == "first" and order[-1] == "last" and order.index("serena.core") < order.index("middle")
        with temporary_opts({"CLIP_stop_at_last_layers": 2}):
            pass
        assert events(log, "enter") == ["first", "middle", "last"]
        assert events(log, "exit") == ["last", "middle", "first"]


class TestRule5ReportedOrder:
    def test_exit_order_reported_as_called(self, data_dir, register, log):
        class First(Recorder):
            @hookimpl(tryfirst=True)
            def on_opts_override_enter(self, overrides, previous, p):
                super().on_opts_override_enter(overrides, previous, p)

        register(Recorder("a", log), "a", plugins.BUILTIN_GROUP)
        register(First("b", log), "b")
        register(Recorder("c", log), "c")
        with temporary_opts({"CLIP_stop_at_last_layers": 2}):
            pass
        assert events(log, "exit") == ["c", "a", "b"]
        assert plugins.resolved_order("on_opts_override_exit") == ["c", "a", "b"]
        assert plugins.host.hook_order()["on_opts_override_exit"] == ["c", "a", "b"]

    def test_plugins_registered_on_pm_directly_are_seen(self, data_dir, log):
        with temporary_opts({"CLIP_stop_at_last_layers": 2}):
            pass  # warms the order cache
        direct = Recorder("direct", log)
        plugins.pm.register(direct, name="direct")
        try:
            with temporary_opts({"CLIP_stop_at_last_layers": 2}):
                pass
        finally:
            plugins.pm.unregister(direct)
        with temporary_opts({"CLIP_stop_at_last_layers": 2}):
            pass
        assert events(log, "enter") == ["direct"] and events(log, "exit") == ["direct"]


class TestRule6AlwaysRestoreExactly:
    def test_falsy_and_unset_values_come_back(self, data_dir):
        opts = shared.opts
        opts.set("samples_save", False)
        opts.set("eta_noise_seed_delta", 0)
        opts.save()
        before_disk = (data_dir / "config.json").read_text()
        with pytest.raises(Boom):
            with temporary_opts({"samples_save": True, "eta_noise_seed_delta": 7, "CLIP_stop_at_last_layers": 4}):
                opts.save()  # a save during the block writes stored values only (rule 11)
                raise Boom()
        assert opts.samples_save is False and opts.eta_noise_seed_delta == 0
        assert not opts.is_stored("CLIP_stop_at_last_layers") and opts.CLIP_stop_at_last_layers == 1
        assert (data_dir / "config.json").read_text() == before_disk
        assert "CLIP_stop_at_last_layers" not in json.loads(before_disk)

    def test_keyboard_interrupt_restores_and_runs_exits(self, data_dir, register, log):
        register(Recorder("r", log), "r")
        with pytest.raises(KeyboardInterrupt):
            with temporary_opts({"CLIP_stop_at_last_layers": 2}):
                raise KeyboardInterrupt
        assert shared.opts.CLIP_stop_at_last_layers == 1 and events(log, "exit") == ["r"]


class TestInterruptRaisedByAHook:
    """``KeyboardInterrupt``/``SystemExit`` from an extension's enter or exit hook is a hook failure like any other."""

    @pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
    @pytest.mark.parametrize("where", ["enter", "exit"])
    def test_strict_fails_naming_the_extension_after_restoring(self, data_dir, register, log, kind, where):
        register(Recorder("a", log), "a")
        register(Recorder("b", log, raises={where: kind}), "b")
        register(Recorder("c", log), "c")
        ran = []
        with pytest.raises(plugins.HookError) as info:
            with temporary_opts({"CLIP_stop_at_last_layers": 2}):
                ran.append(shared.opts.CLIP_stop_at_last_layers)
        assert (info.value.plugin, info.value.hook) == ("b", f"on_opts_override_{where}")
        assert type(info.value.__cause__) is kind and f"extension 'b' failed in on_opts_override_{where}: " \
            f"{kind.__name__}" == str(info.value)
        entered = ["a", "b"] if where == "enter" else ["a", "b", "c"]  # strict stops entering at the failure
        assert ran == ([] if where == "enter" else [2])
        assert events(log, "enter") == entered and events(log, "exit") == entered[::-1]  # every owed exit
        assert shared.opts.CLIP_stop_at_last_layers == 1 and shared.opts.layers() == () and active_overrides() == []

    @pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
    @pytest.mark.parametrize("where", ["enter", "exit"])
    def test_lenient_contained_and_reported(self, data_dir, register, log, lenient_hooks, kind, where):
        register(Recorder("a", log), "a")
        register(Recorder("b", log, raises={where: kind}), "b")
        register(Recorder("c", log), "c")
        p = types.SimpleNamespace(warnings=[])
        with temporary_opts({"CLIP_stop_at_last_layers": 2}, p=p) as ctx:
            assert shared.opts.CLIP_stop_at_last_layers == 2
        assert events(log, "enter") == ["a", "b", "c"] and events(log, "exit") == ["c", "b", "a"]
        assert p.warnings == [f"extension 'b' failed in on_opts_override_{where}: {kind.__name__}"]
        assert [type(f.exception) for f in ctx.failures] == [kind]
        assert shared.opts.CLIP_stop_at_last_layers == 1 and shared.opts.layers() == ()


class TestRule7Containment:
    def test_lenient_failure_reported_with_name_rest_run(self, data_dir, register, log, lenient_hooks):
        register(Recorder("a", log, fail_exit=True), "a")
        register(Recorder("b", log), "b")

        class P:
            warnings: list

        p = P()
        p.warnings = []
        with temporary_opts({"CLIP_stop_at_last_layers": 2}, p=p):
            pass
        assert events(log, "exit") == ["b", "a"]
        assert any("'a'" in w and "Boom" in w for w in p.warnings)

    def test_strict_enter_failure_raises_after_restore_and_owed_exits(self, data_dir, register, log):
        register(Recorder("a", log), "a")
        register(Recorder("b", log, fail_enter=True), "b")
        register(Recorder("c", log), "c")
        ran = []
        with pytest.raises(plugins.HookError) as info:
            with temporary_opts({"CLIP_stop_at_last_layers": 2}):
                ran.append(True)
        assert info.value.plugin == "b" and isinstance(info.value.__cause__, Boom)
        assert ran == [] and events(log, "enter") == ["a", "b"] and events(log, "exit") == ["b", "a"]
        assert shared.opts.CLIP_stop_at_last_layers == 1 and shared.opts.layers() == ()

    def test_strict_exit_failure_raises_after_every_exit(self, data_dir, register, log):
        register(Recorder("a", log), "a")
        register(Recorder("b", log, fail_exit=True), "b")
        register(Recorder("c", log), "c")
        with pytest.raises(plugins.HookError):
            with temporary_opts({"CLIP_stop_at_last_layers": 2}):
                pass
        assert events(log, "exit") == ["c", "b", "a"] and shared.opts.CLIP_stop_at_last_layers == 1

    def test_body_error_wins_over_strict_exit_error(self, data_dir, register, log):
        register(Recorder("b", log, fail_exit=True), "b")
        with pytest.raises(Boom, match="body"):
            with temporary_opts({"CLIP_stop_at_last_layers": 2}):
                raise Boom("body")


class TestRule8Nesting:
    def test_inner_sees_outer_plus_inner(self, data_dir, register, log):
        register(Recorder("r", log), "r")
        with temporary_opts({"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 5}):
            with temporary_opts({"CLIP_stop_at_last_layers": 3}):
                assert (shared.opts.CLIP_stop_at_last_layers, shared.opts.eta_noise_seed_delta) == (3, 5)
                assert [layer["depth"] for layer in active_overrides()] == [1, 2]
            assert shared.opts.CLIP_stop_at_last_layers == 2
        assert shared.opts.CLIP_stop_at_last_layers == 1
        enters = [e for e in log if e[0] == "enter"]
        assert enters[1][3] == {"CLIP_stop_at_last_layers": 2}  # inner previous = outer value
        assert [e[0] for e in log] == ["enter", "enter", "exit", "exit"]

    def test_one_instance_cannot_be_entered_twice(self, data_dir):
        ctx = temporary_opts({"CLIP_stop_at_last_layers": 2})
        with ctx:
            with pytest.raises(RuntimeError):
                ctx.enable()


class TestRule9RestoreAfterwards:
    def test_values_become_stored_not_saved(self, data_dir, register, log):
        register(Recorder("r", log), "r")
        shared.opts.save()
        disk = (data_dir / "config.json").read_text()
        with temporary_opts({"CLIP_stop_at_last_layers": 2}, restore=False):
            pass
        assert shared.opts.CLIP_stop_at_last_layers == 2 and shared.opts.is_stored("CLIP_stop_at_last_layers")
        assert log[-1][6] is False
        assert (data_dir / "config.json").read_text() == disk
        shared.opts.save()
        assert json.loads((data_dir / "config.json").read_text())["CLIP_stop_at_last_layers"] == 2


class TestRule9StoreFailure:
    def test_owed_exits_run_when_storing_fails(self, data_dir, register, log, monkeypatch):
        register(Recorder("r", log), "r")

        def refuse(*a, **k):
            raise ValueError("disk says no")

        with pytest.raises(ValueError):
            with temporary_opts({"CLIP_stop_at_last_layers": 2}, restore=False):
                monkeypatch.setattr(type(shared.opts), "set_many", refuse)
        assert events(log, "exit") == ["r"] and shared.opts.layers() == ()


class TestRule10Decorator:
    def test_bare_decorator_applies_when_called_directly(self, data_dir, register, log):
        register(Recorder("r", log), "r")

        class P:
            override_settings = {"CLIP_stop_at_last_layers": 2}
            override_settings_restore_afterwards = True

        @with_overrides
        def inner(p):
            return shared.opts.CLIP_stop_at_last_layers

        p = P()
        assert inner(p) == 2
        assert events(log, "enter") == ["r"]
        log.clear()
        with temporary_opts(p.override_settings, p=p):
            assert inner(p) == 2
        assert events(log, "enter") == ["r"]  # once, not twice

    def test_decorator_with_mapping_is_fresh_per_call_and_recursive(self, data_dir):
        depths = []

        @with_overrides({"eta_noise_seed_delta": 1})
        def recurse(n):
            depths.append(len(shared.opts.layers()))
            if n:
                recurse(n - 1)

        recurse(2)
        assert depths == [1, 2, 3] and shared.opts.layers() == ()

    def test_decorator_across_threads(self, data_dir):
        barrier = threading.Barrier(2)
        seen = []

        @with_overrides({"CLIP_stop_at_last_layers": 2})
        def work():
            barrier.wait(timeout=5)
            seen.append(shared.opts.CLIP_stop_at_last_layers)
            barrier.wait(timeout=5)

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert seen == [2, 2] and shared.opts.CLIP_stop_at_last_layers == 1

    def test_coroutines_and_classes(self, data_dir):
        @with_overrides({"CLIP_stop_at_last_layers": 4})
        async def read():
            await asyncio.sleep(0)
            return shared.opts.CLIP_stop_at_last_layers

        assert asyncio.run(read()) == 4
        with pytest.raises(TypeError):
            with_overrides({"CLIP_stop_at_last_layers": 4})(type("C", (), {}))

        def gen():
            yield shared.opts.CLIP_stop_at_last_layers

        with pytest.raises(TypeError, match="generators"):
            with_overrides({"CLIP_stop_at_last_layers": 4})(gen)

    def test_as_context_manager(self, data_dir):
        with with_overrides({"CLIP_stop_at_last_layers": 6}):
            assert shared.opts.data["CLIP_stop_at_last_layers"] == 6
        assert shared.opts.data["CLIP_stop_at_last_layers"] == 1


class TestRule11Isolation:
    def test_other_thread_sees_stored_values(self, data_dir):
        inside, release = threading.Event(), threading.Event()

        def job():
            with temporary_opts({"CLIP_stop_at_last_layers": 2}):
                inside.set()
                release.wait(timeout=30)

        t = threading.Thread(target=job)
        t.start()
        assert inside.wait(timeout=30)  # the first check of clip skip may import the model loader (torch)
        try:
            assert shared.opts.CLIP_stop_at_last_layers == 1
            stacks = running_overrides()
            assert any(s[0]["values"] == {"CLIP_stop_at_last_layers": 2} for s in stacks.values())
        finally:
            release.set()
            t.join()
        assert running_overrides() == {}

    def test_asyncio_tasks_do_not_see_each_other(self, data_dir):
        async def task(value, gate_in, gate_out):
            with temporary_opts({"CLIP_stop_at_last_layers": value}):
                gate_in.set()
                await gate_out.wait()
                return shared.opts.CLIP_stop_at_last_layers

        async def main():
            a_in, b_in, go = asyncio.Event(), asyncio.Event(), asyncio.Event()
            ta = asyncio.create_task(task(2, a_in, go))
            tb = asyncio.create_task(task(3, b_in, go))
            await a_in.wait()
            await b_in.wait()
            go.set()
            return await ta, await tb

        assert asyncio.run(main()) == (2, 3)

    def test_running_overrides_shows_every_asyncio_task_at_once(self, data_dir):
        """Two tasks on one thread: each context's live stack is its own, read from another thread."""
        async def task(value, inside, go):
            with temporary_opts({"CLIP_stop_at_last_layers": value}, owner=f"task-{value}"):
                inside.set()
                await go.wait()

        async def main():
            a_in, b_in, go = asyncio.Event(), asyncio.Event(), asyncio.Event()
            tasks = [asyncio.create_task(task(2, a_in, go)), asyncio.create_task(task(3, b_in, go))]
            await a_in.wait()
            await b_in.wait()
            # run_in_executor does not copy this context: the reader is just another thread
            stacks = await asyncio.get_running_loop().run_in_executor(None, running_overrides)
            go.set()
            await asyncio.gather(*tasks)
            return stacks

        stacks = asyncio.run(main())
        assert sorted((s[0]["owner"], s[0]["values"], len(s)) for s in stacks.values()) == [
            ("task-2", {"CLIP_stop_at_last_layers": 2}, 1), ("task-3", {"CLIP_stop_at_last_layers": 3}, 1)]
        assert running_overrides() == {}

    def test_running_overrides_one_stack_per_context(self, data_dir):
        """Nesting shows one stack; tasks started inside a block extend it, each with its own top."""
        async def child(value, inside, go):
            with temporary_opts({"eta_noise_seed_delta": value}, owner=f"child-{value}"):
                inside.set()
                await go.wait()

        async def main():
            with temporary_opts({"CLIP_stop_at_last_layers": 2}, owner="outer"):
                with temporary_opts({"CLIP_stop_at_last_layers": 3}, owner="inner"):
                    nested = running_overrides()
                a_in, b_in, go = asyncio.Event(), asyncio.Event(), asyncio.Event()
                tasks = [asyncio.create_task(child(5, a_in, go)), asyncio.create_task(child(6, b_in, go))]
                await a_in.wait()
                await b_in.wait()
                children = running_overrides()
                go.set()
                await asyncio.gather(*tasks)
                after_children = running_overrides()
            return nested, children, after_children

        nested, children, after_children = asyncio.run(main())
        assert [[layer["owner"] for layer in s] for s in nested.values()] == [["outer", "inner"]]
        assert sorted([layer["owner"] for layer in s] for s in children.values()) == [
            ["outer", "child-5"], ["outer", "child-6"]]
        assert [[layer["owner"] for layer in s] for s in after_children.values()] == [["outer"]]
        assert running_overrides() == {}

    def test_run_in_thread_carries_overrides(self, data_dir):
        with temporary_opts({"CLIP_stop_at_last_layers": 7}):
            assert run_in_thread(lambda: shared.opts.CLIP_stop_at_last_layers).result(timeout=5) == 7
        assert run_in_thread(lambda: shared.opts.CLIP_stop_at_last_layers).result(timeout=5) == 1


class TestRule12CoreIsAPlugin:
    def test_core_registered_first(self):
        assert plugins.host.registered()[0] == ("serena.core", plugins.CORE_GROUP)
        assert plugins.resolved_order("on_opts_override_enter")[0] == "serena.core"

    def test_checkpoint_override_switches_once_for_n_generations(self, data_dir, fake_models):
        from modules import sd_models
        assert sd_models.current_model().info.name == "alpha.safetensors"
        for _ in range(3):
            with temporary_opts({"sd_model_checkpoint": "beta"}):
                assert fake_models.current.name == "beta.safetensors"
                assert sd_models.current_model().info.name == "beta.safetensors"
        assert fake_models.loaded_names == ["alpha.safetensors", "beta.safetensors"]
        assert sd_models.current_model().info.name == "alpha.safetensors"  # lazy switch back, one load

    def test_cached_switch_reads_nothing(self, data_dir, fake_models, monkeypatch):
        from modules import sd_models
        shared.opts.set("sd_checkpoints_limit", 2)
        sd_models.current_model()
        with temporary_opts({"sd_model_checkpoint": "beta"}):
            pass
        with temporary_opts({"sd_model_checkpoint": "beta"}):
            pass
        sd_models.current_model()
        assert fake_models.loaded_names == ["alpha.safetensors", "beta.safetensors"]

    def test_vae_override_applies_and_returns(self, data_dir, fake_models, monkeypatch):
        from modules import sd_models
        monkeypatch.setitem(sd_models._vae_cache, "sharp.safetensors", "a loaded VAE")
        with temporary_opts({"sd_vae": "sharp.safetensors"}):
            assert sd_models.current_model().vae_name == "sharp.safetensors"
        assert sd_models.current_model().vae_name is None


class TestRule13Observable:
    def test_active_overrides_shows_owner_keys_depth(self, data_dir):
        with temporary_opts({"CLIP_stop_at_last_layers": 2}, owner="xyz-grid"):
            [layer] = active_overrides()
        assert layer == {"keys": ["CLIP_stop_at_last_layers"], "values": {"CLIP_stop_at_last_layers": 2},
                         "owner": "xyz-grid", "depth": 1}

    def test_owner_defaults_to_calling_module(self, data_dir):
        with temporary_opts({"CLIP_stop_at_last_layers": 2}):
            assert active_overrides()[0]["owner"] == __name__


# -- property tests ----------------------------------------------------------------------------------------------

VALUES = {
    "CLIP_stop_at_last_layers": st.integers(1, 12),
    "eta_noise_seed_delta": st.integers(0, 1000),
    "samples_save": st.booleans(),
    "add_model_hash_to_info": st.booleans(),
    "samples_format": st.sampled_from(["png", "jpg", "webp"]),
    "randn_source": st.sampled_from(["CPU", "GPU"]),
}


def value_sets():
    return st.dictionaries(st.sampled_from(sorted(VALUES)), st.none(), max_size=len(VALUES)).flatmap(
        lambda d: st.fixed_dictionaries({k: VALUES[k] for k in d}))


FAILURES = st.sampled_from(["none", "body", "enter", "exit", "interrupt", "hook-interrupt-enter",
                            "hook-exit-exit"])  # KeyboardInterrupt / SystemExit raised by an extension's hook


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stored=value_sets(), levels=st.lists(value_sets(), min_size=1, max_size=4),
       failure=FAILURES, fail_level=st.integers(0, 3), strict=st.booleans())
def test_property_always_restored_every_exit_once(data_dir, register, monkeypatch, stored, levels, failure,
                                                   fail_level, strict):
    opts = shared.opts
    opts.load(str(data_dir / "none.json"))
    for k, v in stored.items():
        opts.set(k, v)
    snapshot = {k: opts.get(k) for k in opts.data_labels}
    stored_before = opts.stored()
    log = []
    names = ["p1", "p2", "p3"]
    for i, name in enumerate(names):
        bad = i == 1
        raises = {"hook-interrupt-enter": {"enter": KeyboardInterrupt}, "hook-exit-exit": {"exit": SystemExit}}
        plugin = Recorder(name, log, fail_enter=bad and failure == "enter", fail_exit=bad and failure == "exit",
                          raises=raises.get(failure) if bad else None)
        if not plugins.host.is_registered(name):
            register(plugin, name)
    monkeypatch.setattr(plugins.host, "strict", strict)
    fail_level = min(fail_level, len(levels) - 1)

    def run(depth):
        if depth == len(levels):
            return
        with temporary_opts(levels[depth]):
            for k, v in levels[depth].items():
                assert opts.get(k) == v
            if depth == fail_level and failure == "body":
                raise Boom("body")
            if depth == fail_level and failure == "interrupt":
                raise KeyboardInterrupt
            run(depth + 1)

    try:
        run(0)
    except (Boom, KeyboardInterrupt, plugins.HookError):
        pass
    finally:
        for name in names:
            plugins.host.unregister(name)
    assert {k: opts.get(k) for k in opts.data_labels} == snapshot
    assert opts.stored() == stored_before and opts.layers() == ()
    enters = [(e[1], tuple(sorted(e[2].items()))) for e in log if e[0] == "enter"]
    exits = [(e[1], tuple(sorted(e[2].items()))) for e in log if e[0] == "exit"]
    assert sorted(enters) == sorted(exits)          # every owed exit, exactly once
    assert exits == list(reversed(enters))          # a stack, like nested with-blocks
