"""The options store: typed validation, stored vs effective values, atomic save, forgiving load."""

from __future__ import annotations

import json
import logging
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules import sd_models, shared_options
from modules.options import (OptionError, OptionInfo, Options, OptionsRejected, SettingsFrozenError, check_value,
                             options_section)


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
