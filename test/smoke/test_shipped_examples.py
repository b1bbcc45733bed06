"""The shipped extra-network examples (``tools/train_examples.py``) work with the embedded default model.

``embeddings/serena-night.safetensors`` is found where Serena looks by default, listed as loaded for
``serena-shapes-v1``, and its trigger word puts the shapes on black, as the prompt-adherence oracle
(``bench/prompt_adherence.py --examples``) scores it, on the same prompts and seeds that without it do not.
``models/Lora/serena-heart.safetensors`` is a kohya-format LoRA whose every layer is a layer of the model; through
the built-in Lora extension its tag draws hearts, a shape the model never drew, by its weight, and the next
generation without it is the one before it, byte for byte.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from modules import cmd_args, extensions, extra_networks, jobs, paths, processing, sd_models, shared

ROOT = paths.script_path
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import prompt_adherence  # noqa: E402

EMBEDDING = os.path.join(ROOT, "embeddings", "serena-night.safetensors")
LORA = os.path.join(ROOT, "models", "Lora", "serena-heart.safetensors")
NIGHT, HEART = prompt_adherence.EXAMPLES["serena-night"], prompt_adherence.EXAMPLES["serena-heart"]
#: Example prompts checked here (six colours, every shape, for the embedding; hearts in four colours for the LoRA);
#: few steps keep it quick.
NIGHT_CASES, HEART_CASES, STEPS = [0, 5, 10, 15, 16, 21], [0, 1, 2, 5, 14, 15], 12


@pytest.fixture(scope="module")
def shipped(real_env):
    """``real_env`` with the shipped embeddings folder, as a data folder at the repository root has it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shared, "data_paths", dataclasses.replace(shared.data_paths,
                                                             embeddings=os.path.join(ROOT, "embeddings")))
        yield real_env


@pytest.fixture
def lora_extension(shipped, plugin_host, monkeypatch):
    """The built-in Lora extension loaded on this test's host, as Serena loads it at start-up."""
    monkeypatch.setattr(shared.opts, "data_labels", dict(shared.opts.data_labels))
    ext = extensions.load_folder(os.path.join(ROOT, "extensions-builtin", "Lora"), host=plugin_host,
                                 group="builtin")
    assert ext.loaded and not ext.problems, ext.problems
    assert extensions.register_extension_options(plugin_host, only=ext.plugins) == []
    yield
    extensions.unload([ext], plugin_host)


def run(case):
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt=case.prompt, negative_prompt="", steps=STEPS, width=64, height=64, seed=case.seed,
        sampler_name="Euler a", cfg_scale=4.0, do_not_save_samples=True)
    return jobs.run_job("test", processing.process_images, p)


@pytest.mark.parametrize("path", [EMBEDDING, LORA])
def test_examples_ship_where_serena_looks_and_are_small(path):
    default_embeddings = paths.from_cmd_opts(cmd_args.parse_args([])).embeddings_dir
    assert os.path.dirname(path) in (default_embeddings, *shared.data_paths.model_dirs("Lora"))
    assert os.path.getsize(path) < (16 << 10 if path == EMBEDDING else 1 << 20)
    # Its Extra Networks card has an image (tools/train_examples.py previews).
    preview = extra_networks.find_preview(path)
    assert preview == os.path.splitext(path)[0] + ".preview.png"
    for shipped_file in (path, preview):
        ignored = subprocess.run(["git", "check-ignore", "-q", shipped_file], cwd=ROOT)
        assert ignored.returncode == 1, f"{shipped_file} is git-ignored"


def test_shipped_embedding_is_loaded_for_the_default_model(shipped):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules.api.api import Api

    app = FastAPI()
    Api(app)
    with TestClient(app) as client:
        body = client.get("/sdapi/v1/embeddings").json()
    assert sd_models.effective_checkpoint().name == "serena-shapes-v1.safetensors"
    assert body["loaded"]["serena-night"]["vectors"] == 2
    assert body["loaded"]["serena-night"]["shape"] == 64  # the default model's text encoder width
    assert "serena-night" not in body["skipped"]


def test_trigger_word_changes_the_background(shipped):
    cases = [prompt_adherence.example_cases(NIGHT.name)[i] for i in NIGHT_CASES]
    without = prompt_adherence.example_score(NIGHT, cases, [run(c).images[0] for c in cases])
    processed = [run(c) for c in prompt_adherence.with_addition(cases, NIGHT)]
    with_it = prompt_adherence.example_score(NIGHT, cases, [p.images[0] for p in processed])
    assert processed[0].sd_model_name == "serena-shapes-v1"
    assert "TI hashes: \"serena-night:" in processed[0].infotexts[0]
    # Black on nearly every prompt with it (one miss allowed for another CPU's rounding), on few without it.
    assert with_it["hit"] >= 5 / 6 and without["hit"] <= 1 / 6, (without, with_it)
    # It changes the background, not what is drawn on it.
    assert with_it["shape"] >= 4 / 6, with_it


def test_lora_keys_are_layers_of_the_default_model(shipped):
    tensors = load_file(LORA)
    model = sd_models.current_model()
    assert model.info.name == "serena-shapes-v1.safetensors"
    layers = {}
    for prefix, root in (("lora_unet_", model.unet), ("lora_te_", model.text_encoder)):
        for path, module in root.named_modules():
            if hasattr(module, "weight") and module.weight is not None and module.weight.dim() == 2:
                layers[prefix + path.replace(".", "_")] = module.weight.shape
    names = {key.split(".", 1)[0] for key in tensors}
    assert names <= set(layers), sorted(names - set(layers))
    assert any(n.startswith("lora_te_") for n in names) and any(n.startswith("lora_unet_") for n in names)
    for name in names:
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        assert set(key for key in tensors if key.startswith(name + ".")) == {
            f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"}
        assert down.shape[0] == up.shape[1] == 4  # rank 4
        assert (up.shape[0], down.shape[1]) == tuple(layers[name])


def test_lora_tag_draws_hearts_by_its_weight_and_the_next_generation_is_as_before(lora_extension):
    cases = [prompt_adherence.example_cases(HEART.name)[i] for i in HEART_CASES]
    before = run(cases[0]).images[0]
    scores, infotexts, first = {}, {}, {}
    for weight in ("0", "0.5", "1"):
        tagged = dataclasses.replace(HEART, addition=f" <lora:serena-heart:{weight}>")
        processed = [run(c) for c in prompt_adherence.with_addition(cases, tagged)]
        scores[weight] = prompt_adherence.example_score(HEART, cases, [p.images[0] for p in processed])
        infotexts[weight], first[weight] = processed[0].infotexts[0], processed[0].images[0]
    assert "Lora hashes: \"serena-heart: " in infotexts["1"] and "<lora:serena-heart:1>" in infotexts["1"]
    # Hearts on these prompts with the tag (6 of 6 here; two misses allowed for another CPU's rounding), at most
    # one at weight 0 (none here), and weight 0.5 between them in the foreground's likeness to a heart
    # (0.47 / 0.69 / 0.83 here).
    assert scores["1"]["hit"] >= 4 / 6 and scores["0"]["hit"] <= 1 / 6, scores
    assert scores["0"]["likeness"] + 0.05 < scores["0.5"]["likeness"] < scores["1"]["likeness"] - 0.05, scores
    # The colour mostly stays (4 of 6 here: the LoRA moves some toward a neighbour, orange to red).
    assert scores["1"]["colour"] >= 3 / 6, scores
    # Weight 0 is no tag (to within one level), and the next generation without it is the one before it.
    assert np.abs(np.asarray(first["0"], np.int16) - np.asarray(before, np.int16)).max() <= 1
    assert run(cases[0]).images[0].tobytes() == before.tobytes()


def test_no_training_caption_of_the_examples_is_a_prompt_they_are_scored_on():
    import train_examples

    scored = train_examples.oracle_prompts()
    assert {c.prompt + HEART.addition for c in prompt_adherence.example_cases(HEART.name)} <= scored
    # The shipped files' own data (the tool's default sizes and seed). Before the rule, 15 of the embedding's
    # captions and 4 of the LoRA's were scored prompts.
    for data, n in ((train_examples.embedding_data, 256), (train_examples.lora_data, 512)):
        captions = set(data(n, train_examples.SEED)[2])
        assert not captions & scored, sorted(captions & scored)
