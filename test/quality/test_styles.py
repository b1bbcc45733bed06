"""Prompt styles: A1111's merge rules, the styles.csv reader, the API (422, GET /prompt-styles) and the infotext."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules import shared, styles

# Text without the placeholder's braces, and without leading/trailing blanks (prompts are stripped when merged).
_words = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="{}"),
                 min_size=1, max_size=20)
_text = st.lists(_words, min_size=1, max_size=4).map(" ".join)


@given(prompt=_text, left=st.text(max_size=10).filter(lambda s: "{prompt}" not in s),
       right=st.text(max_size=10).filter(lambda s: "{prompt}" not in s))
def test_a_placeholder_is_replaced_by_the_prompt(prompt, left, right):
    assert styles.merge_prompts(f"{left}{{prompt}}{right}", prompt) == f"{left}{prompt}{right}"


@given(prompt=st.text(max_size=20), style=st.text(max_size=20).filter(lambda s: "{prompt}" not in s))
def test_without_a_placeholder_the_style_is_appended_after_a_comma(prompt, style):
    merged = styles.merge_prompts(style, prompt)
    parts = [part for part in (prompt.strip(), style.strip()) if part]
    assert merged == ", ".join(parts)


@settings(max_examples=200)
@given(prompt=_text, negative=_text, style_prompt=_text, style_negative=_text, placeholder=st.booleans())
def test_applied_styles_are_found_again_in_the_prompts(prompt, negative, style_prompt, style_negative, placeholder):
    text = f"{style_prompt} {{prompt}} {style_prompt}" if placeholder else style_prompt
    db = styles.StyleDatabase({"s": styles.PromptStyle("s", text, style_negative)})
    styled = db.apply_to_prompt(prompt, ["s"]), db.apply_to_negative_prompt(negative, ["s"])
    assert db.extract_from_prompt(*styled) == (["s"], prompt, negative)


def test_two_styles_apply_in_order_and_are_found_again():
    db = styles.StyleDatabase({"a": styles.PromptStyle("a", "masterpiece, {prompt}", "ugly"),
                               "b": styles.PromptStyle("b", "oil painting", "")})
    prompt = db.apply_to_prompt("a cat", ["a", "b"])
    negative = db.apply_to_negative_prompt("blurry", ["a", "b"])
    assert (prompt, negative) == ("masterpiece, a cat, oil painting", "blurry, ugly")
    found, base, base_negative = db.extract_from_prompt(prompt, negative)
    # Both orders make these prompts (A1111's search finds one of them): applying the found ones gives them back.
    assert sorted(found) == ["a", "b"] and (base, base_negative) == ("a cat", "blurry")
    assert (db.apply_to_prompt(base, found), db.apply_to_negative_prompt(base_negative, found)) == (prompt, negative)


def write_styles(data_dir, text: str, name="styles.csv"):
    (data_dir / name).write_text(text, encoding="utf-8")


def test_a_malformed_row_is_a_warning_naming_it_and_the_others_load(data_dir, caplog):
    write_styles(data_dir, 'name,prompt,negative_prompt\n'
                           'good,"a, {prompt}",bad\n'
                           'broken,one,two,three\n'
                           ',no name,\n'
                           '# comment,x,y\n'
                           '\n'
                           'old,only prompt\n')
    db = styles.database()
    assert sorted(db.styles) == ["good", "old"]
    assert db.styles["good"].prompt == "a, {prompt}" and db.styles["old"].negative_prompt == ""
    assert any("line 3" in w and "'broken'" in w for w in db.warnings)
    assert any("line 4" in w and "no name" in w for w in db.warnings)
    assert len(db.warnings) == 2 and "line 3" in caplog.text


def test_a_file_without_the_columns_is_a_warning_not_a_crash(data_dir):
    write_styles(data_dir, "just some text\nmore\n")
    db = styles.database()
    assert db.styles == {} and "not a styles file" in db.warnings[0]


def test_styles_files_flag_with_wildcards_and_edits_are_seen(data_dir, monkeypatch):
    (data_dir / "more").mkdir()
    write_styles(data_dir / "more", "name,prompt\nx,ex\n", "a.csv")
    write_styles(data_dir / "more", "name,prompt\ny,why\n", "b.csv")
    monkeypatch.setattr(shared.cmd_opts, "styles_file", ["more/*.csv"])
    assert sorted(styles.database().styles) == ["x", "y"]
    write_styles(data_dir / "more", "name,prompt\nz,zed is longer\n", "b.csv")
    assert sorted(styles.database().styles) == ["x", "z"]


@pytest.fixture
def styled(data_dir):
    write_styles(data_dir, 'name,prompt,negative_prompt\n'
                           'cinematic,"cinematic still of {prompt}, film grain",cartoon\n'
                           'sharp,highly detailed,blurry\n')


def test_get_prompt_styles_lists_the_file(styled, api_client):
    r = api_client.get("/sdapi/v1/prompt-styles")
    assert r.status_code == 200
    assert r.json() == [
        {"name": "cinematic", "prompt": "cinematic still of {prompt}, film grain", "negative_prompt": "cartoon"},
        {"name": "sharp", "prompt": "highly detailed", "negative_prompt": "blurry"}]


def test_an_unknown_style_is_a_422_naming_it(styled, api_client):
    r = api_client.post("/sdapi/v1/txt2img", json={"styles": ["sharp", "nope"], "width": 64, "height": 64})
    assert r.status_code == 422
    assert "nope" in r.text and "styles" in r.text and "sharp'" not in r.text


def test_styles_reach_the_prompts_and_the_infotext_and_paste_back(styled, real_model, api_client):
    body = {"prompt": "a cat", "negative_prompt": "dark", "styles": ["cinematic", "sharp"], "steps": 2,
            "width": 64, "height": 64, "seed": 5}
    r = api_client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_prompts"] == ["cinematic still of a cat, film grain, highly detailed"]
    assert info["all_negative_prompts"] == ["dark, cartoon, blurry"]
    assert info["styles"] == ["cinematic", "sharp"] and info["prompt"] == "a cat"
    text = info["infotexts"][0]
    assert text.startswith("cinematic still of a cat, film grain, highly detailed\nNegative prompt: dark, cartoon")
    # Pasting (API `infotext`) finds the styles again: the same request, the same image
    again = api_client.post("/sdapi/v1/txt2img", json={"infotext": text})
    assert again.status_code == 200, again.text
    params = again.json()["parameters"]
    assert (params["prompt"], params["negative_prompt"], params["styles"]) == ("a cat", "dark", ["cinematic", "sharp"])
    assert again.json()["images"] == r.json()["images"]


@pytest.mark.parametrize("mode, styles_found, prompt", [
    ("Ignore", None, "a cat, highly detailed"), ("Discard", None, "a cat"), ("Apply", ["sharp"], "a cat"),
    ("Apply if any", ["sharp"], "a cat")])
def test_the_infotext_styles_option_decides_what_a_paste_does(styled, mode, styles_found, prompt):
    params = {"Prompt": "a cat, highly detailed", "Negative prompt": "blurry"}
    assert styles.from_infotext(params, mode) == styles_found and params["Prompt"] == prompt


def test_apply_empties_the_styles_when_none_are_found_and_apply_if_any_keeps_them(styled):
    assert styles.from_infotext({"Prompt": "a cat", "Negative prompt": ""}, "Apply") == []
    assert styles.from_infotext({"Prompt": "a cat", "Negative prompt": ""}, "Apply if any") is None
