"""modules.infotext: writing, reading (Serena's and A1111's text), round trip, and option overrides."""

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from modules import shared_options
from modules.infotext import (
    IMPLIED_DEFAULTS,
    create_infotext,
    infotext_to_overrides,
    parse_generation_parameters,
    quote,
    unquote,
)
from modules.option_info import OptionInfo

PARAMS = {"Steps": 20, "Sampler": "Euler a", "Schedule type": "Karras", "CFG scale": 7, "Seed": 1,
          "Size": "64x64", "Model hash": "abc", "Model": "name", "Clip skip": 2}


# -- writing -------------------------------------------------------------------------------------------------

def test_create_infotext():
    assert create_infotext("a cat", "blurry", PARAMS) == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 64x64, Model hash: abc, "
        "Model: name, Clip skip: 2")


@pytest.mark.parametrize("negative", ["", None])
def test_empty_negative_prompt_has_no_line(negative):
    assert create_infotext("a cat", negative, {"Steps": 20, "Seed": 1, "VAE": None}) == "a cat\nSteps: 20, Seed: 1"


@pytest.mark.parametrize("value, written", [
    ("plain", "plain"),
    (7.5, "7.5"),
    (True, "True"),
    ("a, b", '"a, b"'),
    ("lora: 0.8", '"lora: 0.8"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("two\nlines", '"two\\nlines"'),
    (" padded", '" padded"'),
    ("", '""'),
    ("ünïcode", "ünïcode"),
])
def test_quote(value, written):
    assert quote(value) == written
    assert unquote(written) == str(value)


def test_unquote_leaves_other_text_alone():
    assert unquote('"') == '"'
    assert unquote('"not json\\x"') == '"not json\\x"'
    assert unquote("plain") == "plain"


@pytest.mark.parametrize("key", ["Prompt", "Negative prompt", "bad:key", "x", "trailing ", " leading", "a,b", 3])
def test_keys_that_cannot_be_read_back_are_refused(key):
    with pytest.raises(ValueError, match="params"):
        create_infotext("p", "", {"Steps": 1, "Seed": 2, key: "v"})


def test_bad_argument_types():
    with pytest.raises(TypeError, match="prompt"):
        create_infotext(3, "", PARAMS)
    with pytest.raises(TypeError, match="params"):
        create_infotext("p", "", [("Steps", 20)])
    with pytest.raises(TypeError, match="text"):
        parse_generation_parameters(None)


# -- reading -------------------------------------------------------------------------------------------------

A1111_TEXT = (
    "masterpiece, (best quality:1.2), 1girl\n"
    "second line <lora:add_detail:0.8>\n"
    "Negative prompt: lowres, bad anatomy\n"
    "worst quality\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.5, "
    'Lora hashes: "add_detail: 7c6bad76eb54", Hires upscale: 2, Version: v1.10.1'
)


def test_parse_a1111_text():
    params = parse_generation_parameters(A1111_TEXT)
    assert params["Prompt"] == "masterpiece, (best quality:1.2), 1girl\nsecond line <lora:add_detail:0.8>"
    assert params["Negative prompt"] == "lowres, bad anatomy\nworst quality"
    assert params["Steps"] == "20"
    assert params["Sampler"] == "DPM++ 2M"
    assert params["Size"] == "512x768"
    assert (params["Size-1"], params["Size-2"]) == ("512", "768")
    assert params["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert params["Version"] == "v1.10.1"


def test_implied_defaults_fill_missing_keys_only():
    params = parse_generation_parameters("p\nSteps: 20, Seed: 1, CFG scale: 7")
    for key, value in IMPLIED_DEFAULTS.items():
        assert params[key] == value
    assert parse_generation_parameters(A1111_TEXT)["Schedule type"] == "Karras"
    params = parse_generation_parameters("p\nSteps: 20, Seed: 1, Clip skip: 2, RNG: GPU")
    assert (params["Clip skip"], params["RNG"]) == ("2", "GPU")


def test_implied_defaults_are_the_option_defaults():
    defaults = {info.infotext: info.default for info in shared_options.options_templates.values() if info.infotext}
    for label in ("Clip skip", "RNG", "ENSD"):
        assert IMPLIED_DEFAULTS[label] == str(defaults[label])


def test_last_line_with_fewer_than_three_params_is_prompt():
    params = parse_generation_parameters("portrait, style: anime")
    assert params["Prompt"] == "portrait, style: anime"
    assert "style" not in params


def test_prompt_only_and_negative_only():
    assert parse_generation_parameters("just a prompt")["Prompt"] == "just a prompt"
    params = parse_generation_parameters("Negative prompt: ugly\nSteps: 20, Seed: 1, CFG scale: 7")
    assert (params["Prompt"], params["Negative prompt"]) == ("", "ugly")


def test_skip_fields():
    params = parse_generation_parameters(A1111_TEXT, skip_fields=["Seed", "Clip skip"])
    assert "Seed" not in params and "Clip skip" not in params


def test_explicit_key_wins_over_a_size_derived_one():
    params = parse_generation_parameters("p\nSize-1: 9, Size: 512x768, Steps: 20")
    assert (params["Size-1"], params["Size-2"]) == ("9", "768")


def test_round_trip_of_the_example():
    params = parse_generation_parameters(create_infotext("a cat\nwith hat", "blurry", PARAMS))
    assert params["Prompt"] == "a cat\nwith hat"
    assert params["Negative prompt"] == "blurry"
    assert {k: params[k] for k in PARAMS} == {k: str(v) for k, v in PARAMS.items()}


# -- round trip over random input ----------------------------------------------------------------------------

def _prompt_line(line):
    return line == line.strip() and not line.startswith("Negative prompt:")


LINE = st.text(st.characters(blacklist_characters="\n"), max_size=30).filter(_prompt_line)
PROMPT = st.lists(LINE, max_size=3).map("\n".join).filter(lambda p: p == p.strip())
KEY = st.from_regex(r"\w[\w \-/]{0,12}[\w\-/]", fullmatch=True).filter(
    lambda k: k not in ("Prompt", "Negative prompt") and not k.endswith(("-1", "-2")))
VALUE = st.one_of(st.text(max_size=30), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none())


@settings(max_examples=200)
@given(prompt=PROMPT, negative=PROMPT, params=st.dictionaries(KEY, VALUE, min_size=3, max_size=8))
def test_round_trip(prompt, negative, params):
    written = {k: v for k, v in params.items() if v is not None}
    assume(len(written) >= 3)
    parsed = parse_generation_parameters(create_infotext(prompt, negative, params))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    for key, value in written.items():
        assert parsed[key] == str(value)


# -- overrides -----------------------------------------------------------------------------------------------

def test_infotext_labels_map_to_options():
    params = {"Clip skip": "2", "ENSD": "31337", "RNG": "GPU", "VAE": "vae.safetensors", "Model hash": "6ce0161689",
              "Steps": "20"}
    assert infotext_to_overrides(params, shared_options.options_templates) == {
        "CLIP_stop_at_last_layers": 2,
        "eta_noise_seed_delta": 31337,
        "randn_source": "GPU",
        "sd_vae": "vae.safetensors",
        "sd_model_checkpoint": "6ce0161689",
    }


def test_parsed_text_gives_the_implied_settings():
    overrides = infotext_to_overrides(parse_generation_parameters(A1111_TEXT), shared_options.options_templates)
    assert overrides["CLIP_stop_at_last_layers"] == 1
    assert overrides["eta_noise_seed_delta"] == 0
    assert overrides["randn_source"] == "CPU"
    assert overrides["sd_model_checkpoint"] == "6ce0161689"


def test_casts_by_option_type():
    templates = {
        "flag": OptionInfo(True, infotext="Flag"),
        "ratio": OptionInfo(1.0, infotext="Ratio"),
        "count": OptionInfo(1, infotext="Count"),
        "names": OptionInfo([], infotext="Names"),
        "untouched": OptionInfo("x", infotext="Absent"),
        "no_label": OptionInfo(3),
    }
    params = {"Flag": "False", "Ratio": "1", "Count": "3.0", "Names": '["a", "b"]', "no_label": "9"}
    assert infotext_to_overrides(params, templates) == {"flag": False, "ratio": 1.0, "count": 3, "names": ["a", "b"]}
    assert infotext_to_overrides({"Count": 4}, templates) == {"count": 4}


def test_values_that_do_not_fit_are_all_reported():
    templates = {"count": OptionInfo(1, infotext="Count"), "flag": OptionInfo(True, infotext="Flag"),
                 "ratio": OptionInfo(1.0, infotext="Ratio")}
    with pytest.raises(ValueError) as e:
        infotext_to_overrides({"Count": "2.5", "Flag": "maybe", "Ratio": "inf"}, templates)
    for part in ("'Count' (option 'count')", "'Flag' (option 'flag')", "'Ratio' (option 'ratio')", "2.5", "maybe"):
        assert part in str(e.value)
