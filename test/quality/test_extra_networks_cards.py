"""The Extra networks panel's cards (``modules.extra_networks_cards``): pages, previews next to the files, the text a
click inserts (with the default multiplier), search, previews outside the folders refused, and A1111's click
toggle. LoRA and embedding files are written at test time by ``tools/``."""

from __future__ import annotations

import json
import os

import gradio as gr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from modules import extensions, extra_networks, extra_networks_cards, paths, sd_models, shared
from modules.hookspecs import hookimpl
from modules.runtime_utils import temporary_opts
from tools import make_tiny_lora
from tools.make_tiny_embedding import make_embedding

LORA_DIR = os.path.join(paths.script_path, "extensions-builtin", "Lora")


@pytest.fixture
def networks(data_dir, real_model, plugin_host, monkeypatch):
    """The Lora extension loaded, two LoRAs (one in a subfolder, with previews, a description and user metadata)
    and two embeddings, one too wide for the tiny model."""
    monkeypatch.setattr(shared.opts, "data_labels", dict(shared.opts.data_labels))
    monkeypatch.setattr(sd_models, "model_manager",
                        sd_models.LoadedModels(lambda info: real_model, lambda kind, path: real_model.facts))
    lora = data_dir / "models" / "Lora"
    make_tiny_lora.write(real_model, str(lora / "kohya.safetensors"), "kohya", alias="kohya-alias")
    make_tiny_lora.write(real_model, str(lora / "styles" / "peft.safetensors"), "peft", seed=2)
    Image.new("RGB", (600, 300), "red").save(lora / "kohya.png")
    Image.new("RGB", (40, 40), "blue").save(lora / "styles" / "peft.preview.webp")
    (lora / "kohya.txt").write_text("A red test network\n")
    (lora / "styles" / "peft.json").write_text(json.dumps({"activation text": "in peft style",
                                                            "preferred weight": 0.7}))
    make_embedding(str(data_dir / "embeddings" / "small.safetensors"), width=32)
    make_embedding(str(data_dir / "embeddings" / "Big.safetensors"), width=768)
    Image.new("RGB", (8, 8), "green").save(data_dir / "embeddings" / "small.jpg")
    ext = extensions.load_folder(LORA_DIR, host=plugin_host, group="builtin")
    assert ext.loaded and not ext.problems, ext.problems
    assert extensions.register_extension_options(plugin_host, only=ext.plugins) == []
    yield data_dir
    extensions.unload([ext], plugin_host)


def cards_by_name(page):
    return {card.name: card for card in page.cards}


def test_pages_list_names_previews_and_the_text_a_click_inserts(networks):
    pages = extra_networks_cards.pages()
    assert [(p.id, p.title) for p in pages] == [("textual_inversion", "Textual Inversion"), ("lora", "Lora")]
    ti, lora = pages
    # Only what the current checkpoint can use: the 768-wide embedding is hidden, as in A1111.
    assert list(cards_by_name(ti)) == ["small"]
    small = cards_by_name(ti)["small"]
    assert small.prompt == "small" and small.preview == str(networks / "embeddings" / "small.jpg")
    assert extra_networks_cards.preview_file(small, ti.folders) == os.path.realpath(small.preview)

    kohya, peft = cards_by_name(lora)["kohya"], cards_by_name(lora)["peft"]
    assert kohya.prompt == "<lora:kohya-alias:1>" and kohya.description == "A red test network"
    assert kohya.preview == str(networks / "models" / "Lora" / "kohya.png")
    assert peft.preview == str(networks / "models" / "Lora" / "styles" / "peft.preview.webp")
    # NAME.json's preferred weight and activation text (A1111's user metadata).
    assert peft.prompt == "<lora:peft:0.7> in peft style"
    assert all(extra_networks_cards.preview_file(c, lora.folders) for c in (kohya, peft))
    with temporary_opts({"extra_networks_default_multiplier": 0.5}):
        assert cards_by_name(extra_networks_cards.pages()[1])["kohya"].prompt == "<lora:kohya-alias:0.5>"


def test_refresh_finds_new_files_and_search_filters(networks, real_model):
    lora = extra_networks_cards.pages()[1]
    search = extra_networks_cards.search
    assert [c.name for c in search(lora.cards, "  ALIAS ")] == ["kohya"]
    assert [c.name for c in search(lora.cards, "styles/")] == ["peft"]  # the path under the Lora folder
    assert [c.name for c in search(lora.cards, "red test")] == ["kohya"]  # the description
    assert search(lora.cards, "") == list(lora.cards) and search(lora.cards, "no such network") == []
    make_tiny_lora.write(real_model, str(networks / "models" / "Lora" / "later.safetensors"), "kohya")
    make_embedding(str(networks / "embeddings" / "later-word.safetensors"), width=32)
    extra_networks_cards.refresh()
    ti, lora = extra_networks_cards.pages()
    assert "later" in cards_by_name(lora) and "later-word" in cards_by_name(ti)
    assert cards_by_name(lora)["later"].preview is None


def test_a_preview_outside_the_folders_is_refused(networks, tmp_path_factory):
    lora = extra_networks_cards.pages()[1]
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    kohya = cards_by_name(lora)["kohya"]
    refused = [
        extra_networks.Card("x", kohya.path, "x", str(outside)),  # another folder
        extra_networks.Card("x", kohya.path, "x", str(networks / "models" / "Lora" / ".." / ".." / "config.json")),
        extra_networks.Card("x", kohya.path, "x", kohya.path),  # not an image
    ]
    link = networks / "models" / "Lora" / "linked.png"
    link.symlink_to(outside)  # inside by name, outside in fact
    refused.append(extra_networks.Card("x", kohya.path, "x", str(link)))
    (networks / "models" / "Lora" / "gone.safetensors.png").write_bytes(b"")
    for card in refused:
        assert extra_networks_cards.preview_file(card, lora.folders) is None, card.preview
    # The TI page's folder is not the Lora page's.
    assert extra_networks_cards.preview_file(kohya, extra_networks_cards.pages()[0].folders) is None


def test_a_type_without_cards_gets_the_default_listing(data_dir, register):
    class Probe(extra_networks.ExtraNetwork):
        name = "probe"

        def items(self):
            return [{"name": "one", "alias": "uno", "path": str(data_dir / "probe" / "one.bin")}]

    class Plugin:
        @hookimpl
        def on_list_extra_networks(self):
            return [Probe()]

    register(Plugin(), "probe-networks")
    page = extra_networks_cards.pages()[-1]
    assert (page.id, page.title, page.folders) == ("probe", "probe", (str(data_dir / "probe"),))
    assert [(c.name, c.prompt) for c in page.cards] == [("one", "<probe:uno:1>")]


def test_a_click_adds_the_text_and_a_second_click_takes_it_out():
    toggle = extra_networks_cards.toggle
    assert toggle("", "<lora:a:1>", " ") == "<lora:a:1>"
    assert toggle("a cat", "<lora:a:1>", " ") == "a cat <lora:a:1>"
    assert toggle("a cat <lora:a:0.3>", "<lora:a:1>", " ") == "a cat"  # the tag of that network, any weight
    assert toggle("a cat <lora:ab:1>", "<lora:a:1>", " ") == "a cat <lora:ab:1> <lora:a:1>"
    assert toggle("a cat, small", "small", ", ") == "a cat"
    assert toggle("a cat", "small", ", ") == "a cat, small"
    assert toggle("a (cat)", "(x)", " ") == "a (cat) (x)"  # the text is matched literally
    assert toggle("a", "<lora:a:1>") == "a <lora:a:1>"  # extra_networks_add_text_separator, " " by default


@settings(max_examples=60, deadline=None)
@given(prompt=st.text(alphabet="abc ,():<>", max_size=20), name=st.text(alphabet="xyz_-", min_size=1, max_size=6),
       weight=st.sampled_from(["1", "0.5", "1.25"]), separator=st.sampled_from([" ", ", ", ""]))
def test_two_clicks_leave_the_prompt_as_it_was(prompt, name, weight, separator):
    tag = f"<lora:{name}:{weight}>"
    once = extra_networks_cards.toggle(prompt, tag, separator)
    assert tag in once
    assert extra_networks_cards.toggle(once, tag, separator) == prompt


def test_the_panel_is_in_both_tabs_and_a_click_edits_the_prompt(networks):
    from modules.ui import extra_networks as panel
    from modules.ui import generation

    with gr.Blocks() as blocks:
        for tab in ("txt2img", "img2img"):
            generation.build_prompt_row(generation.GenerationForm(tab=tab))
    ids = {c["props"].get("elem_id") for c in blocks.get_config_file()["components"]}
    assert {f"{t}_{part}" for t in ("txt2img", "img2img") for part in (
        "extra_networks_button", "extra_networks", "extra_search", "extra_refresh", "extra_lora_cards",
        "extra_textual_inversion_cards")} <= ids
    event = gr.SelectData(None, {"index": 1, "value": None, "selected": True})
    assert panel.clicked("a cat", ["<lora:kohya-alias:1>", "<lora:peft:1>"], event) == "a cat <lora:peft:1>"
    lora = extra_networks_cards.pages()[1]
    value = panel.gallery_value(lora, lora.cards)
    assert [caption for _, caption in value] == ["kohya", "peft"]
    assert value[0][0].size == (256, 128)  # the preview, scaled down
    assert value[0][0].getpixel((0, 0)) == (255, 0, 0)
