"""Checkpoints and VAEs are checked before they are chosen; model-dependent options are checked against the model.

Issue 13, defects 7 (clip skip deeper than the model) and 11 (a corrupt checkpoint bricks the server), and the fault
"a checkpoint truncated between listing and loading". Real files throughout: copies of the shipped tiny
checkpoints, a tiny checkpoint with a 4-layer text encoder and a VAE with 8 latent channels written by the loader,
the real loader, the real pipeline (2 steps at 64x64) and the HTTP API in-process.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import CLIPTextConfig, CLIPTextModel

from modules import jobs, model_families, paths, processing, sd_models, shared
from modules import sd_models_loader as loader, sd_models_writer as writer
from modules.checkpoint_info import CheckpointInfo
from modules.hookspecs import hookimpl
from modules.model_facts import ModelFacts
from modules.runtime_utils import OverrideError, temporary_opts

SHIPPED = os.path.join(paths.script_path, "models")
TINY = os.path.join(SHIPPED, "Stable-diffusion", "serena-tiny-v1.safetensors")
TINY_ALT = os.path.join(SHIPPED, "Stable-diffusion", "serena-tiny-alt.safetensors")
TINY_VAE = os.path.join(SHIPPED, "VAE", "serena-tiny-vae.safetensors")
TXT = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "seed": 3, "cfg_scale": 4}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A checkpoint whose text encoder has 4 layers, and a VAE with 8 latent channels, written by the loader."""
    folder = tmp_path_factory.mktemp("made")
    torch.manual_seed(1)
    unet = UNet2DConditionModel(sample_size=8, layers_per_block=1, block_out_channels=(32, 32, 64, 64),
                                cross_attention_dim=32, attention_head_dim=8)
    vae = AutoencoderKL(layers_per_block=1, block_out_channels=(32, 32, 64, 64), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, hidden_size=32,
                                        intermediate_size=37, num_attention_heads=4, num_hidden_layers=4))
    deep = folder / "deep.safetensors"
    writer.save_ldm_checkpoint(str(deep), unet=unet, vae=vae, text_encoder=text,
                               scheduler_config=loader.default_configs()["scheduler"])
    wide_vae = AutoencoderKL(layers_per_block=1, block_out_channels=(8, 16), latent_channels=8,
                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             norm_num_groups=8)
    wide = folder / "wide-latents.safetensors"
    writer.save_ldm_vae(str(wide), wide_vae)
    return {"deep": str(deep), "wide": str(wide)}


@pytest.fixture
def models(tmp_path, monkeypatch, made):
    """A data folder with real checkpoints (``a-tiny`` is the default: first by name) and VAEs, the real
    loaded-models cache, and ``shared.opts`` bound to its config.json."""
    sd_dir, vae_dir = tmp_path / "models" / "Stable-diffusion", tmp_path / "models" / "VAE"
    sd_dir.mkdir(parents=True)
    vae_dir.mkdir(parents=True)
    for name, src in (("a-tiny", TINY), ("b-alt", TINY_ALT), ("c-deep", made["deep"])):
        shutil.copy(src, sd_dir / f"{name}.safetensors")
    shutil.copy(TINY_VAE, vae_dir / "tiny-vae.safetensors")
    shutil.copy(made["wide"], vae_dir / "wide-latents.safetensors")
    monkeypatch.setattr(shared, "data_paths",
                        paths.Paths(str(tmp_path), str(tmp_path / "config.json"), shipped_models=False))
    monkeypatch.setattr(sd_models, "_cache_file", None)
    monkeypatch.setattr(sd_models, "_vae_cache", {})
    inspected = []

    def inspect(kind, path):
        inspected.append((kind, os.path.basename(path)))
        return sd_models.inspect_on_disk(kind, path)

    manager = sd_models.LoadedModels(sd_models.load_from_disk, inspect)
    manager.inspected = inspected
    monkeypatch.setattr(sd_models, "model_manager", manager)
    monkeypatch.setattr(shared.opts, "filename", str(tmp_path / "config.json"))
    shared.opts.load()
    sd_models.refresh_checkpoints()  # listed (and hashed) while every file is whole
    yield sd_dir
    shared.opts.load(str(tmp_path / "does-not-exist.json"))


def truncate(path, keep: float = 0.5):
    size = os.path.getsize(path)
    os.truncate(path, int(size * keep))


@pytest.fixture
def client(models, api_client):
    yield api_client
    assert not jobs.queue_lock.locked() and not jobs.state.busy


def title(name: str) -> str:
    return sd_models.resolve_checkpoint(name).title


def generate(client, **fields):
    return client.post("/sdapi/v1/txt2img", json={**TXT, **fields})


# --- the loader's checks, on the meta device ------------------------------------------------------------------------

def test_inspection_gives_what_the_model_can_do(made):
    assert loader.inspect_checkpoint(TINY) == ModelFacts(text_encoder_layers=2, latent_channels=4,
                                                                native_size=64, cfg_scale=None,
                                                                text_encoder_widths=(32,), family="sd1")
    assert loader.inspect_checkpoint(made["deep"]).text_encoder_layers == 4
    assert loader.inspect_vae(made["wide"]) == ModelFacts(text_encoder_layers=None, latent_channels=8)
    # A loaded model reports the same facts as its header did.
    model = loader.load_checkpoint(CheckpointInfo(made["deep"], "deep.safetensors", "0" * 64))
    assert model.facts == loader.inspect_checkpoint(made["deep"])


def test_inspections_in_other_threads_never_leave_loads_without_weights():
    """Requests validate checkpoints in their own threads while a job loads one. A process-wide empty-weights
    patch (accelerate's init_empty_weights) in the inspection left torch patched when the two overlapped, and
    every model built afterwards had meta tensors: the server could not load any checkpoint."""
    import threading

    register_parameter = torch.nn.Module.register_parameter
    stop = threading.Event()

    def inspect_forever():
        while not stop.is_set():
            loader.inspect_checkpoint(TINY)

    threads = [threading.Thread(target=inspect_forever) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(4):  # two threads inspect throughout: every load overlaps many inspections
            model = loader.load_checkpoint(CheckpointInfo(TINY, "tiny.safetensors", "0" * 64))
            tensors = [*model.unet.parameters(), *model.text_encoder.buffers(), *model.vae.parameters()]
            assert all(t.device.type == "cpu" for t in tensors)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert torch.nn.Module.register_parameter is register_parameter


def sparse_sd15(path) -> int:
    """An SD1.5-layout checkpoint (SD1.5's configs, 2.1 GB of fp16) whose data is a hole: a sparse file."""
    configs = loader.default_configs()
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    header, offset = {}, 0
    for key, tensor in writer.ldm_state_dict(unet, vae, text).items():
        header[key] = {"dtype": "F16", "shape": list(tensor.shape), "data_offsets": [offset, offset + 2 * tensor.numel()]}
        offset += 2 * tensor.numel()
    data = json.dumps(header).encode()
    data += b" " * (-len(data) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(data)) + data)
    os.truncate(path, 8 + len(data) + offset)
    return 8 + len(data) + offset


def test_a_full_size_sd15_checkpoint_passes_from_its_header(tmp_path):
    """Real SD1.5 files must not be refused: the SD1.5 layout at full size, with no weight ever read."""
    path = tmp_path / "v1-5-layout.safetensors"
    size = sparse_sd15(path)
    assert size > 2 * 10**9
    assert loader.inspect_checkpoint(str(path)) == ModelFacts(text_encoder_layers=12, latent_channels=4,
                                                                     native_size=512, text_encoder_widths=(768,),
                                                                     family="sd1")
    # The family is told from the real SD1.5 key names and shapes: conv_in's 4 channels, CLIP ViT-L's 768.
    found = model_families.detect_path(str(path))
    assert (found.name, found.in_channels, found.context_dim) == ("sd1", 4, 768)
    os.truncate(path, size - 1)
    with pytest.raises(ValueError, match="v1-5-layout.safetensors: corrupt or truncated"):
        loader.inspect_checkpoint(str(path))


def test_inspection_reads_no_weight(monkeypatch):
    real_open = loader.safe_open

    class NoReads:
        def __init__(self, *args, **kwargs):
            self._f = real_open(*args, **kwargs)

        def __enter__(self):
            self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def get_tensor(self, key):
            raise AssertionError(f"inspection read the weights of {key}")

        def __getattr__(self, name):
            return getattr(self._f, name)

    monkeypatch.setattr(loader, "safe_open", NoReads)
    assert loader.inspect_checkpoint(TINY).text_encoder_layers == 2
    assert loader.inspect_vae(TINY_VAE).latent_channels == 4


@settings(max_examples=25, deadline=None)
@given(st.floats(0.0, 0.99999))
def test_every_truncation_is_refused_by_name(tmp_path_factory, keep):
    path = tmp_path_factory.mktemp("cut") / "cut.safetensors"
    shutil.copy(TINY, path)
    truncate(path, keep)
    with pytest.raises(ValueError, match=r"^cut\.safetensors: corrupt or truncated \.safetensors file"):
        loader.inspect_checkpoint(str(path))


def test_a_pickled_checkpoint_is_refused_unless_allowed_then_checked(tmp_path, monkeypatch):
    tensors, metadata = loader.read_state_dict(TINY)
    # A pickle carries no configs: make the tiny model's configs the "SD1.5 defaults" it is read with.
    configs = json.loads(metadata[loader.METADATA_KEY])
    for component, rel in loader._COMPONENT_FILES.items():
        (tmp_path / "v1" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "v1" / rel).write_text(json.dumps(configs[component]))
    monkeypatch.setattr(loader, "V1_CONFIG_DIR", str(tmp_path / "v1"))
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": tensors}, path)
    with pytest.raises(ValueError, match="old.ckpt: pickled checkpoints can run arbitrary code"):
        loader.inspect_checkpoint(str(path))
    assert loader.inspect_checkpoint(str(path), allow_pickle=True).text_encoder_layers == 2
    truncate(path)
    with pytest.raises(ValueError, match="old.ckpt: cannot read pickled checkpoint"):
        loader.inspect_checkpoint(str(path), allow_pickle=True)


def test_a_header_that_does_not_fit_the_model_is_refused(tmp_path):
    tensors, metadata = loader.read_state_dict(TINY)
    key = next(k for k in tensors if k.startswith(loader.TEXT_PREFIX) and k.endswith("q_proj.weight"))
    tensors[key] = torch.zeros(3, 3, dtype=tensors[key].dtype)
    writer._write_safetensors(str(tmp_path / "misfit.safetensors"), tensors, metadata, torch.float16)
    with pytest.raises(ValueError, match="misfit.safetensors: text encoder weights do not fit its config"):
        loader.inspect_checkpoint(str(tmp_path / "misfit.safetensors"))
    no_text = {k: v for k, v in tensors.items() if not k.startswith("cond_stage_model.")}
    writer._write_safetensors(str(tmp_path / "half.safetensors"), no_text, metadata, torch.float16)
    with pytest.raises(ValueError, match="half.safetensors: not a Stable Diffusion 1.x checkpoint.*text encoder"):
        loader.inspect_checkpoint(str(tmp_path / "half.safetensors"))


def test_inspection_is_cached_by_path_size_and_mtime(models):
    manager = sd_models.model_manager
    info = sd_models.resolve_checkpoint("b-alt")
    manager.inspected.clear()
    for _ in range(3):
        assert manager.facts(info).text_encoder_layers == 2
    assert manager.inspected == [("checkpoint", "b-alt.safetensors")]
    st = os.stat(info.filename)
    os.utime(info.filename, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    manager.facts(info)
    assert len(manager.inspected) == 2
    truncate(info.filename)
    with pytest.raises(ValueError, match="b-alt.safetensors: corrupt or truncated"):
        manager.facts(info)
    with pytest.raises(ValueError, match="b-alt.safetensors: corrupt or truncated"):
        manager.facts(info)  # the failure is cached too
    assert len(manager.inspected) == 3


# --- defect 11: a corrupt checkpoint is refused by name, never a 500 -------------------------------------------------

def test_selecting_a_truncated_checkpoint_is_a_422_naming_the_file(client, models):
    truncate(models / "b-alt.safetensors")
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "b-alt", "samples_save": False})
    assert r.status_code == 422, r.text
    reason = r.json()["errors"]["sd_model_checkpoint"]
    assert "b-alt.safetensors" in reason and "truncated" in reason
    assert shared.opts.stored() == {}  # nothing half-applied: samples_save was not stored either
    assert generate(client).status_code == 200


def test_overriding_with_a_truncated_checkpoint_is_a_422(client, models):
    truncate(models / "b-alt.safetensors")
    r = generate(client, override_settings={"sd_model_checkpoint": "b-alt"})
    assert r.status_code == 422 and "truncated" in r.json()["errors"]["sd_model_checkpoint"]
    v = client.post("/serena/v1/overrides/validate", json={"sd_model_checkpoint": "b-alt"}).json()
    assert v["valid"] is False and "b-alt.safetensors" in v["errors"]["sd_model_checkpoint"]
    ok = generate(client)
    assert ok.status_code == 200 and json.loads(ok.json()["info"])["sd_model_name"] == "a-tiny"


class Truncator:
    """Truncates ``b-alt`` after the override naming it was validated, before the core's hook switches to it."""

    def __init__(self, folder):
        self.folder = folder
        self.exits = []

    @hookimpl(tryfirst=True)
    def on_opts_override_enter(self, overrides):
        if "b-alt" in str(overrides.get("sd_model_checkpoint")):
            truncate(self.folder / "b-alt.safetensors")

    @hookimpl
    def on_opts_override_exit(self, overrides, error):
        self.exits.append((overrides.get("sd_model_checkpoint", "").split(" ")[0], type(error).__name__))


def test_truncated_after_listing_and_validation_keeps_the_current_model(client, models, register):
    """The fault test: listed and validated fine, truncated on disk just before the switch reads it."""
    assert generate(client).status_code == 200
    truncator = register(Truncator(models), "truncator")
    r = generate(client, override_settings={"sd_model_checkpoint": "b-alt"})
    assert r.status_code == 422, r.text
    assert "b-alt.safetensors" in r.json()["errors"]["sd_model_checkpoint"]
    assert truncator.exits == [("b-alt.safetensors", "CheckpointLoadError")]  # the owed exit ran, with the error
    manager = sd_models.model_manager
    assert manager.current.name == "a-tiny.safetensors" and manager.cached() == [manager.current.filename]
    again = generate(client)
    assert again.status_code == 200 and manager.loads == 1  # the model in use kept working, not reloaded


def test_a_failed_inner_switch_leaves_the_outer_model_and_runs_every_exit(models, register):
    truncator = register(Truncator(models), "truncator")
    with temporary_opts({"sd_model_checkpoint": "c-deep"}):
        outer = sd_models.current_model()
        with pytest.raises(sd_models.CheckpointLoadError, match="b-alt.safetensors"):
            with temporary_opts({"sd_model_checkpoint": "b-alt"}):
                sd_models.current_model()
        assert sd_models.current_model() is outer and sd_models.model_manager.current.name == "c-deep.safetensors"
        # And once broken, the same override is refused before anything is applied.
        with pytest.raises(OverrideError, match="b-alt.safetensors: corrupt or truncated"):
            with temporary_opts({"sd_model_checkpoint": "b-alt"}):
                pass
    assert truncator.exits == [("b-alt.safetensors", "CheckpointLoadError"), ("c-deep.safetensors", "NoneType")]
    assert sd_models.model_manager.loads == 1


def test_a_stored_checkpoint_truncated_later_falls_back_with_a_warning(client, models, caplog):
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "b-alt"}).status_code == 200
    assert json.loads(generate(client).json()["info"])["sd_model_name"] == "b-alt"
    truncate(models / "b-alt.safetensors")
    # Still in memory: the model in use keeps working without reading the disk.
    assert json.loads(generate(client).json()["info"])["sd_model_name"] == "b-alt"
    client.post("/sdapi/v1/unload-checkpoint")
    with caplog.at_level(logging.WARNING, logger="serena.sd_models"):
        r = generate(client)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["sd_model_name"] == "a-tiny"
    assert any("b-alt.safetensors" in w and "a-tiny" in w for w in r.json()["warnings"])
    assert any("b-alt.safetensors" in rec.getMessage() for rec in caplog.records)
    assert shared.opts.sd_model_checkpoint == title("b-alt")  # the setting is kept, not rewritten


def test_at_start_up_a_broken_stored_checkpoint_falls_back_and_stays_on_disk(models, caplog):
    stored = title("b-alt")
    config = shared.data_paths.config_file
    with open(config, "w") as f:
        json.dump({"sd_model_checkpoint": stored, "samples_save": False}, f)
    truncate(models / "b-alt.safetensors")
    with caplog.at_level(logging.WARNING):
        shared.opts.load()  # a restart reads the settings again
    assert any("sd_model_checkpoint" in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)
    assert sd_models.current_model().info.name == "a-tiny.safetensors"
    p = processing.StableDiffusionProcessingTxt2Img(**TXT, do_not_save_samples=True)
    assert processing.process_images(p).sd_model_name == "a-tiny"
    shared.opts.set("samples_save", True)
    shared.opts.save()
    with open(config) as f:
        assert json.load(f)["sd_model_checkpoint"] == stored  # the user's choice returns once the file is fixed


def test_the_default_passes_over_a_broken_file(models):
    truncate(models / "a-tiny.safetensors")
    assert sd_models.default_checkpoint().name == "b-alt.safetensors"
    assert sd_models.current_model().info.name == "b-alt.safetensors"


# --- defect 7: clip skip (and VAE) against the model the generation runs on -----------------------------------------

def test_clip_skip_deeper_than_the_model_is_a_422_naming_the_limit(client):
    for call in (lambda: client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3}),
                 lambda: generate(client, override_settings={"CLIP_stop_at_last_layers": 3}),
                 lambda: generate(client, override_settings={"CLIP_stop_at_last_layers": 3},
                                  override_settings_restore_afterwards=False)):
        r = call()
        assert r.status_code == 422, r.text
        reason = r.json()["errors"]["CLIP_stop_at_last_layers"]
        assert "a-tiny.safetensors" in reason and "2 layers" in reason
    v = client.post("/serena/v1/overrides/validate", json={"CLIP_stop_at_last_layers": 12}).json()
    assert v["valid"] is False and "at most 2" in v["errors"]["CLIP_stop_at_last_layers"]
    assert shared.opts.stored() == {}
    r = generate(client, override_settings={"CLIP_stop_at_last_layers": 2})
    assert r.status_code == 200 and json.loads(r.json()["info"])["clip_skip"] == 2


def test_clip_skip_is_checked_against_the_checkpoint_of_the_same_request(client):
    r = generate(client, override_settings={"CLIP_stop_at_last_layers": 4, "sd_model_checkpoint": "c-deep"})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert (info["clip_skip"], info["sd_model_name"]) == (4, "c-deep")
    r = generate(client, override_settings={"CLIP_stop_at_last_layers": 5, "sd_model_checkpoint": "c-deep"})
    assert r.status_code == 422 and "4 layers" in r.json()["errors"]["CLIP_stop_at_last_layers"]
    v = client.post("/serena/v1/overrides/validate",
                    json={"CLIP_stop_at_last_layers": 3, "sd_model_checkpoint": "c-deep"}).json()
    assert v["valid"] is True
    kept = generate(client, override_settings={"CLIP_stop_at_last_layers": 3, "sd_model_checkpoint": "c-deep"},
                    override_settings_restore_afterwards=False)
    assert kept.status_code == 200, kept.text
    assert shared.opts.stored() == {"CLIP_stop_at_last_layers": 3, "sd_model_checkpoint": title("c-deep")}


def test_a_stored_clip_skip_a_new_model_cannot_honour_is_clamped_with_a_warning(client, caplog):
    # Clip skip first: it is checked against the checkpoint stored with it, whatever the order of the keys.
    r = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 4, "sd_model_checkpoint": "c-deep"})
    assert r.status_code == 200, r.text
    assert shared.opts.stored() == {"CLIP_stop_at_last_layers": 4, "sd_model_checkpoint": title("c-deep")}
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "a-tiny"}).status_code == 200
    with caplog.at_level(logging.WARNING, logger="serena.processing"):
        r = generate(client)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    assert any("Clip skip 4" in w and "2 layers" in w for w in r.json()["warnings"])
    assert any("Clip skip 4" in rec.getMessage() for rec in caplog.records)
    assert shared.opts.CLIP_stop_at_last_layers == 4  # stored value kept: the deep model honours it again
    back = generate(client, override_settings={"sd_model_checkpoint": "c-deep"})
    assert json.loads(back.json()["info"])["clip_skip"] == 4 and back.json()["warnings"] == []


def test_a_vae_whose_latents_do_not_fit_is_refused(client, models):
    r = client.post("/sdapi/v1/options", json={"sd_vae": "wide-latents.safetensors"})
    assert r.status_code == 422
    assert "8-channel latents" in r.json()["errors"]["sd_vae"] and "a-tiny" in r.json()["errors"]["sd_vae"]
    assert generate(client, override_settings={"sd_vae": "tiny-vae.safetensors"}).status_code == 200
    truncate(models.parent / "VAE" / "tiny-vae.safetensors")
    r = generate(client, override_settings={"sd_vae": "tiny-vae.safetensors"})
    assert r.status_code == 422 and "tiny-vae.safetensors: corrupt or truncated" in r.json()["errors"]["sd_vae"]


def test_the_api_never_answers_500_for_a_broken_file(client, models):
    """Every front door, with one broken checkpoint and one broken VAE: 4xx or a working generation."""
    truncate(models / "b-alt.safetensors")
    truncate(models.parent / "VAE" / "tiny-vae.safetensors")
    calls = [("/sdapi/v1/options", {"sd_model_checkpoint": "b-alt"}),
             ("/sdapi/v1/options", {"sd_vae": "tiny-vae.safetensors"}),
             ("/sdapi/v1/txt2img", {**TXT, "override_settings": {"sd_model_checkpoint": "b-alt"}}),
             ("/sdapi/v1/txt2img", {**TXT, "override_settings": {"sd_vae": "tiny-vae"}}),
             ("/sdapi/v1/txt2img", TXT)]
    statuses = [client.post(path, json=body).status_code for path, body in calls]
    assert statuses == [422, 422, 422, 422, 200]


def test_start_up_with_a_broken_ckpt_flag_starts_on_a_working_model(models, tmp_path, start_with_ckpt):
    broken = tmp_path / "elsewhere" / "broken.safetensors"
    broken.parent.mkdir()
    shutil.copy(TINY_ALT, broken)
    truncate(broken)
    warnings = start_with_ckpt(broken)
    assert any("broken.safetensors" in w and "truncated" in w for w in warnings)
    assert not shared.opts.is_stored("sd_model_checkpoint")
    assert sd_models.current_model().info.name == "a-tiny.safetensors"


def test_start_up_attaches_the_model_checks_before_the_settings_load(tmp_path):
    # A fresh process (this one has them attached by conftest): initialize alone must give the model options their
    # checks, in time for a stored value to be checked against the models.
    import subprocess
    import sys
    (tmp_path / "config.json").write_text(json.dumps({"sd_model_checkpoint": "no-such-model", "sd_vae": "nope"}))
    script = ("import sys; from modules import cmd_args, initialize, shared; "
              "initialize.initialize(cmd_args.parse_args(['--data-dir', sys.argv[1]]), load_extensions=False); "
              "print(sorted(shared.opts.stored()))")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=paths.script_path, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=paths.script_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert "sd_model_checkpoint='no-such-model' ignored (no checkpoint named 'no-such-model'" in done.stderr
    assert "sd_vae='nope' ignored (no VAE named 'nope'" in done.stderr
