"""Fuzzing of the text parsers a client or an extension author controls: infotext, prompt syntax, metadata.ini,
and override validation.

Each parser gets: arbitrary text never raises (beyond its documented errors), properties that tie it to what
it must mean (round trips, idempotence, agreement with A1111's own pattern), and a linear-time check on the
worst inputs found for it (long runs of commas, quotes, colons, backslashes, white space, deep nesting). The
time checks compare 10k against 100k characters (linear: about 10x; the quadratic versions were 100x and
took seconds to minutes) with an absolute bound far above normal, so a loaded machine does not make them flaky.
"""

from __future__ import annotations

import configparser
import gc
import json
import re
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from modules import extension_discovery, infotext, shared
from modules.extension_discovery import Metadata, HookConstraints, read_metadata
from modules.infotext import create_infotext, parse_generation_parameters
from modules.prompt_parser import get_learned_conditioning_prompt_schedules, parse_prompt_attention

SMALL, LARGE = 10_000, 100_000
# Linear time gives a ratio near 10 (up to ~15 with cache effects); quadratic gives 100.
MAX_RATIO = 30
# Far above the ~0.2 s the slowest of these takes; the quadratic versions took 5 s at 20k characters.
MAX_SECONDS_AT_LARGE = 3.0


@pytest.fixture(scope="module", autouse=True)
def frozen_heap():
    """Everything alive before these tests (torch, gradio, earlier tests' objects: millions late in the suite) is
    moved out of the collector's reach, so each ``gc.collect()`` below costs milliseconds, not a second."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def timed(fn, arg) -> float:
    # The collector's pauses grow with what is alive, not with the parser's work: keep them out of the timing.
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        fn(arg)
        return time.perf_counter() - start
    finally:
        gc.enable()


def repeat_to(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def assert_linear(fn, unit: str, prefix: str = "", attempts: int = 3) -> None:
    small_text, large_text = prefix + repeat_to(unit, SMALL), prefix + repeat_to(unit, LARGE)
    ratios = []
    for _ in range(attempts):  # other processes share the machine: a linear parser passes one attempt of three
        small = min(timed(fn, small_text), timed(fn, small_text))
        large = timed(fn, large_text)
        assert large < MAX_SECONDS_AT_LARGE, (unit, small, large)
        # Below 5 ms the small run is mostly noise: compare against that floor.
        ratios.append(large / max(small, 0.005))
        if ratios[-1] < MAX_RATIO:
            return
    pytest.fail(f"{unit!r}: 100k characters took {ratios} times as long as 10k (linear: about 10)")


# Units whose repetition made one of the old parsers quadratic, or that stress the new ones most.
INFOTEXT_UNITS = [",", "a:", '\\"', " ", "\n", " word", "ab:,", 'ab: "\\",', 'ab: "x', "a-"]
PROMPT_UNITS = ["(a", "[a", "(a[a", "[a:", "[a|", ":1", "\\x", " ", " BREAK ", "[a:b:", "(("]


# -- infotext --------------------------------------------------------------------------------------------------

# A1111's pattern for the parameters line (modules/infotext_utils.py), the reference the scan must agree with.
A1111_PARAM = re.compile(r"\s*(\w[\w \-/]+):\s*(\"(?:\\.|[^\\\"])*\"|[^,]*)(?:,|$)")
INFOTEXT_ALPHABET = st.sampled_from(list('ab1_é -/,:"\\\n\t\r\u00a0\u2028') + ["Steps", ": ", ", ", "x2"])
INFOTEXT_LIKE = st.lists(INFOTEXT_ALPHABET, max_size=40).map("".join)
# A1111's key pattern, not ending in a space (a word character first, then word characters, " ", "-" and "/").
KEYS = st.tuples(st.sampled_from("aSé_1"), st.text(alphabet="abé1_ -/", max_size=8), st.sampled_from("z9-/")).map(
    "".join)


@settings(max_examples=400, deadline=None)
@given(line=st.one_of(INFOTEXT_LIKE, st.text(max_size=40)))
def test_infotext_scan_finds_what_a1111s_regex_finds(line):
    assert infotext._find_params(line) == A1111_PARAM.findall(line)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(INFOTEXT_LIKE, st.text(max_size=200)))
def test_infotext_parse_of_any_text_never_raises(text):
    result = parse_generation_parameters(text)
    assert isinstance(result["Prompt"], str) and isinstance(result["Negative prompt"], str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


@settings(max_examples=120, deadline=None)
@given(prompt=st.text(max_size=40), negative=st.text(max_size=40),
       params=st.dictionaries(KEYS, st.one_of(st.text(max_size=30), INFOTEXT_LIKE, st.integers()),
                              min_size=3, max_size=8))
def test_infotext_round_trip(prompt, negative, params):
    parsed = parse_generation_parameters(create_infotext(prompt, negative, params))
    assert {k: parsed[k] for k in params} == {k: str(v) for k, v in params.items()}
    if "\n" not in prompt and prompt == prompt.strip() and not prompt.startswith("Negative prompt:"):
        assert parsed["Prompt"] == prompt


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(INFOTEXT_LIKE, st.text(max_size=120),
                      st.tuples(INFOTEXT_LIKE, INFOTEXT_LIKE).map("\n".join)))
def test_infotext_parse_write_parse_is_idempotent(text):
    first = parse_generation_parameters(text)
    params = {k: v for k, v in first.items() if k not in ("Prompt", "Negative prompt")}
    assume(all(infotext._VALID_KEY.fullmatch(k) for k in params))  # keys ending in a space cannot be written
    again = parse_generation_parameters(create_infotext(first["Prompt"], first["Negative prompt"], params))
    assert again == first


@pytest.mark.parametrize("unit", INFOTEXT_UNITS)
def test_infotext_parse_is_linear(unit):
    assert_linear(parse_generation_parameters, unit, prefix="a cat\nNegative prompt: x\n")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit=st.lists(INFOTEXT_ALPHABET, min_size=1, max_size=6).map("".join))
def test_infotext_parse_of_any_repeated_pattern_is_fast(unit):
    start = time.perf_counter()
    parse_generation_parameters(repeat_to(unit, LARGE))
    assert time.perf_counter() - start < MAX_SECONDS_AT_LARGE


# -- prompt syntax ---------------------------------------------------------------------------------------------

SYNTAX = st.sampled_from(list("ab :|[]()\\.05-\n") + ["BREAK", " BREAK ", "1.5", ":0.5]", "\u3000"])
SYNTAX_TEXT = st.lists(SYNTAX, max_size=60).map("".join)
NO_BREAK = st.text(max_size=40).filter(lambda t: "BREAK" not in t)


def escape(text: str) -> str:
    return re.sub(r"([()\[\]\\])", r"\\\1", text)


def sequential_power(factor: float, times: int) -> float:
    # A1111 multiplies once per bracket level.
    weight = 1.0
    for _ in range(times):
        weight *= factor
    return weight


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(SYNTAX_TEXT, st.text(max_size=100)), steps=st.integers(1, 30),
       hires=st.none() | st.integers(1, 30), old=st.booleans())
def test_prompt_syntax_of_any_text_never_raises(text, steps, hires, old):
    [entries] = get_learned_conditioning_prompt_schedules([text], steps, hires, use_old_scheduling=old)
    total = steps if hires is None or old else hires
    assert [end for end, _ in entries] == sorted({end for end, _ in entries}) and entries[-1][0] == total
    for _, scheduled in entries:
        chunks = parse_prompt_attention(scheduled)
        assert chunks and all(isinstance(t, str) and isinstance(w, float) or w == -1 for t, w in chunks)


@given(text=NO_BREAK.filter(bool))
def test_escaped_text_is_one_chunk_of_itself(text):
    assert parse_prompt_attention(escape(text)) == [[text, 1.0]]


@given(text=NO_BREAK.filter(bool), depth=st.integers(1, 40), weight=st.sampled_from(["0.5", "1.25", "2", "-1"]))
def test_nested_weights_are_a1111s_products(text, depth, weight):
    inner = escape(text)
    assert parse_prompt_attention("(" * depth + inner + ")" * depth) == [[text, sequential_power(1.1, depth)]]
    assert parse_prompt_attention("[" * depth + inner + "]" * depth) == [[text, sequential_power(1 / 1.1, depth)]]
    assert parse_prompt_attention(f"({inner}:{weight})") == [[text, float(weight)]]
    assert parse_prompt_attention("(" * depth + inner) == [[text, sequential_power(1.1, depth)]]  # never closed


@given(words=st.lists(st.text(alphabet="abc ", min_size=1, max_size=8).filter(str.strip), min_size=1, max_size=6))
def test_break_splits_into_stripped_pieces(words):
    chunks = parse_prompt_attention(" BREAK ".join(words))
    assert chunks[1::2] == [["BREAK", -1]] * (len(words) - 1)
    # The white space next to a BREAK goes with it; the rest of the text stays as it is.
    last = len(words) - 1
    pieces = [(w.lstrip() if i else w) for i, w in enumerate(words)]
    assert [t for t, _ in chunks[::2]] == [(p.rstrip() if i < last else p) for i, p in enumerate(pieces)]


@settings(max_examples=100, deadline=None)
@given(before=NO_BREAK.filter(lambda t: not re.search(r"[\[\]():|\\]", t)),
       after=NO_BREAK.filter(lambda t: not re.search(r"[\[\]():|\\]", t)),
       when=st.integers(1, 19), steps=st.integers(20, 40))
def test_prompt_editing_switches_at_its_step(before, after, when, steps):
    [entries] = get_learned_conditioning_prompt_schedules([f"x[{before}:{after}:{when}]y"], steps)
    assert [tuple(e) for e in entries] == [(when, f"x{before}y"), (steps, f"x{after}y")]


@pytest.mark.parametrize("unit", PROMPT_UNITS)
def test_prompt_attention_is_linear(unit):
    assert_linear(parse_prompt_attention, unit)


@pytest.mark.parametrize("unit", PROMPT_UNITS)
def test_prompt_schedule_is_linear(unit):
    assert_linear(lambda text: get_learned_conditioning_prompt_schedules([text], 4), unit)


@pytest.mark.parametrize("text", ["[a:b:1e99999999]", "[a:b:-1e99999999]", "[a:b:1e-99999999]",
                                  "[a:b:0." + "0" * 5000 + "1]", "[a:b:" + "9" * 5000 + "]"])
def test_huge_switch_values_are_quick_and_never_raise(text):
    start = time.perf_counter()
    [entries] = get_learned_conditioning_prompt_schedules([text], 10)
    assert time.perf_counter() - start < 1.0 and entries[-1][0] == 10


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit=st.lists(SYNTAX, min_size=1, max_size=6).map("".join))
def test_prompt_syntax_of_any_repeated_pattern_is_fast(unit):
    text = repeat_to(unit, LARGE)
    start = time.perf_counter()
    for entry in get_learned_conditioning_prompt_schedules([text], 4)[0]:
        parse_prompt_attention(entry.text)
    assert time.perf_counter() - start < 2 * MAX_SECONDS_AT_LARGE


# -- metadata.ini ----------------------------------------------------------------------------------------------

INI_PIECES = st.sampled_from(["[Extension]", "[hooks/on_app_started]", "[Other]", "Name", "Requires", "before",
                              "After", " = ", ":", "=", "a", "b|c", ", ", " ", "\t", "\n", "\n  ", "#", ";", "[",
                              "]", "%", "é"])
INI_TEXT = st.lists(INI_PIECES, max_size=40).map("".join)
NAME = st.text(alphabet="abzAZ09_.-", min_size=1, max_size=8)
NAMES = st.lists(st.one_of(NAME, st.tuples(NAME, NAME).map("|".join)), max_size=4)


def read_text(tmp_path, text: str):
    (tmp_path / "metadata.ini").write_text(text, encoding="utf-8")
    return read_metadata(str(tmp_path))


@pytest.fixture(scope="module")
def ini_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ini")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(INI_TEXT, st.text(max_size=100)))
def test_metadata_reads_as_the_standard_configparser(ini_dir, text, monkeypatch):
    ours = read_text(ini_dir, text)
    with monkeypatch.context() as m:
        m.setattr(extension_discovery, "_ConfigParser", configparser.ConfigParser)
        standard = read_text(ini_dir, text)
    assert ours == standard


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_metadata_of_any_bytes_never_raises(ini_dir, data):
    (ini_dir / "metadata.ini").write_bytes(data)
    metadata, notes = read_metadata(str(ini_dir))
    assert isinstance(metadata, Metadata) and all(isinstance(n, str) for n in notes)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.none() | st.tuples(NAME, st.text(alphabet="ab _.-", max_size=10), NAME).map("".join),
       requires=NAMES, before=NAMES, after=NAMES,
       hooks=st.dictionaries(st.text(alphabet="abcxyz_", min_size=1, max_size=12), st.tuples(NAMES, NAMES),
                             max_size=3))
def test_metadata_round_trip(ini_dir, name, requires, before, after, hooks):
    lines = ["[Extension]", f"Name = {name or ''}", f"Requires = {', '.join(requires)}",
             f"Before = {' '.join(before)}", "After =", *(f"  {a}" for a in after)]
    for hook, (hook_before, hook_after) in hooks.items():
        lines += [f"[hooks/{hook}]", f"before: {','.join(hook_before)}", f"after = {' , '.join(hook_after)}"]
    metadata, notes = read_text(ini_dir, "\n".join(lines) + "\n")
    assert notes == []
    assert metadata == Metadata(name=name, requires=requires, before=before, after=after,
                                hooks={h: HookConstraints(list(b), list(a)) for h, (b, a) in hooks.items()})


@pytest.mark.parametrize("unit", [" ", "\t", " = ", "a, ", "\n  x", "]"])
def test_metadata_is_linear(ini_dir, unit):
    assert_linear(lambda text: read_text(ini_dir, text), unit, prefix="[Extension]\na")


# -- override validation (Options.check; read only here) -------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)
OPTION_KEYS = st.one_of(st.sampled_from(sorted(shared.opts.data_labels)), st.text(max_size=20))


@settings(max_examples=60, deadline=None)
@given(values=st.dictionaries(OPTION_KEYS, JSON_VALUES, max_size=6), for_override=st.booleans(),
       is_api=st.booleans())
def test_override_check_never_raises_and_accounts_for_every_key(values, for_override, is_api):
    result = shared.opts.check(values, for_override=for_override, is_api=is_api)
    for key in values:
        name = shared.opts.canonical_key(key)
        assert (key in result.errors) != (name in result.values), key
    assert all(isinstance(reason, str) and reason for reason in result.errors.values())
    json.dumps(result.errors)  # reasons travel in a JSON response


@settings(max_examples=60, deadline=None)
@given(values=st.dictionaries(OPTION_KEYS, JSON_VALUES, max_size=6))
def test_override_check_is_idempotent(values):
    first = shared.opts.check(values, for_override=True)
    again = shared.opts.check(first.values, for_override=True)
    assert again.errors == {} and again.values == first.values
