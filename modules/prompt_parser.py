"""A1111 prompt syntax in pure Python: prompt editing, alternation and attention weights.

A prompt goes through two passes, as in A1111:

1. ``get_learned_conditioning_prompt_schedules`` expands prompt editing (``[from:to:when]``) and alternation
   (``[a|b]``) into one plain prompt per range of sampling steps (a list of ``ScheduledPrompt``);
   ``schedule_for_step`` picks the prompt for a step.
2. ``parse_prompt_attention`` splits each of those prompts into ``[text, weight]`` chunks (``(word)``,
   ``[word]``, ``(word:1.5)``, escapes, ``BREAK``) for the text encoder.

Both accept any text and never raise on it: what is not valid syntax is kept as written, as A1111 does. Nothing
here imports torch; encoding the chunks belongs to the conditioning code.

Where Serena differs from A1111 v1.10.1:

* a ``BREAK`` inside brackets stays a ``["BREAK", -1]`` marker; A1111 multiplied its weight, so the text encoder
  read the word "BREAK" with weight -1.1;
* a fractional switch step is computed exactly (``[a:b:0.29]`` at 100 steps switches at step 29, not 28);
* ``(word:1.2.3)`` keeps ``:1.2.3`` as text instead of raising ``ValueError``;
* a valid ``[...]`` is always read as editing or alternation. A1111's grammar is ambiguous when stray brackets
  stand next to it (``[x::2])(``), and its parser then sometimes takes the whole prompt as plain text;
* ``schedule_for_step`` past the last entry gives the last entry, where A1111 went back to the first;
* both passes take linear time, however deep brackets nest (A1111's are quadratic: 40k characters of ``(a``
  took half a minute). A weight is therefore multiplied in bracket order, outermost first, round brackets
  before square ones, instead of A1111's closing order: a weight with three or more factors can differ from
  A1111's in the last bit, and then two adjacent chunks may stay apart where A1111 merged them, or the reverse;
* a switch value (``when``) of more than 100 digits or with an exponent of more than 3 digits is read as a
  float within +-1e9, as A1111 reads every one (the exact reading would build integers of that size).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

__all__ = [
    "ScheduledPrompt",
    "get_learned_conditioning_prompt_schedules",
    "parse_prompt_attention",
    "schedule_for_step",
]

_ROUND_BRACKET_MULTIPLIER = 1.1
_SQUARE_BRACKET_MULTIPLIER = 1 / 1.1


# -- attention weights ---------------------------------------------------------------------------------------

_ESCAPABLE = "()[]\\"
_PLAIN_RUN = re.compile(r"[^\\()\[\]:]+")
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_BREAK_WORD = re.compile(r"\bBREAK\b")


class _Bracket:
    """An open ``(`` or ``[``: the bracket around it (of the same kind) and, once known, its factor."""

    __slots__ = ("outer", "factor", "product")

    def __init__(self, outer: _Bracket | None, factor: float):
        self.outer = outer
        self.factor = factor
        self.product = 1.0


def parse_prompt_attention(text: str) -> list[list]:
    r"""Split a prompt into ``[text, weight]`` chunks, A1111's attention syntax.

    ``(word)`` multiplies the weight by 1.1, ``((word))`` by 1.21, ``[word]`` divides it by 1.1, ``(word:1.5)``
    multiplies it by 1.5. ``\(``, ``\)``, ``\[``, ``\]`` and ``\\`` are literal characters; a backslash before
    any other character is dropped. A bracket never closed applies to the end of the text, a closing bracket
    never opened is text. ``BREAK`` (a whole word) becomes a ``["BREAK", -1]`` marker that starts a new
    75-token chunk; brackets never change it. Adjacent chunks of equal weight are merged.

    A chunk's weight is the product of the factors of the brackets around it, round ones (outermost first)
    times square ones (outermost first), so that the parse takes linear time however deep brackets nest (A1111
    multiplied every chunk inside a bracket when it closed, quadratic in the nesting depth). With three or more
    different factors the last bit of a weight can differ from A1111's, which multiplied in closing order.

    Args:
        text (`str`):
            One prompt, after prompt editing and alternation were expanded.

    Returns:
        `list[list]`: ``[[text, weight], ...]``; ``[["", 1.0]]`` for an empty prompt.

    Example: ``parse_prompt_attention("an (important) word")`` gives
    ``[["an ", 1.0], ["important", 1.1], [" word", 1.0]]``.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str, got {type(text).__name__} {text!r}")

    # 1. Scan: each chunk remembers the innermost open round and square bracket around it (None for a BREAK)
    chunks: list[tuple[str, tuple | None]] = []
    brackets: list[_Bracket] = []  # every bracket opened, in order: an outer one comes before the inner ones
    round_top: _Bracket | None = None
    square_top: _Bracket | None = None

    def add(chunk_text):
        chunks.append((chunk_text, (round_top, square_top)))

    def add_text(run):
        parts = _BREAK_WORD.split(run)
        last = len(parts) - 1
        for k, part in enumerate(parts):
            # The white space around a BREAK goes with it.
            if k:
                chunks.append(("BREAK", None))
                part = part.lstrip()
            add(part.rstrip() if k < last else part)

    def open_bracket(outer, factor):
        brackets.append(_Bracket(outer, factor))
        return brackets[-1]

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            escaped = text[i + 1:i + 2]
            if escaped and escaped in _ESCAPABLE:
                add(escaped)
                i += 2
            else:
                add("")
                i += 1
        elif c == "(":
            round_top = open_bracket(round_top, _ROUND_BRACKET_MULTIPLIER)
            i += 1
        elif c == "[":
            square_top = open_bracket(square_top, _SQUARE_BRACKET_MULTIPLIER)
            i += 1
        elif c == ")" and round_top is not None:
            round_top = round_top.outer
            i += 1
        elif c == "]" and square_top is not None:
            square_top = square_top.outer
            i += 1
        elif c == ":":
            match = _WEIGHT_CLOSE.match(text, i)
            weight = _to_float(match.group(1)) if match else None
            if match and round_top is None:
                # A1111 reads ":1.5)" with no open "(" as text.
                add_text(match.group(0))
                i = match.end()
            elif match and weight is not None:
                round_top.factor = weight
                round_top = round_top.outer
                i = match.end()
            else:
                add_text(c)
                i += 1
        elif c in ")]":
            add_text(c)
            i += 1
        else:
            run = _PLAIN_RUN.match(text, i).group(0)
            add_text(run)
            i += len(run)

    if not chunks:
        return [["", 1.0]]

    # 2. Weights: each bracket's product of factors from the outermost one in
    for bracket in brackets:
        bracket.product = (bracket.outer.product if bracket.outer else 1.0) * bracket.factor

    # 3. Merge adjacent chunks of equal weight
    merged: list[list] = []
    parts: list[list[str]] = []
    previous_break = True
    for chunk_text, around in chunks:
        if around is None:
            merged.append(["BREAK", -1])
            parts.append(["BREAK"])
            previous_break = True
            continue
        weight = 1.0
        for bracket in around:
            if bracket is not None:
                weight *= bracket.product
        if not previous_break and weight == merged[-1][1]:
            parts[-1].append(chunk_text)
        else:
            merged.append([chunk_text, weight])
            parts.append([chunk_text])
        previous_break = False
    for chunk, texts in zip(merged, parts):
        chunk[0] = "".join(texts)
    return merged


def _to_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# -- prompt editing and alternation ----------------------------------------------------------------------------

class ScheduledPrompt(NamedTuple):
    """One entry of a prompt schedule: ``text`` applies up to and including step ``end_at_step``."""

    end_at_step: int
    text: str


@dataclass
class _Edit:
    """``[before:after:when]``; ``before`` is ``None`` for ``[after:when]``."""

    before: list | None
    after: list
    when: str
    step: int = 0


@dataclass
class _Alternation:
    """``[a|b|c]``: option ``(step - 1) % len(options)`` at each step."""

    options: list


@dataclass
class _Frame:
    """A bracket being read: its segments so far and the separators between them."""

    opener: str
    start: int
    segments: list = field(default_factory=lambda: [[]])
    separators: list = field(default_factory=list)


_CLOSER = {"[": "]", "(": ")"}
_SWITCH_NUMBER = re.compile(r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*")


class _Unparsable(Exception):
    """The prompt has no parse (a stray ``|`` or a dangling backslash): A1111 then uses it as written."""


def _close_frame(frame: _Frame) -> list | None:
    """The nodes a finished bracket stands for, or ``None`` when its content fits no bracket form."""
    seps, segs = frame.separators, frame.segments
    # A bracket that is just text keeps its segments as nested lists: copying them into the parent would copy
    # the innermost text once per level, quadratic in the nesting depth.
    if frame.opener == "(":
        if len(seps) > 1:
            return None
        return ["(", segs[0], ":", segs[1], ")"] if seps else ["(", segs[0], ")"]
    if not seps:
        return ["[", segs[0], "]"]
    if all(s == "|" for s in seps):
        return [_Alternation(options=segs)]
    if all(s == ":" for s in seps) and len(seps) <= 2:
        when_nodes = segs[-1]
        if not all(isinstance(n, str) for n in when_nodes):
            return None
        match = _SWITCH_NUMBER.fullmatch("".join(when_nodes))
        if match is None:
            return None
        before = segs[0] if len(seps) == 2 else None
        return [_Edit(before=before, after=segs[-2], when=match.group(1))]
    return None


def _parse_schedule_syntax(text: str) -> list:
    """Parse ``text`` into plain strings, lists of nodes (a bracket read as text), ``_Edit`` and ``_Alternation``.

    Inside a bracket every nested bracket must be valid; at the top level a bracket that is not valid syntax is
    kept as a literal character and reading goes on right after it (A1111's grammar allows stray ``[]():`` only
    at the top level). The scan keeps its own stack, so deep nesting cannot hit Python's recursion limit, and
    remembers where brackets failed, so no failing bracket is read twice.
    """
    top: list = []
    stack: list[_Frame] = []
    failed_starts: set[int] = set()
    i, n = 0, len(text)

    def fail():
        nonlocal i
        failed_starts.update(f.start for f in stack)
        top.append(stack[0].opener)
        i = stack[0].start + 1
        stack.clear()

    while True:
        if i >= n:
            if not stack:
                return top
            fail()
            continue
        c = text[i]
        target = stack[-1].segments[-1] if stack else top
        if c == "\\":
            if i + 1 >= n or text[i + 1] == "\n":
                raise _Unparsable
            target.append(text[i:i + 2])
            i += 2
        elif c in "[(":
            if i in failed_starts:
                if stack:
                    fail()
                else:
                    top.append(c)
                    i += 1
            else:
                stack.append(_Frame(opener=c, start=i))
                i += 1
        elif not stack:
            if c == "|":
                raise _Unparsable
            top.append(c)
            i += 1
        elif c in ":|":
            if c == "|" and stack[-1].opener == "(":
                fail()
                continue
            stack[-1].separators.append(c)
            stack[-1].segments.append([])
            i += 1
        elif c in "])":
            frame = stack[-1]
            nodes = _close_frame(frame) if c == _CLOSER[frame.opener] else None
            if nodes is None:
                fail()
                continue
            stack.pop()
            (stack[-1].segments[-1] if stack else top).extend(nodes)
            i += 1
        else:
            target.append(c)
            i += 1


def _walk(nodes: list):
    """Every ``_Edit`` and ``_Alternation`` in ``nodes``, in all branches."""
    pending = [nodes]
    while pending:
        for node in pending.pop():
            if isinstance(node, list):
                pending.append(node)
            elif isinstance(node, _Edit):
                yield node
                pending.append(node.after)
                if node.before is not None:
                    pending.append(node.before)
            elif isinstance(node, _Alternation):
                yield node
                pending.extend(node.options)


def _render(nodes: list, step: int) -> str:
    out: list[str] = []
    stack = [iter(nodes)]
    while stack:
        for node in stack[-1]:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, list):
                stack.append(iter(node))
                break
            elif isinstance(node, _Edit):
                chosen = node.before if step <= node.step else node.after
                stack.append(iter(chosen or ()))
                break
            else:
                stack.append(iter(node.options[(step - 1) % len(node.options)]))
                break
        else:
            stack.pop()
    return "".join(out)


# A switch value with more digits or a larger exponent than this is read as a float (as A1111 reads every one),
# within +-_SWITCH_CLAMP: the exact reading would build integers of that many digits (``1e99999999``: minutes),
# and Python refuses to convert more than 4300 digits at all.
_EXACT_SWITCH_DIGITS = 100
_SWITCH_CLAMP = 10**9


def _switch_value(when: str) -> Fraction:
    mantissa, _, exponent = when.lower().partition("e")
    if len(mantissa) <= _EXACT_SWITCH_DIGITS and len(exponent.lstrip("+-")) <= 3:
        return Fraction(when)
    return Fraction(max(-_SWITCH_CLAMP, min(_SWITCH_CLAMP, float(when))))


def _switch_step(when: str, steps: int, int_offset: int, fraction_offset: int, use_old_scheduling: bool) -> int:
    value = _switch_value(when)
    if use_old_scheduling:
        if value < 1:
            value *= steps
    elif "." in when:
        value = (value - fraction_offset) * steps
    else:
        value -= int_offset
    return min(steps, math.floor(value))


def _check_steps(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {type(value).__name__} {value!r}")


def get_learned_conditioning_prompt_schedules(prompts: list[str], steps: int, hires_steps: int | None = None,
                                              use_old_scheduling: bool = False) -> list[list[ScheduledPrompt]]:
    """Expand prompt editing and alternation into a schedule of plain prompts, one schedule per prompt.

    * ``[from:to:when]`` uses ``from`` up to step ``when``, then ``to``; ``[to:when]`` adds ``to`` after ``when``;
      ``[from::when]`` removes ``from`` after ``when``. ``when`` with a decimal point is a fraction of the steps
      (``0.25`` of 20 steps is step 5), without one a step number. With ``use_old_scheduling`` (A1111's option of
      that name), any value below 1 is a fraction and any other a step number.
    * ``[a|b|c]`` uses ``a`` at step 1, ``b`` at step 2, ``c`` at step 3, ``a`` at step 4, ...; an empty option
      stands for nothing (``[fe|]male``).
    * Brackets nest (``a[b:[c:d:2]:1]e``). A prompt with no parse (a ``|`` outside ``[...]``, a trailing
      backslash) is used as written for every step.

    Args:
        prompts (`list[str]`):
            The prompts; equal prompts are expanded once.
        steps (`int`):
            The number of sampling steps (of the first pass when ``hires_steps`` is given).
        hires_steps (`int`, *optional*, defaults to `None`):
            The number of steps of the hires pass. When given (and ``use_old_scheduling`` is off), the schedule is
            for that pass: a step number counts on from the first pass (``[a:b:25]`` after 20 base steps switches
            at hires step 5) and a fraction above 1 reaches into it (``1.5`` is half-way through the hires pass).
        use_old_scheduling (`bool`, *optional*, defaults to `False`):
            Read ``when`` as A1111 did before v1.6 (see above).

    Returns:
        `list[list[ScheduledPrompt]]`: for each prompt, ``ScheduledPrompt(end_at_step, text)`` entries sorted by
        step; the last one ends at the step count. ``"a [fantasy:cyberpunk:16] landscape"`` at 30 steps gives
        ``[(16, "a fantasy landscape"), (30, "a cyberpunk landscape")]``.
    """
    # 1. Check inputs
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"`prompts` must be a list of str (wrap a single prompt: [prompt]), got {prompts!r}")
    _check_steps("steps", steps)
    if hires_steps is not None:
        _check_steps("hires_steps", hires_steps)

    # 2. Where step numbers count from
    if hires_steps is None or use_old_scheduling:
        total, int_offset, fraction_offset = steps, 0, 0
    else:
        total, int_offset, fraction_offset = hires_steps, steps, 1

    # 3. One schedule per distinct prompt
    def schedule(prompt: str) -> list[ScheduledPrompt]:
        try:
            nodes = _parse_schedule_syntax(prompt)
        except _Unparsable:
            return [ScheduledPrompt(total, prompt)]
        ends = {total}
        for node in _walk(nodes):
            if isinstance(node, _Edit):
                node.step = _switch_step(node.when, total, int_offset, fraction_offset, use_old_scheduling)
                if node.step >= 1:
                    ends.add(node.step)
            else:
                ends.update(range(1, total + 1))
        return [ScheduledPrompt(end, _render(nodes, end)) for end in sorted(ends)]

    cache = {prompt: schedule(prompt) for prompt in dict.fromkeys(prompts)}
    return [list(cache[prompt]) for prompt in prompts]


def schedule_for_step(schedule: list[ScheduledPrompt], step: int) -> str:
    """The prompt text of ``schedule`` in force at ``step``.

    The first entry whose ``end_at_step`` is at or after ``step`` applies. A1111 counts ``step`` from 0 (the
    first model evaluation is step 0), so with ``[a:b:10]`` the text ``a`` is used for steps 0 to 10. A step past
    the last entry gets the last entry (A1111 went back to the first one).

    Args:
        schedule (`list[ScheduledPrompt]`):
            One prompt's schedule from ``get_learned_conditioning_prompt_schedules``.
        step (`int`):
            The current step, counted from 0.

    Returns:
        `str`: the prompt text for that step.
    """
    if not schedule:
        raise ValueError("`schedule` is empty; build it with get_learned_conditioning_prompt_schedules")
    for end_at_step, text in schedule:
        if step <= end_at_step:
            return text
    return schedule[-1][1]
