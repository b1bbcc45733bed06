"""Textual inversion embeddings: the files A1111 reads, which ones a model can use, where their vectors go in a
prompt's windows, the infotext's ``TI hashes`` and the API routes. The embeddings are made at test time
(``tools/make_tiny_embedding.py``), 32 wide for the tiny model's text encoder."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modules import cmd_args, paths, processing, sd_models, sd_pipeline, shared, textual_inversion
from modules.model_facts import ModelFacts
from tools.make_tiny_embedding import make_embedding

WIDTH = 32  # the tiny model's text encoder


@pytest.fixture
def embeddings_dir(data_dir):
    return data_dir / "embeddings"


@pytest.fixture
def tiny_checkpoints(real_model, monkeypatch):
    """``real_model``, with every checkpoint's header facts those of the tiny model (what GET /embeddings reads)."""
    monkeypatch.setattr(sd_models, "model_manager",
                        sd_models.LoadedModels(lambda info: real_model, lambda kind, path: real_model.facts))
    return real_model


def encoder(model, lookup=None):
    return sd_pipeline.PromptEncoder(model.tokenizer, model.text_encoder, 1, "cpu", torch.float32, embeddings=lookup)


def lookup_of(model, *embeddings):
    return textual_inversion.EmbeddingLookup.build(model.tokenizer, embeddings)


def txt2img(prompt, negative_prompt="", **fields):
    p = processing.StableDiffusionProcessingTxt2Img(prompt=prompt, negative_prompt=negative_prompt, steps=2,
                                                    width=64, height=64, seed=11, do_not_save_samples=True, **fields)
    return processing.process_images(p)


# -- files ---------------------------------------------------------------------------------------------------------

def test_every_a1111_format_is_read_and_pickles_only_when_allowed(tmp_path, caplog):
    made = {
        "plain": make_embedding(str(tmp_path / "plain.safetensors"), vectors=3, seed=1),
        "trained": make_embedding(str(tmp_path / "sub" / "deeper" / "trained.pt"), fmt="a1111-pt", vectors=2,
                                  seed=2),
        "concept": make_embedding(str(tmp_path / "concept.bin"), fmt="diffusers", seed=3),
        "concept2": make_embedding(str(tmp_path / "concept2.safetensors"), fmt="diffusers", seed=4),
        "xl": make_embedding(str(tmp_path / "xl.safetensors"), fmt="sdxl", vectors=2, width=768, seed=5),
    }
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "notes.txt").write_text("not an embedding")
    found = textual_inversion.EmbeddingDatabase((str(tmp_path),), allow_pickle=True).scan()
    assert sorted(found) == sorted(made)
    assert [(found[n].count, found[n].shape) for n in ("plain", "trained", "concept", "concept2", "xl")] == \
        [(3, WIDTH), (2, WIDTH), (1, WIDTH), (1, WIDTH), (2, 768 + 1280)]
    trained = found["trained"]
    assert (trained.step, trained.sd_checkpoint, trained.sd_checkpoint_name) == (100, "0123456789", "trained-on")
    assert found["plain"].step is None and found["xl"].sdxl and not found["plain"].sdxl
    with open(made["plain"], "rb") as f:
        assert found["plain"].shorthash == hashlib.sha256(f.read()).hexdigest()[:12]
    assert "broken.safetensors: corrupt or truncated" in caplog.text
    caplog.clear()
    refused = textual_inversion.EmbeddingDatabase((str(tmp_path),), allow_pickle=False).scan()
    assert sorted(refused) == ["concept2", "plain", "xl"]
    assert "trained.pt: pickled embeddings can run arbitrary code" in caplog.text


def test_a_model_uses_only_embeddings_of_its_width(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="serena.textual_inversion")
    make_embedding(str(tmp_path / "small.safetensors"), width=WIDTH)
    make_embedding(str(tmp_path / "Big.safetensors"), width=768)
    make_embedding(str(tmp_path / "xl.safetensors"), fmt="sdxl", width=768)
    make_embedding(str(tmp_path / "long.safetensors"), vectors=76, width=WIDTH)
    db = textual_inversion.EmbeddingDatabase((str(tmp_path),), allow_pickle=False)
    tiny, sd15, sdxl = db.evaluate((WIDTH,)), db.evaluate((768,)), db.evaluate((768, 1280))
    assert list(tiny.loaded) == ["small"] and list(tiny.skipped) == ["Big", "long", "xl"]
    assert "shape 768; the model's text encoder is 32 wide" in tiny.skipped["Big"][1]
    assert "an SDXL embedding" in tiny.skipped["xl"][1] and "more than one 75-token" in tiny.skipped["long"][1]
    assert list(sd15.loaded) == ["Big"] and list(sdxl.loaded) == ["xl"]
    assert "embedding Big skipped: shape 768" in caplog.text
    assert sorted(db.evaluate(()).loaded) == ["Big", "small", "xl"]  # no model known: nothing to check against


# -- the prompt encoder ----------------------------------------------------------------------------------------

def test_a_multi_vector_embedding_takes_its_positions_in_one_window(tmp_path, tiny_model):
    make_embedding(str(tmp_path / "sparkle.safetensors"), vectors=3, seed=7)
    sparkle = textual_inversion.EmbeddingDatabase((str(tmp_path),), allow_pickle=False).scan()["sparkle"]
    lookup = lookup_of(tiny_model, sparkle)
    enc = encoder(tiny_model, lookup)
    a_id = tiny_model.tokenizer("a", add_special_tokens=False)["input_ids"]
    [chunk] = enc.chunks("a (sparkle:1.2) a")
    assert chunk.tokens == a_id + [sd_pipeline.EMBEDDING_PLACEHOLDER] * 3 + a_id
    assert chunk.weights == [1.0, 1.2, 1.2, 1.2, 1.0] and chunk.fixes == [(1, sparkle)]
    assert lookup.used == {"sparkle": sparkle}
    # 74 tokens leave one position: the 3 vectors start the next window, whole (A1111's tokenize_line)
    first, second = enc.chunks("a " * 74 + "sparkle")
    assert len(first.tokens) == 74 and second.fixes == [(0, sparkle)] and len(second.tokens) == 3
    # The vectors are the token embeddings at those positions (plus the position embeddings, as for any token)
    seen = []
    embeddings_layer = tiny_model.text_encoder.embeddings
    with torch.inference_mode(), embeddings_layer.register_forward_hook(lambda m, a, out: seen.append(out[0])):
        enc.encode("a sparkle")
    positions = embeddings_layer.position_embedding.weight[2:5]
    torch.testing.assert_close(seen[0][2:5] - positions, sparkle.vectors[WIDTH], rtol=0, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.one_of(st.sampled_from(["a", "red", "cat", "BREAK"]), st.integers(1, 30)), max_size=60))
def test_every_embedding_is_whole_in_one_window(tiny_model, words):
    """A prompt of words and embeddings of 1 to 30 vectors: every window holds at most 75 tokens, every embedding
    sits whole in one window on placeholder ids, and nothing is lost or doubled."""
    class Vectors:  # only the count matters to the layout
        def __init__(self, name, count):
            self.name, self.count = name, count
    names = {n: Vectors(f"z{chr(97 + n // 26)}{chr(97 + n % 26)}", n) for n in range(1, 31)}
    enc = encoder(tiny_model, lookup_of(tiny_model, *names.values()))
    text = " ".join(w if isinstance(w, str) else names[w].name for w in words)
    chunks = enc.chunks(text)
    assert all(len(c.tokens) <= sd_pipeline.CHUNK for c in chunks)
    for chunk in chunks:
        for position, embedding in chunk.fixes:
            assert chunk.tokens[position:position + embedding.count] == [sd_pipeline.EMBEDDING_PLACEHOLDER] * \
                embedding.count
    plain = sum(len(tiny_model.tokenizer(w, add_special_tokens=False)["input_ids"])
                for w in words if isinstance(w, str) and w != "BREAK")
    assert sum(len(c.tokens) for c in chunks) == plain + sum(names[w].count for w in words if isinstance(w, int))
    assert [e.name for c in chunks for _, e in c.fixes] == [names[w].name for w in words if isinstance(w, int)]


def test_encoding_changes_neither_tokenizer_nor_text_encoder(tmp_path, tiny_model):
    make_embedding(str(tmp_path / "sparkle.safetensors"), vectors=2, seed=3)
    sparkle = textual_inversion.EmbeddingDatabase((str(tmp_path),), allow_pickle=False).scan()["sparkle"]
    tokenizer, layer = tiny_model.tokenizer, tiny_model.text_encoder.get_input_embeddings()
    vocab, weights = dict(tokenizer.get_vocab()), layer.weight.clone()
    with torch.inference_mode():
        with_it = encoder(tiny_model, lookup_of(tiny_model, sparkle)).encode("a sparkle cat")
        plain = encoder(tiny_model).encode("a sparkle cat")
        emphasised = encoder(tiny_model, lookup_of(tiny_model, sparkle)).encode("a (sparkle:1.5) cat")
    assert not torch.equal(with_it, plain) and not torch.equal(with_it, emphasised)
    assert len(tokenizer) == len(vocab) and tokenizer.get_vocab() == vocab
    assert torch.equal(layer.weight, weights) and layer.num_embeddings == len(vocab)
    assert not layer._forward_hooks  # the substitution lived for the call only


# -- generations -------------------------------------------------------------------------------------------------

def test_an_embedding_changes_the_image_and_is_named_in_the_infotext(tiny_checkpoints, embeddings_dir):
    plain = txt2img("a sparkle cat", "dull")
    without_trigger, dull_before = txt2img("a red cat", ""), txt2img("a red cat", "dull")
    path = make_embedding(str(embeddings_dir / "styles" / "sparkle.safetensors"), vectors=2, seed=5, scale=1.0)
    make_embedding(str(embeddings_dir / "dull.safetensors"), seed=6, scale=1.0)
    make_embedding(str(embeddings_dir / "wide.safetensors"), width=768)
    used = txt2img("a sparkle cat, wide", "dull")
    assert used.images[0].tobytes() != plain.images[0].tobytes()
    with open(path, "rb") as f:
        sparkle_hash = hashlib.sha256(f.read()).hexdigest()[:12]
    with open(embeddings_dir / "dull.safetensors", "rb") as f:
        dull_hash = hashlib.sha256(f.read()).hexdigest()[:12]
    # Both prompts' embeddings, the negative's too; the skipped "wide" is a plain word
    assert f'TI hashes: "sparkle: {sparkle_hash}, dull: {dull_hash}"' in used.infotexts[0]
    # A prompt without trigger words: the same bytes as before any embedding was there, no TI hashes
    again = txt2img("a red cat", "")
    assert "TI hashes" not in again.infotexts[0]
    assert again.images[0].tobytes() == without_trigger.images[0].tobytes()
    # A1111's option leaves the hashes out; the negative prompt's embedding still changes the image
    no_hashes = txt2img("a red cat", "dull", override_settings={"textual_inversion_add_hashes_to_infotext": False})
    assert "TI hashes" not in no_hashes.infotexts[0]
    assert no_hashes.images[0].tobytes() != dull_before.images[0].tobytes()


def test_a_prompt_without_trigger_words_is_byte_identical_with_embeddings_present(tiny_checkpoints, embeddings_dir):
    before = txt2img("a blue square (red:1.3) [circle:cat:1]", "noise", batch_size=2)
    for i, name in enumerate(("bluish", "sq", "circl")):
        make_embedding(str(embeddings_dir / f"{name}.safetensors"), vectors=i + 1, seed=i, scale=1.0)
    after = txt2img("a blue square (red:1.3) [circle:cat:1]", "noise", batch_size=2)
    assert [i.tobytes() for i in after.images] == [i.tobytes() for i in before.images]
    assert after.infotexts == before.infotexts


def test_hires_fix_on_another_checkpoint_uses_and_names_its_embeddings(tiny_checkpoints, embeddings_dir):
    """The second pass on ``hr_checkpoint_name`` gets the embeddings that checkpoint can use; what its prompt used
    is named with the first pass's."""
    make_embedding(str(embeddings_dir / "sparkle.safetensors"), vectors=2, seed=5, scale=1.0)
    hires = dict(enable_hr=True, hr_scale=1.0, hr_second_pass_steps=1, hr_checkpoint_name="beta.safetensors")
    plain = txt2img("a red cat", **hires, hr_prompt="a red cat")
    used = txt2img("a red cat", **hires, hr_prompt="a sparkle cat")
    assert "TI hashes" not in plain.infotexts[0]
    assert 'TI hashes: "sparkle: ' in used.infotexts[0] and "Hires checkpoint: beta" in used.infotexts[0]


# -- API and flags -------------------------------------------------------------------------------------------------

def test_api_lists_embeddings_in_a1111_shapes_and_refresh_rereads(tiny_checkpoints, embeddings_dir, api_client,
                                                                  monkeypatch):
    assert api_client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    make_embedding(str(embeddings_dir / "sub" / "trained.pt"), fmt="a1111-pt", vectors=2)
    make_embedding(str(embeddings_dir / "sparkle.safetensors"), vectors=3)
    make_embedding(str(embeddings_dir / "wide.safetensors"), width=768)
    monkeypatch.setattr(shared.cmd_opts, "allow_pickle_checkpoints", True)
    assert api_client.post("/sdapi/v1/refresh-embeddings").json() is None
    body = api_client.get("/sdapi/v1/embeddings").json()
    assert body == {
        "loaded": {"sparkle": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": WIDTH,
                               "vectors": 3},
                   "trained": {"step": 100, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "trained-on",
                               "shape": WIDTH, "vectors": 2}},
        "skipped": {"wide": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 768,
                             "vectors": 1}}}
    # A file rewritten with the same size and mtime is read again only by a refresh (A1111's force_reload)
    path = embeddings_dir / "sparkle.safetensors"
    stat = os.stat(path)
    old = textual_inversion.database().scan()["sparkle"].sha256
    make_embedding(str(path), vectors=3, seed=99)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert textual_inversion.database().scan()["sparkle"].sha256 == old
    api_client.post("/sdapi/v1/refresh-embeddings")
    assert textual_inversion.database().scan()["sparkle"].sha256 != old
    # Another checkpoint, another text encoder width: the list is evaluated again
    wide = ModelFacts(text_encoder_layers=12, latent_channels=4, text_encoder_widths=(768,))
    monkeypatch.setattr(sd_models, "model_manager", sd_models.LoadedModels(lambda info: None, lambda k, p: wide))
    body = api_client.get("/sdapi/v1/embeddings").json()
    assert list(body["loaded"]) == ["wide"] and sorted(body["skipped"]) == ["sparkle", "trained"]


def test_embeddings_dir_flag(tmp_path):
    default = paths.from_cmd_opts(cmd_args.parse_args(["--data-dir", str(tmp_path)]))
    assert default.embeddings_dir == os.path.join(str(tmp_path), "embeddings")
    chosen = paths.from_cmd_opts(cmd_args.parse_args(["--data-dir", str(tmp_path), "--embeddings-dir", "elsewhere"]))
    assert chosen.embeddings_dir == os.path.abspath("elsewhere")
