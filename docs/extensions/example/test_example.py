"""Tests of the word-filter example extension (``docs/extensions/writing.md``, "Testing an extension").

Run them alone with ``venv/bin/python -m pytest docs/extensions/example`` from Serena's folder; the suite also runs
them (``test/quality/test_extensions.py`` collects this file's tests and fixtures).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
if str(ROOT) not in sys.path:  # run from anywhere
    sys.path.insert(0, str(ROOT))

from modules import plugins, shared  # noqa: E402
from modules.extensions_api.testing import loaded  # noqa: E402
from modules.runtime_utils import temporary_opts  # noqa: E402

FIXTURES = ("word_filter",)  # the fixtures test/quality/test_extensions.py re-exports with the tests


# -- start fixture --
@pytest.fixture
def word_filter():
    """Register the extension for one test. Its hooks, modules and options are gone afterwards."""
    with loaded(str(HERE)) as ext:
        yield ext
# -- end fixture --


def make_p(prompt: str):
    """Just the fields the hook reads (a real test can use ``processing.StableDiffusionProcessingTxt2Img``)."""
    return SimpleNamespace(prompt=prompt, extra_generation_params={}, warnings=[])


# -- start tests --
def test_word_filter_registers_its_option(word_filter):
    assert word_filter.name == "word-filter" and word_filter.plugins == ["word-filter"]
    assert shared.opts.word_filter_words == ""


def test_word_filter_applies_an_override_for_one_generation_only(word_filter):
    p = make_p("a cat, ugly, Blurry background")
    with temporary_opts({"word_filter_words": "ugly, blurry"}):
        plugins.host.call("on_process", p=p)
    assert p.prompt == "a cat, background"
    assert p.extra_generation_params == {"Filtered words": "blurry ugly"}

    after = make_p("a cat, ugly")
    plugins.host.call("on_process", p=after)  # the override ended: the stored value (empty) applies
    assert after.prompt == "a cat, ugly" and after.extra_generation_params == {}
# -- end tests --


def test_word_filter_nested_overrides_unwind(word_filter):
    from serena_ext.word_filter.word_filter import current_pattern  # the module's import name (writing.md)

    with temporary_opts({"word_filter_words": "red"}):
        assert current_pattern().pattern == r"\b(?:red)\b"
        with temporary_opts({"CLIP_stop_at_last_layers": 2}):  # another key: the pattern stays
            assert current_pattern().pattern == r"\b(?:red)\b"
            with temporary_opts({"word_filter_words": "blue"}):
                assert current_pattern().pattern == r"\b(?:blue)\b"
            assert current_pattern().pattern == r"\b(?:red)\b"
    assert current_pattern() is None
