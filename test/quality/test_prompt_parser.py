"""modules.prompt_parser: A1111's documented examples, Serena's fixes, and properties over random text."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.prompt_parser import (
    ScheduledPrompt,
    get_learned_conditioning_prompt_schedules,
    parse_prompt_attention,
    schedule_for_step,
)


def schedule(prompt, steps=10, *args, **kwargs):
    return [tuple(entry) for entry in get_learned_conditioning_prompt_schedules([prompt], steps, *args, **kwargs)[0]]


# -- prompt editing and alternation ----------------------------------------------------------------------------

ALTERNATE_AB = [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]

A1111_SCHEDULE_EXAMPLES = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", ALTERNATE_AB),
    ("[fe|]male", [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
    ("[fe|||]male", [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),
]


@pytest.mark.parametrize("prompt, expected", A1111_SCHEDULE_EXAMPLES)
def test_a1111_schedule_examples(prompt, expected):
    assert schedule(prompt) == expected


def test_brief_example_at_30_steps():
    assert schedule("a [fantasy:cyberpunk:16] landscape", 30) == [
        (16, "a fantasy landscape"), (30, "a cyberpunk landscape")]


def test_a1111_long_example_at_100_steps():
    prompt = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
              "[ in foreground::0.6][: in background:0.25] [shoddy:masterful:0.5]")
    assert schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


@pytest.mark.parametrize("prompt, expected", [
    ("a [b:.5] c", [(10, "a b c")]),
    ("a [b:1.5] c", [(5, "a  c"), (10, "a b c")]),
    ("a [b:15] c", [(5, "a  c"), (10, "a b c")]),
])
def test_hires_steps_count_on_from_the_first_pass(prompt, expected):
    assert schedule(prompt, 10, 10) == expected


@pytest.mark.parametrize("prompt, new, old", [
    ("[a:b:1.5]", [(10, "a")], [(1, "a"), (10, "b")]),
    ("[a:b:0.5]", [(5, "a"), (10, "b")], [(5, "a"), (10, "b")]),
    ("[a:b:3]", [(3, "a"), (10, "b")], [(3, "a"), (10, "b")]),
])
def test_old_scheduling(prompt, new, old):
    assert schedule(prompt) == new
    assert schedule(prompt, use_old_scheduling=True) == old


@pytest.mark.parametrize("prompt, expected", [
    ("[a::5]", [(5, "a"), (10, "")]),
    ("[:b:5]", [(5, ""), (10, "b")]),
    ("[a:b:0]", [(10, "b")]),
    ("[a:b:-3]", [(10, "b")]),
    ("[a:b:99]", [(10, "a")]),
    ("[a:b:1e0]", [(1, "a"), (10, "b")]),
    ("[a:b:c]", [(10, "[a:b:c]")]),
    ("[a:b:c:3]", [(10, "[a:b:c:3]")]),
    ("(a:[b:c:2])", [(2, "(a:b)"), (10, "(a:c)")]),
    ("[a|[b:c:2]]", [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "a"), (6, "c"), (7, "a"), (8, "c"), (9, "a"),
                     (10, "c")]),
])
def test_editing_forms(prompt, expected):
    assert schedule(prompt) == expected


def test_fraction_is_exact():
    # 0.29 * 100 is 28.999999999999996 in floating point; the switch belongs at step 29.
    assert schedule("[a:b:0.29]", 100)[0] == (29, "a")


@pytest.mark.parametrize("prompt", ["a|b", "[a|b", "(a|b)", "a [b:c:3] \\"])
def test_no_parse_keeps_the_prompt_as_written(prompt):
    assert schedule(prompt) == [(10, prompt)]


def test_escapes_are_kept_for_the_attention_pass():
    assert schedule(r"\[a:b:3\]") == [(10, r"\[a:b:3\]")]
    assert schedule(r"[\(a\):b:3]") == [(3, r"\(a\)"), (10, "b")]


def test_deep_nesting_does_not_hit_the_recursion_limit():
    assert schedule("[" * 5000 + "a") == [(10, "[" * 5000 + "a")]
    deep = "[" * 3000 + "a:b:3" + "]" * 3000
    assert [end for end, _ in schedule(deep)] == [3, 10]


def test_schedules_for_several_prompts():
    result = get_learned_conditioning_prompt_schedules(["x", "[a:b:2]", "x"], 4)
    assert result == [[(4, "x")], [(2, "a"), (4, "b")], [(4, "x")]]
    assert result[0] is not result[2]
    assert isinstance(result[1][0], ScheduledPrompt) and result[1][0].end_at_step == 2


def test_bad_arguments():
    with pytest.raises(TypeError, match="prompts"):
        get_learned_conditioning_prompt_schedules("a prompt", 10)
    with pytest.raises(ValueError, match="steps"):
        get_learned_conditioning_prompt_schedules(["a"], 0)
    with pytest.raises(ValueError, match="hires_steps"):
        get_learned_conditioning_prompt_schedules(["a"], 10, hires_steps=0)


def test_schedule_for_step():
    entries = schedule("a [fantasy:cyberpunk:16] landscape", 30)
    assert schedule_for_step(entries, 0) == "a fantasy landscape"
    assert schedule_for_step(entries, 16) == "a fantasy landscape"
    assert schedule_for_step(entries, 17) == "a cyberpunk landscape"
    assert schedule_for_step(entries, 99) == "a cyberpunk landscape"
    with pytest.raises(ValueError, match="schedule"):
        schedule_for_step([], 0)


# -- attention -----------------------------------------------------------------------------------------------

A1111_ATTENTION_EXAMPLES = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    (r"\(literal\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (b BREAK c) [d BREAK]", [["a ", 1.0], ["b", 1.1], ["BREAK", -1], ["c", 1.1], [" ", 1.0],
                                 ["d", 1 / 1.1], ["BREAK", -1], ["", 1 / 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
]


@pytest.mark.parametrize("text, expected", A1111_ATTENTION_EXAMPLES)
def test_a1111_attention_examples(text, expected):
    assert parse_prompt_attention(text) == expected


@pytest.mark.parametrize("text, weight", [
    ("(word)", 1.1),
    ("((word))", 1.21),
    ("(((word)))", 1.331),
    ("[word]", 1 / 1.1),
    ("[[word]]", 1 / 1.21),
    ("(word:1.5)", 1.5),
    ("(word: 0.5 )", 0.5),
    ("((word:1.5))", 1.65),
    ("[(word:1.5)]", 1.5 / 1.1),
    ("(word:-1)", -1.0),
])
def test_weights(text, weight):
    [[word, got]] = parse_prompt_attention(text)
    assert word == "word"
    assert got == pytest.approx(weight)


@pytest.mark.parametrize("text, expected", [
    ("", [["", 1.0]]),
    (r"a\\b", [["a\\b", 1.0]]),
    (r"a\b", [["ab", 1.0]]),
    ("a:b", [["a:b", 1.0]]),
    ("word:1.5)", [["word:1.5)", 1.0]]),
    ("(word:1.2.3)", [["word:1.2.3", 1.1]]),
    ("a) b]", [["a) b]", 1.0]]),
    ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("a BREAK BREAK b", [["a", 1.0], ["BREAK", -1], ["", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("aBREAK BREAKb", [["aBREAK BREAKb", 1.0]]),
    ("[(a)]", [["a", 1.0]]),
])
def test_attention_edge_cases(text, expected):
    assert parse_prompt_attention(text) == expected


def test_attention_rejects_non_text():
    with pytest.raises(TypeError, match="text"):
        parse_prompt_attention(None)


# -- properties ----------------------------------------------------------------------------------------------

SYNTAX_HEAVY = st.text(alphabet="ab :|[]()\\.05-BREAK\n", max_size=60)
PLAIN = st.text(max_size=80).filter(lambda t: not any(c in t for c in "\\()[]:|") and "BREAK" not in t)


@settings(max_examples=300)
@given(text=st.one_of(st.text(max_size=80), SYNTAX_HEAVY), steps=st.integers(1, 40))
def test_random_text_never_raises(text, steps):
    [entries] = get_learned_conditioning_prompt_schedules([text], steps)
    ends = [end for end, _ in entries]
    assert ends == sorted(set(ends)) and ends[-1] == steps and ends[0] >= 1
    for _, scheduled_text in entries:
        chunks = parse_prompt_attention(scheduled_text)
        assert chunks and all(isinstance(t, str) and isinstance(w, (int, float)) for t, w in chunks)
    assert parse_prompt_attention(text)


@given(text=PLAIN, steps=st.integers(1, 40))
def test_plain_text_is_one_chunk_and_one_schedule_entry(text, steps):
    assert parse_prompt_attention(text) == [[text, 1.0]]
    assert schedule(text, steps) == [(steps, text)]
