"""Prompts from file or textbox: one generation per line, as A1111's script.

A line without ``--`` is a prompt. A line with ``--`` is read shell-style as ``--key value`` pairs over the
processing fields A1111 accepts there (``--prompt "a cat" --steps 10 --seed 5 ...``); its settings apply to that
line only. Unlike A1111, which reports a line it cannot read and then uses the whole line as a prompt, a bad line
refuses the request before it queues, naming the line, so a typo never silently becomes a prompt.

Written against ``modules.extensions_api`` only.
"""

from __future__ import annotations

import random
import shlex

from modules.extensions_api import (Script, ScriptArg, ScriptArgError, combine_processed, hookimpl, interrupted, opts,
                                    prepare_item, process_item)

SEED_MAX = 4294967294  # A1111's random.randrange bound for "same seed for all lines"


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def _styles(text: str) -> list:
    return [name.strip() for name in text.split(",") if name.strip()]


# A1111's prompt_tags, for the fields Serena has (``sd_model`` is the checkpoint override). Its outpath_samples,
# outpath_grids, prompt_for_display and sampler_index tags are not accepted: an API request must not choose where
# files are written, and the others have no field here.
TAGS = {
    "sd_model": str, "prompt": str, "negative_prompt": str, "styles": _styles,
    "seed": int, "subseed_strength": float, "subseed": int, "seed_resize_from_h": int, "seed_resize_from_w": int,
    "sampler_name": str, "batch_size": int, "n_iter": int, "steps": int, "cfg_scale": float, "width": int,
    "height": int, "restore_faces": _bool, "tiling": _bool, "do_not_save_samples": _bool, "do_not_save_grid": _bool,
}
PROMPT_TAGS = ("prompt", "negative_prompt")  # their value runs to the next --key, unquoted words joined by spaces


def parse_line(line: str) -> dict:
    """``{tag: value}`` of one line (A1111's ``cmdargs``); ``ValueError`` saying what is wrong with it."""
    if "--" not in line:
        return {"prompt": line}
    args = shlex.split(line)
    res, pos = {}, 0
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--"):
            raise ValueError(f"expected --key, got {arg!r}")
        tag = arg[2:]
        if tag not in TAGS:
            raise ValueError(f"unknown option {arg}; known: {', '.join('--' + t for t in TAGS)}")
        if pos + 1 >= len(args):
            raise ValueError(f"missing value for {arg}")
        pos += 1
        if tag in PROMPT_TAGS:
            words = [args[pos]]
            pos += 1
            while pos < len(args) and not args[pos].startswith("--"):
                words.append(args[pos])
                pos += 1
            res[tag] = " ".join(words)
            continue
        try:
            res[tag] = TAGS[tag](args[pos])
        except ValueError as e:
            raise ValueError(f"{arg}: {e}") from None
        pos += 1
    return res


def read_lines(text: str) -> list[tuple[int, str, dict]]:
    """``(line number from 1, line, parsed)`` for every non-empty line; ``ValueError`` naming the first bad one."""
    jobs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            jobs.append((number, line, parse_line(line)))
        except ValueError as e:
            raise ValueError(f"line {number} ({line!r}): {e}") from None
    return jobs


def item_settings(p, parsed: dict, prompt_position: str) -> tuple[dict, dict]:
    """``(fields, overrides)`` of one line: its tags over ``p``, its prompts put before or after ``p``'s."""
    fields = {k: v for k, v in parsed.items() if k != "sd_model"}
    overrides = {"sd_model_checkpoint": parsed["sd_model"]} if "sd_model" in parsed else {}
    for name in PROMPT_TAGS:
        if parsed.get(name) and getattr(p, name):
            line, base = parsed[name], getattr(p, name)
            fields[name] = f"{line} {base}" if prompt_position == "start" else f"{base} {line}"
    return fields, overrides


class PromptsFromFile(Script):
    title = "Prompts from file or textbox"
    args = (
        ScriptArg("Iterate seed every line", False),
        ScriptArg("Use same random seed for all lines", False),
        ScriptArg("Insert prompts at the", "start", choices=("start", "end")),
        ScriptArg("List of prompt inputs", "", lines=7),
    )

    def check(self, p, checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt):
        try:
            jobs = read_lines(prompt_txt)
        except ValueError as e:
            raise ScriptArgError(3, str(e)) from None
        images = 0
        for number, line, parsed in jobs:  # each line's generation, checked as a request is (its limits too)
            fields, overrides = item_settings(p, parsed, prompt_position)
            try:
                item = prepare_item(p, overrides=overrides, **fields)
            except ValueError as e:
                raise ScriptArgError(3, f"line {number} ({line!r}): {e}") from None
            images += item.batch_size * item.n_iter
        if p.is_api and images > opts.api_max_images:  # one request's images, however many lines ask for them
            raise ScriptArgError(3, f"the lines make {images} images, above this server's limit of "
                                    f"{opts.api_max_images} for one request (option api_max_images)")

    def run(self, p, checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt):
        seed = p.seed
        if (checkbox_iterate or checkbox_iterate_batch) and seed == -1:
            seed = random.randrange(SEED_MAX)
        parts = []
        for _, _, parsed in read_lines(prompt_txt):
            if interrupted():
                break
            fields, overrides = item_settings(p, parsed, prompt_position)
            fields.setdefault("seed", seed)
            processed = process_item(p, overrides=overrides, **fields)
            parts.append(processed)
            if checkbox_iterate:
                seed += p.batch_size * p.n_iter
        return combine_processed(p, parts)


SCRIPTS = [PromptsFromFile()]


@hookimpl
def on_list_scripts():
    return SCRIPTS
