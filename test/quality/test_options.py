"""The options store: typed validation, stored vs effective values, atomic save, forgiving load."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules import sd_models, shared_options
from modules.option_info import OptionError, OptionInfo, check_value, options_section, same_value
from modules.options import Options, OptionsRejected, SettingsFrozenError

# JSON values of every kind, nested a little: what a client can send.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-20, 20) | st.floats(-20, 20) | st.text(max_size=4)
    | st.sampled_from([0, 1, 0.0, 1.0, "1", "true", "png", "CPU"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=5)

# One option of every type check_value knows, each with a value that Python's == mixes up with a wrong type.
TYPED_OPTIONS = {
    "an_int": OptionInfo(1), "a_float": OptionInfo(1.0), "a_bool": OptionInfo(True), "a_str": OptionInfo("1"),
    "a_list": OptionInfo([1]),
}


@pytest.fixture(autouse=True)
def no_model_limits(monkeypatch):
    """These tests are about the store: no checkpoint's limits (clip skip, VAE) come into the values they check."""
    monkeypatch.setattr(sd_models, "model_manager", sd_models.LoadedModels(load_fn=None))


@pytest.fixture
def opts(tmp_path):
    return Options(shared_options.options_templates, filename=str(tmp_path / "config.json"))


class TestCheckValue:
    @pytest.mark.parametrize("default,value,expected", [
        (1, 2, 2), (1, 2.0, 2), (1.5, 2, 2.0), (True, False, False), ("a", "b", "b"), ([], ["x"], ["x"]),
    ])
    def test_accepts(self, default, value, expected):
        out = check_value("k", OptionInfo(default), value)
        assert out == expected and type(out) is type(expected)

    @pytest.mark.parametrize("default,value", [
        (1, "2"), (1, 2.5), (1, True), (1.5, "x"), (1.5, False), (True, 1), ("a", 3), ([], "x"), (1, None),
        (1.5, float("nan")), (1.5, float("inf")),
    ])
    def test_rejects(self, default, value):
        with pytest.raises(OptionError) as info:
            check_value("k", OptionInfo(default), value)
        assert info.value.key == "k"

    def test_bounds_and_choices(self):
        slider = OptionInfo(1, "s", "Slider", {"minimum": 1, "maximum": 12})
        with pytest.raises(OptionError, match="maximum"):
            check_value("k", slider, 13)
        radio = OptionInfo("png", "f", "Radio", {"choices": ["png", "jpg"]})
        with pytest.raises(OptionError, match="not one of"):
            check_value("k", radio, "gif")
        assert check_value("k", radio, "jpg") == "jpg"

    def test_validator_normalises(self):
        info = OptionInfo(None, type=str, validate=lambda v: v.upper())
        assert check_value("k", info, "abc") == "ABC"

    def test_same_value_tells_bools_from_numbers(self):
        for a, b in [(True, 1), (False, 0), (1, True), (0.0, False), ([True], [1]), ({"k": 1}, {"k": True})]:
            assert a == b and not same_value(a, b)
        for a, b in [(1, 1.0), (2.0, 2), (True, True), ([1, "a"], (1.0, "a")), ({"k": [0]}, {"k": [0.0]})]:
            assert same_value(a, b)

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(sorted(TYPED_OPTIONS) + sorted(shared_options.options_templates)), st.data())
    def test_property_what_looks_unchanged_is_valid(self, key, data):
        # Every front door skips a sent value that is "the same" as the current one without validating it, so
        # same_value must never call a value the validator would refuse the same (True for an int was skipped).
        info = TYPED_OPTIONS.get(key) or shared_options.options_templates[key]
        if info.do_not_save or callable(info.choices):
            return  # no value / choices that need a data folder: covered through the HTTP tests
        current = info.default
        lookalikes = [current, [current], str(current), True, False, 0, 1, 0.0, 1.0]
        value = data.draw(st.sampled_from(lookalikes) | JSON_VALUES)
        if same_value(current, value):
            assert same_value(check_value(key, info, value), value)

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_property_wrong_types_are_refused_naming_the_option(self, data):
        key = data.draw(st.sampled_from(sorted(TYPED_OPTIONS)))
        expected = type(TYPED_OPTIONS[key].default)
        wrong = {
            int: st.booleans() | st.text(max_size=3) | st.floats(-9, 9).filter(lambda f: not f.is_integer())
            | st.lists(st.integers(), max_size=2),
            float: st.booleans() | st.text(max_size=3) | st.just(float("nan")) | st.lists(st.floats(), max_size=2),
            bool: st.integers(-2, 2) | st.floats(-2, 2) | st.text(max_size=3) | st.lists(st.booleans(), max_size=2),
            str: st.booleans() | st.integers() | st.floats() | st.lists(st.text(max_size=2), max_size=2),
            list: st.booleans() | st.integers() | st.floats() | st.text(max_size=3),
        }[expected]
        value = data.draw(wrong)
        with pytest.raises(OptionError) as info:
            check_value(key, TYPED_OPTIONS[key], value)
        says = {int: "integer", float: "number", bool: "boolean", str: "expected str", list: "expected a list"}
        assert info.value.key == key and says[expected] in info.value.reason
        store = Options(TYPED_OPTIONS)
        with pytest.raises(OptionsRejected) as rejected:
            store.set_many({key: value})
        assert list(rejected.value.errors) == [key] and store.stored() == {}

    def test_integral_floats_stay_accepted_for_ints(self):
        # A documented decision kept from A1111: JSON clients send 2.0 for 2.
        assert check_value("k", OptionInfo(1), 2.0) == 2 and type(check_value("k", OptionInfo(1), 2.0)) is int

    @given(st.integers(-1000, 1000))
    def test_int_options_never_accept_strings(self, n):
        with pytest.raises(OptionError):
            check_value("k", OptionInfo(0), str(n))


class TestStoredAndEffective:
    def test_defaults_are_not_stored(self, opts):
        assert opts.CLIP_stop_at_last_layers == 1 and opts.stored() == {}
        assert opts.data["CLIP_stop_at_last_layers"] == 1 and "CLIP_stop_at_last_layers" in opts.data

    def test_set_validates_and_reports_change(self, opts):
        assert opts.set("CLIP_stop_at_last_layers", 2) is True
        assert opts.set("CLIP_stop_at_last_layers", 2) is False
        with pytest.raises(OptionError):
            opts.set("CLIP_stop_at_last_layers", "two")
        with pytest.raises(KeyError):
            opts.set("no_such_option", 1)
        assert opts.CLIP_stop_at_last_layers == 2

    def test_attribute_and_data_writes_are_validated(self, opts):
        opts.eta_noise_seed_delta = 31337
        opts.data["samples_save"] = False
        assert opts.stored() == {"eta_noise_seed_delta": 31337, "samples_save": False}
        with pytest.raises(OptionError):
            opts.samples_save = "no"

    def test_restricted_refused_through_api(self, opts):
        with pytest.raises(OptionError, match="restricted"):
            opts.set("outdir_samples", "/tmp", is_api=True)
        assert opts.set("outdir_samples", "/tmp") is True

    def test_set_many_is_all_or_nothing(self, opts):
        with pytest.raises(OptionsRejected) as info:
            opts.set_many({"CLIP_stop_at_last_layers": 3, "samples_format": "gif", "nope": 1})
        assert set(info.value.errors) == {"samples_format", "nope"}
        assert opts.stored() == {}

    def test_onchange_failure_puts_old_value_back(self, opts, monkeypatch):
        def fail():
            raise RuntimeError("cannot reload")
        # OptionInfo objects are shared with the process-wide store: restore the callback afterwards.
        monkeypatch.setattr(opts.data_labels["eta_noise_seed_delta"], "onchange", None)
        opts.onchange("eta_noise_seed_delta", fail, call=False)
        with pytest.raises(OptionError, match="cannot reload"):
            opts.set("eta_noise_seed_delta", 5)
        assert opts.eta_noise_seed_delta == 0 and not opts.is_stored("eta_noise_seed_delta")

    def test_unset_returns_to_default(self, opts):
        opts.set("CLIP_stop_at_last_layers", 4)
        del opts.data["CLIP_stop_at_last_layers"]
        assert opts.CLIP_stop_at_last_layers == 1 and not opts.is_stored("CLIP_stop_at_last_layers")

    def test_restore_stored_puts_a_snapshot_back_without_callbacks(self, opts, monkeypatch):
        opts.set("CLIP_stop_at_last_layers", 2)
        snapshot = opts.stored()
        calls = []
        monkeypatch.setattr(opts.data_labels["eta_noise_seed_delta"], "onchange", None)
        opts.onchange("eta_noise_seed_delta", lambda: calls.append(opts.eta_noise_seed_delta), call=False)
        opts.set("eta_noise_seed_delta", 5)
        opts.unset("CLIP_stop_at_last_layers")
        opts.restore_stored(snapshot)
        assert opts.stored() == {"CLIP_stop_at_last_layers": 2}
        assert opts.eta_noise_seed_delta == 0 and calls == [5]

    def test_add_option_checks_a_value_stored_before(self, opts, tmp_path):
        (tmp_path / "config.json").write_text(json.dumps({"ext_good": 3, "ext_bad": "x"}))
        opts.load()
        opts.add_option("ext_good", OptionInfo(1, "good", section=("ext", "Ext")))
        opts.add_option("ext_bad", OptionInfo(1, "bad", section=("ext", "Ext")))
        assert opts.ext_good == 3 and opts.ext_bad == 1

    def test_attach_gives_a_declared_option_its_checks_and_checks_the_stored_value(self, tmp_path):
        opts = Options({"late": OptionInfo("a", "late")}, filename=str(tmp_path / "config.json"))
        (tmp_path / "config.json").write_text(json.dumps({"late": "bad"}))
        opts.load()
        assert opts.late == "bad"  # nothing to check it against yet

        def validate(value):
            if value == "bad":
                raise ValueError("no such thing")
            return value.upper()

        opts.attach("late", validate=validate, choices=lambda: ["A", "B"])
        assert opts.late == "a" and not opts.is_stored("late")
        with pytest.raises(OptionError, match="late: no such thing"):
            opts.set("late", "bad")
        assert opts.set("late", "b") and opts.late == "B"
        assert opts.data_labels["late"].choices() == ["A", "B"] and opts.data_labels["late"].check_with is None

    def test_model_options_are_declared_without_checks_and_attached_by_the_model_layer(self):
        # conftest attaches them as modules.initialize does; the declarations themselves name no model code.
        for key in ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers"):
            info = shared_options.options_templates[key]
            checks = [f for f in (info.validate, info.choices, info.check_with) if f is not None]
            assert checks and all(f.__module__ in ("modules.model_options", "modules.sd_vae") for f in checks), key

    def test_cast_value(self, opts):
        assert opts.cast_value("CLIP_stop_at_last_layers", "2") == 2
        assert opts.cast_value("samples_save", "false") is False
        assert opts.cast_value("disabled_extensions", '["a"]') == ["a"]
        assert opts.cast_value("samples_format", "png") == "png"

    def test_options_section_stamps_sections(self):
        d = options_section(("s", "S", "cat"), {"a": OptionInfo(1)})
        assert d["a"].section == ("s", "S") and d["a"].category_id == "cat"


class TestFile:
    def test_round_trip_writes_only_stored_values(self, opts, tmp_path):
        opts.set("CLIP_stop_at_last_layers", 2)
        opts.set("samples_save", False)
        opts.save()
        on_disk = json.loads((tmp_path / "config.json").read_text())
        assert on_disk == {"CLIP_stop_at_last_layers": 2, "samples_save": False}
        fresh = Options(shared_options.options_templates, filename=str(tmp_path / "config.json"))
        fresh.load()
        assert fresh.stored() == on_disk and fresh.samples_save is False

    def test_save_is_atomic(self, opts, tmp_path, monkeypatch):
        opts.set("CLIP_stop_at_last_layers", 2)
        opts.save()
        before = (tmp_path / "config.json").read_bytes()
        opts.set("CLIP_stop_at_last_layers", 3)

        def broken_dump(*a, **k):
            raise OSError("disk full")
        monkeypatch.setattr(json, "dump", broken_dump)
        with pytest.raises(OSError):
            opts.save()
        assert (tmp_path / "config.json").read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temp file left behind

    def test_an_existing_file_keeps_its_mode(self, opts, tmp_path):
        target = tmp_path / "config.json"
        target.write_text("{}")
        os.chmod(target, 0o640)
        opts.set("CLIP_stop_at_last_layers", 2)
        opts.save()
        assert stat.S_IMODE(target.stat().st_mode) == 0o640 and json.loads(target.read_text())

    @pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
    def test_a_new_file_gets_the_usual_mode_under_the_umask(self, opts, tmp_path, umask, mode):
        old = os.umask(umask)
        try:
            opts.save()
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == mode

    def test_load_removes_temp_files_of_interrupted_saves_only(self, opts, tmp_path):
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
        live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            stale = [f".config-{gone.stdout.strip()}-0a1b2c3d.tmp",  # its process is gone
                     f".config-{os.getpid()}-0a1b2c3d.tmp",          # ours: no save of ours is in flight
                     ".config-k3j_x9q.tmp"]                          # an older version's name, no pid
            kept = [f".config-{live.pid}-0a1b2c3d.tmp",              # another server saving right now
                    "config.json.corrupt-20260101-000000", ".config-notes.txt"]
            for name in stale + kept:
                (tmp_path / name).write_text("{")
            opts.load()
            assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
        finally:
            live.kill()
            live.wait()

    def test_corrupt_file_is_backed_up_and_defaults_used(self, opts, tmp_path, caplog):
        (tmp_path / "config.json").write_text('{"CLIP_stop_at_last_layers": 2,')
        with caplog.at_level(logging.ERROR, logger="serena.options"):
            opts.load()
        assert opts.CLIP_stop_at_last_layers == 1 and opts.stored() == {}
        backups = [p for p in tmp_path.iterdir() if p.name.startswith("config.json.corrupt-")]
        assert len(backups) == 1 and backups[0].read_text() == '{"CLIP_stop_at_last_layers": 2,'
        assert len([r for r in caplog.records if "unreadable" in r.message]) == 1

    def test_not_an_object_counts_as_corrupt(self, opts, tmp_path):
        (tmp_path / "config.json").write_text("[1, 2]")
        opts.load()
        assert opts.stored() == {}

    def test_wrong_type_reported_default_used_kept_on_disk(self, opts, tmp_path, caplog):
        (tmp_path / "config.json").write_text(json.dumps({"CLIP_stop_at_last_layers": "two", "samples_save": False}))
        with caplog.at_level(logging.WARNING, logger="serena.options"):
            opts.load()
        assert opts.CLIP_stop_at_last_layers == 1 and opts.samples_save is False
        assert any("CLIP_stop_at_last_layers" in r.message for r in caplog.records)
        opts.save()
        assert json.loads((tmp_path / "config.json").read_text())["CLIP_stop_at_last_layers"] == "two"

    def test_unknown_keys_kept_and_readable(self, opts, tmp_path):
        (tmp_path / "config.json").write_text(json.dumps({"removed_extension_option": 5}))
        opts.load()
        assert opts.removed_extension_option == 5 and opts.data["removed_extension_option"] == 5
        with pytest.raises(AttributeError):
            opts.never_heard_of_it
        opts.save()
        assert json.loads((tmp_path / "config.json").read_text()) == {"removed_extension_option": 5}

    def test_missing_file_means_defaults(self, opts):
        opts.load()
        assert opts.stored() == {}
        assert not os.path.exists(opts.filename)


class TestFrozen:
    def test_set_save_and_attribute_writes_refused(self, opts):
        opts.frozen = True
        with pytest.raises(SettingsFrozenError, match="--freeze-settings"):
            opts.set("CLIP_stop_at_last_layers", 2)
        with pytest.raises(SettingsFrozenError):
            opts.CLIP_stop_at_last_layers = 2
        with pytest.raises(SettingsFrozenError):
            opts.save()
        assert opts.CLIP_stop_at_last_layers == 1


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["CLIP_stop_at_last_layers", "eta_noise_seed_delta", "samples_save",
                                        "samples_format"]),
                       st.one_of(st.integers(-5, 20), st.booleans(), st.text(max_size=4), st.floats(0, 10))))
def test_property_check_never_half_applies(values):
    opts = Options(shared_options.options_templates)
    try:
        opts.set_many(values)
    except OptionsRejected as e:
        assert opts.stored() == {} and set(e.errors) <= set(values)
    else:
        assert set(opts.stored()) <= set(values)
