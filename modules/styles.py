"""Prompt styles: named prompt and negative-prompt snippets from ``styles.csv`` (A1111's format and rules).

A styles file has the columns ``name,prompt,negative_prompt`` (A1111's older ``name,text`` is read too). A style's
text holding ``{prompt}`` has the user's prompt put in its place; a text without it is appended after ``", "``
(``merge_prompts``). A request's ``styles`` apply in their order to the prompt and to the negative prompt; the
infotext records the prompts with the styles in them, as A1111 does, and pasting such an infotext finds the
styles again (``from_infotext``, the ``infotext_styles`` option).

The files are the ``--styles-file`` flags (each a path or a wildcard such as ``styles/*.csv``, relative ones in
the data folder) or, without one, ``styles.csv`` in the data folder. ``database()`` reads them again whenever one
has changed, so an edited file counts from the next request on. A row that cannot be read is skipped with a
warning naming its file and line; it never stops the others from loading.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import NamedTuple

from modules import shared

log = logging.getLogger("serena.styles")

PLACEHOLDER = "{prompt}"


class PromptStyle(NamedTuple):
    name: str
    prompt: str
    negative_prompt: str
    path: str | None = None


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """``prompt`` in the place of ``{prompt}`` in ``style_prompt``; without one, both joined by ``", "`` (an empty
    side leaves no separator)."""
    if PLACEHOLDER in style_prompt:
        return style_prompt.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles_to_prompt(prompt: str, style_prompts: Iterable[str]) -> str:
    for style_prompt in style_prompts:
        prompt = merge_prompts(style_prompt, prompt)
    return prompt


def _extract_style_text(style_text: str, prompt: str) -> tuple[bool, str]:
    """``(True, prompt without style_text)`` when ``prompt`` is what ``merge_prompts(style_text, ...)`` makes;
    ``(False, prompt)`` otherwise (A1111's ``extract_style_text_from_prompt``)."""
    stripped_prompt, stripped_style = prompt.strip(), style_text.strip()
    if PLACEHOLDER in stripped_style:
        left, _, right = stripped_style.partition(PLACEHOLDER)
        if stripped_prompt.startswith(left) and stripped_prompt.endswith(right) \
                and len(stripped_prompt) >= len(left) + len(right):
            return True, stripped_prompt[len(left):len(stripped_prompt) - len(right)]
        return False, prompt
    if stripped_prompt.endswith(stripped_style):
        rest = stripped_prompt[:len(stripped_prompt) - len(stripped_style)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


def _extract_style(style: PromptStyle, prompt: str, negative_prompt: str) -> tuple[bool, str, str]:
    if not style.prompt and not style.negative_prompt:
        return False, prompt, negative_prompt  # an empty style is in every prompt: never inferred
    found, new_prompt = _extract_style_text(style.prompt, prompt)
    if not found:
        return False, prompt, negative_prompt
    found, new_negative = _extract_style_text(style.negative_prompt, negative_prompt)
    if not found:
        return False, prompt, negative_prompt
    return True, new_prompt, new_negative


@dataclass
class StyleDatabase:
    """The styles of some files, by name (a later file's or row's style replaces an earlier one of its name)."""

    styles: dict[str, PromptStyle] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_files(cls, files: Iterable[str]) -> "StyleDatabase":
        db = cls()
        for path in files:
            db._load_csv(path)
        for warning in db.warnings:
            log.warning("%s", warning)
        return db

    def _load_csv(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8-sig", newline="") as file:
                reader = csv.DictReader(file, skipinitialspace=True)
                columns = reader.fieldnames or []
                text_column = "prompt" if "prompt" in columns else "text" if "text" in columns else None
                if "name" not in columns or text_column is None:
                    self.warnings.append(f"{path}: not a styles file: its first line must name the columns "
                                         f"name,prompt,negative_prompt (found {','.join(columns) or 'nothing'})")
                    return
                for row in reader:
                    self._add_row(path, reader.line_num, row, text_column)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            self.warnings.append(f"{path}: styles not read: {e}")

    def _add_row(self, path: str, line: int, row: dict, text_column: str) -> None:
        name = (row.get("name") or "").strip()
        if not any(value for key, value in row.items() if key is not None):
            return  # a blank line
        if name.startswith("#"):
            return  # a comment (A1111)
        if None in row:
            self.warnings.append(f"{path} line {line}: style {name!r} skipped: more fields than the columns "
                                 f"(quote a text that holds a comma)")
            return
        if not name:
            self.warnings.append(f"{path} line {line}: row skipped: it has no name")
            return
        self.styles[name] = PromptStyle(name, row.get(text_column) or "", row.get("negative_prompt") or "", path)

    def unknown(self, names: Iterable[str] | None) -> list[str]:
        return [name for name in names or () if name not in self.styles]

    def apply_to_prompt(self, prompt: str, names: Iterable[str] | None) -> str:
        return apply_styles_to_prompt(prompt, [self.styles[n].prompt for n in names or () if n in self.styles])

    def apply_to_negative_prompt(self, prompt: str, names: Iterable[str] | None) -> str:
        return apply_styles_to_prompt(prompt, [self.styles[n].negative_prompt for n in names or ()
                                               if n in self.styles])

    def extract_from_prompt(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        """The styles whose text ``prompt`` and ``negative_prompt`` hold, in an order that applied to the prompts
        without them gives the prompts back, and those prompts (A1111's ``extract_styles_from_prompt``: the
        outermost style is taken off first)."""
        extracted = []
        candidates = list(self.styles.values())
        while True:
            for style in candidates:
                found, new_prompt, new_negative = _extract_style(style, prompt, negative_prompt)
                if found:
                    prompt, negative_prompt = new_prompt, new_negative
                    candidates.remove(style)
                    extracted.append(style.name)
                    break
            else:
                return list(reversed(extracted)), prompt, negative_prompt


def style_files(cmd_opts=None, data_paths=None) -> list[str]:
    """The styles files in use: every match of each ``--styles-file`` (in flag order), or the data folder's
    ``styles.csv``. A named file that does not exist yet is no error (A1111 starts without one)."""
    cmd_opts = cmd_opts if cmd_opts is not None else shared.cmd_opts
    data_paths = data_paths if data_paths is not None else shared.data_paths
    patterns = list(getattr(cmd_opts, "styles_file", None) or []) or ["styles.csv"]
    files = []
    for pattern in patterns:
        pattern = data_paths.resolve(pattern)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        files.extend(path for path in matches if os.path.isfile(path))
    return list(dict.fromkeys(files))


_cache: dict[tuple, StyleDatabase] = {}


def _stamp(path: str) -> tuple[int, int]:
    """What tells a changed file: its modification time and size (none for a file removed a moment ago)."""
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_mtime_ns, stat.st_size


def database() -> StyleDatabase:
    """The styles of the files in use, read again when a file was added, removed or changed since last time."""
    key = tuple((path, *_stamp(path)) for path in style_files())
    if key not in _cache:
        _cache.clear()
        _cache[key] = StyleDatabase.from_files(path for path, *_ in key)
    return _cache[key]


def check_names(names: Iterable[str] | None) -> None:
    """``ValueError`` naming every style of ``names`` that no styles file has (A1111 skips them without a word)."""
    unknown = database().unknown(names)
    if unknown:
        files = style_files()
        where = f"the styles of {', '.join(files)}" if files else "none: there is no styles file (styles.csv in " \
            "the data folder, or --styles-file)"
        raise ValueError(f"`styles` has unknown style(s) {', '.join(map(repr, unknown))}; "
                         f"GET /sdapi/v1/prompt-styles lists {where}")


def from_infotext(params: MutableMapping, mode: str | None = None) -> list[str] | None:
    """Infer the styles of a pasted infotext (A1111's ``infotext_styles`` option, ``mode`` if given).

    "Ignore" changes nothing. The other modes take the found styles' text out of ``params``' ``Prompt`` and
    ``Negative prompt``; "Apply" then returns the found styles (even none: the styles field is emptied), "Apply if
    any" returns them when there are some, "Discard" returns ``None`` (the styles field is left as it is).
    """
    mode = mode or shared.opts.infotext_styles
    if mode == "Ignore":
        return None
    found, prompt, negative = database().extract_from_prompt(params.get("Prompt", ""),
                                                             params.get("Negative prompt", ""))
    params["Prompt"], params["Negative prompt"] = prompt, negative
    if mode == "Apply" or (mode == "Apply if any" and found):
        return found
    return None
