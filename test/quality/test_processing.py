"""process_images / process_images_inner: overrides through the seam, once per generation, no leaks."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from modules import jobs, processing, shared
from modules.hookspecs import hookimpl
from modules.runtime_utils import OverrideError, active_overrides


class RecordingTxt2Img(processing.StableDiffusionProcessingTxt2Img):
    """Records the effective options each batch saw, instead of running a model."""

    def sample_batch(self, model, prompts, negative_prompts, seeds, subseeds):
        self.seen = getattr(self, "seen", [])
        self.seen.append({"clip_skip": shared.opts.CLIP_stop_at_last_layers, "model": model.info.name,
                          "vae": model.vae_name, "stack": active_overrides()})
        return [Image.new("RGB", (self.width, self.height), (seed % 256, 0, 0)) for seed in seeds]


def make_p(**kw):
    defaults = dict(prompt="a cat", steps=2, width=64, height=64, seed=5, do_not_save_samples=True)
    defaults.update(kw)
    return RecordingTxt2Img(**defaults)


def test_overrides_apply_for_the_generation_only(data_dir, fake_models):
    p = make_p(override_settings={"CLIP_stop_at_last_layers": 2})
    processed = processing.process_images(p)
    assert p.seen[0]["clip_skip"] == 2 and processed.clip_skip == 2
    assert "Clip skip: 2" in processed.infotexts[0]
    assert shared.opts.CLIP_stop_at_last_layers == 1 and shared.opts.stored() == {}
    nxt = processing.process_images(make_p())
    assert "Clip skip" not in nxt.infotexts[0] and nxt.clip_skip == 1


def test_hooks_fire_once_per_generation(data_dir, fake_models, override_counter):
    counter = override_counter
    processing.process_images(make_p(override_settings={"CLIP_stop_at_last_layers": 2}, n_iter=3))
    assert (counter.enter, counter.exit) == (1, 1)


def test_direct_inner_call_applies_once(data_dir, fake_models, override_counter):
    counter = override_counter
    p = make_p(override_settings={"CLIP_stop_at_last_layers": 3})
    processing.process_images_inner(p)
    assert p.seen[0]["clip_skip"] == 3 and (counter.enter, counter.exit) == (1, 1)
    assert shared.opts.CLIP_stop_at_last_layers == 1


def test_nested_generation_composes(data_dir, fake_models, register, override_counter):
    """An extension running its own generation inside one (as detailers do) nests cleanly."""
    inner_seen = []

    class Detailer:
        @hookimpl
        def on_postprocess(self, p):
            if getattr(p, "is_inner", False):
                return
            inner = make_p(override_settings={"eta_noise_seed_delta": 9})
            inner.is_inner = True
            processing.process_images(inner)
            inner_seen.append((inner.seen[0]["clip_skip"], shared.opts.eta_noise_seed_delta,
                               [layer["depth"] for layer in inner.seen[0]["stack"]]))

    counter = override_counter
    register(Detailer(), "detailer")
    processing.process_images(make_p(override_settings={"CLIP_stop_at_last_layers": 2}))
    assert inner_seen == [(2, 0, [1, 2])]  # outer clip skip visible inside; inner ENSD gone after
    assert (counter.enter, counter.exit) == (2, 2)
    assert shared.opts.CLIP_stop_at_last_layers == 1 and shared.opts.layers() == ()


def test_invalid_overrides_fail_before_anything(data_dir, fake_models, override_counter):
    counter = override_counter
    p = make_p(override_settings={"CLIP_stop_at_last_layers": "x", "nope": 1})
    with pytest.raises(OverrideError) as info:
        processing.process_images(p)
    assert set(info.value.errors) == {"CLIP_stop_at_last_layers", "nope"}
    assert not hasattr(p, "seen") and counter.enter == 0


def test_checkpoint_override_runs_on_that_model(data_dir, fake_models):
    p = make_p(override_settings={"sd_model_checkpoint": "beta"})
    processed = processing.process_images(p)
    assert p.seen[0]["model"] == "beta.safetensors" and processed.sd_model_name == "beta"
    q = make_p()
    processing.process_images(q)
    assert q.seen[0]["model"] == "alpha.safetensors"


def test_before_process_may_add_overrides(data_dir, fake_models, register):
    class Adder:
        @hookimpl
        def on_before_process(self, p):
            p.override_settings["CLIP_stop_at_last_layers"] = 4

    register(Adder(), "adder")
    p = make_p()
    processing.process_images(p)
    assert p.seen[0]["clip_skip"] == 4 and shared.opts.CLIP_stop_at_last_layers == 1


def test_restore_afterwards_false_keeps_stored_value(data_dir, fake_models):
    processing.process_images(make_p(override_settings={"CLIP_stop_at_last_layers": 2},
                                     override_settings_restore_afterwards=False))
    assert shared.opts.CLIP_stop_at_last_layers == 2
    assert not (data_dir / "config.json").exists()


def test_seeds(data_dir, fake_models):
    p = make_p(seed=10, batch_size=2, n_iter=2)
    processed = processing.process_images(p)
    assert processed.all_seeds == [10, 11, 12, 13] and len(processed.images) == 4
    r = processing.process_images(make_p(seed=-1))
    assert 0 <= r.seed < 2**32


def test_info_json_has_a1111_fields(data_dir, fake_models):
    info = json.loads(processing.process_images(make_p()).js())
    for key in ("prompt", "all_prompts", "seed", "all_seeds", "infotexts", "sd_model_hash", "clip_skip",
                "sampler_name", "cfg_scale", "steps", "width", "height", "job_timestamp"):
        assert key in info


@pytest.mark.parametrize("field,value", [("width", 60), ("steps", 0), ("sampler_name", "Nope"),
                                         ("scheduler", "Nope")])
def test_check_inputs_names_the_field(data_dir, fake_models, field, value):
    with pytest.raises(ValueError) as info:
        processing.process_images(make_p(**{field: value}))
    assert field in str(info.value) or str(value) in str(info.value)


def test_saves_numbered_files_and_never_overwrites(data_dir, fake_models, register):
    saved = []

    class Saver:
        @hookimpl
        def on_image_saved(self, params):
            saved.append((params.filename, shared.opts.CLIP_stop_at_last_layers))

    register(Saver(), "saver")
    processing.process_images(make_p(do_not_save_samples=False, batch_size=2,
                                     override_settings={"CLIP_stop_at_last_layers": 2}))
    processing.process_images(make_p(do_not_save_samples=False))
    names = sorted(p.split("/")[-1] for p, _ in saved)
    assert names[0].startswith("00000-") and names[2].startswith("00002-") and len(set(names)) == 3
    assert [c for _, c in saved] == [2, 2, 1]
    text = Image.open(saved[0][0]).info["parameters"]
    assert "Clip skip: 2" in text


def test_interrupt_stops_and_restores(data_dir, fake_models):
    class Interrupting(RecordingTxt2Img):
        def sample_batch(self, *a):
            jobs.state.interrupt()
            return super().sample_batch(*a)

    p = Interrupting(prompt="x", steps=2, width=64, height=64, n_iter=5, do_not_save_samples=True,
                     override_settings={"CLIP_stop_at_last_layers": 2})
    processed = jobs.run_job("txt2img", processing.process_images, p)
    assert len(processed.images) == 1 and shared.opts.CLIP_stop_at_last_layers == 1
    assert not jobs.state.busy


def test_pipeline_gets_a_settings_snapshot(data_dir, fake_models):
    """M07: the pipeline receives the effective options captured inside the overrides, not the store."""
    p = make_p(override_settings={"CLIP_stop_at_last_layers": 3, "eta_noise_seed_delta": 7})
    processed = processing.process_images(p)
    assert p.settings == processing.GenerationSettings(clip_skip=3, eta_noise_seed_delta=7, randn_source="CPU")
    assert "ENSD: 7" in processed.infotexts[0] and processed.clip_skip == 3
    assert shared.opts.CLIP_stop_at_last_layers == 1


def test_nested_generation_cannot_switch_the_outer_vae(data_dir, fake_models, register, monkeypatch):
    """A detailer's nested generation with another VAE must not leave the outer one's next batch on it."""
    from modules import sd_models
    monkeypatch.setitem(sd_models._vae_cache, "sharp.safetensors", "a loaded VAE")

    class Detailer:
        @hookimpl
        def on_infotext(self, p):
            if not getattr(p, "is_inner", False):
                inner = make_p(override_settings={"sd_vae": "None"})
                inner.is_inner = True
                processing.process_images(inner)

    register(Detailer(), "detailer")
    p = make_p(n_iter=2, override_settings={"sd_vae": "sharp.safetensors"})
    processed = processing.process_images(p)
    assert [s["vae"] for s in p.seen] == ["sharp.safetensors", "sharp.safetensors"]
    assert all("VAE: sharp.safetensors" in t for t in processed.infotexts)
