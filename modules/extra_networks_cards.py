"""The Extra networks panel's pages, UI-independent: one per network type, each a list of ``extra_networks.Card``.

The first page is Textual Inversion: the embeddings the current checkpoint can use (A1111 hides the skipped ones,
and so does Serena: a card whose word would be ignored is no help), inserting the trigger word. Then one page per
type of ``on_list_extra_networks``, with that type's ``cards()`` (the built-in Lora extension's inserts
``<lora:NAME:MULTIPLIER>``). ``search`` filters cards, ``toggle`` is A1111's click on a card: the text is added to
the prompt, or taken out if it is there already; ``preview_file`` allows only an image inside the page's folders.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from modules import extra_networks, jobs, plugins, shared, textual_inversion

log = logging.getLogger("serena.extra_networks")

TEXTUAL_INVERSION = "textual_inversion"


@dataclass(frozen=True)
class Page:
    """One tab of the panel: ``id`` (a tag type, or ``textual_inversion``), ``title``, ``cards``, and the
    ``folders`` a preview must lie in."""

    id: str
    title: str
    cards: tuple[extra_networks.Card, ...]
    folders: tuple[str, ...]


def textual_inversion_page() -> Page:
    folder = shared.data_paths.embeddings_dir
    evaluation = textual_inversion.database().evaluate(textual_inversion.checkpoint_widths())
    cards = [extra_networks.Card.for_file(name, embedding.path, name, (_relative(embedding.path, folder),))
             for name, embedding in evaluation.loaded.items()]
    return Page(TEXTUAL_INVERSION, "Textual Inversion", tuple(cards), (folder,))


def network_page(network: extra_networks.ExtraNetwork) -> Page:
    """A registered type's page; a type whose listing fails shows no cards (logged), the panel still opens."""
    try:
        cards, folders = tuple(network.cards()), tuple(network.folders())
    except Exception:
        log.exception("extra network %r could not list its cards", network.name)
        if plugins.host.strict:
            raise
        cards, folders = (), ()
    return Page(network.name, network.title or network.name, cards, folders)


def pages() -> list[Page]:
    """Textual Inversion, then every registered type in hook order."""
    return [textual_inversion_page()] + [network_page(n) for n in extra_networks.registered().values()]


def refresh() -> None:
    """Scan every page's files again (A1111's refresh button): embeddings as ``POST /sdapi/v1/refresh-embeddings``
    does (a running generation keeps the files it started with), each type's ``refresh()``."""
    with jobs.queue_lock:
        textual_inversion.database().scan(force=True)
    for network in extra_networks.registered().values():
        network.refresh()


def search(cards, text: str) -> list[extra_networks.Card]:
    """The cards whose name, search terms or description hold ``text`` (case-insensitive, A1111's substring
    search; surrounding blanks ignored); all of them for an empty text."""
    needle = (text or "").strip().lower()
    if not needle:
        return list(cards)
    return [card for card in cards
            if any(needle in term.lower() for term in (card.name, card.description, *card.search_terms))]


def preview_file(card: extra_networks.Card, folders) -> str | None:
    """``card.preview`` if it is an image file inside one of ``folders`` (links resolved), else ``None``: a card
    never makes the server read a file elsewhere."""
    if not card.preview or not card.preview.lower().endswith(extra_networks.PREVIEW_EXTENSIONS):
        return None
    real = os.path.realpath(card.preview)
    for folder in folders:
        base = os.path.realpath(folder)
        if os.path.commonpath([base, real]) == base and real != base and os.path.isfile(real):
            return real
    return None


# A1111's extraNetworks.js: a tag is found again by its type and name, whatever its weight.
_TAG = re.compile(r"<([^:<>]+:[^:<>]+):[\d.]+>")


def toggle(prompt: str, text: str, separator: str | None = None) -> str:
    """The prompt after a click on a card inserting ``text``: without it if it was there (with the separator
    before it), else with it added after ``separator`` (``extra_networks_add_text_separator``; none when the
    prompt is empty)."""
    prompt = prompt or ""
    separator = shared.opts.extra_networks_add_text_separator if separator is None else separator
    tag = _TAG.fullmatch(text)
    if tag:
        found = [m for m in _TAG.finditer(prompt) if m.group(1) == tag.group(1)]
        spans = [(m.start(), m.end()) for m in found]
    else:
        spans = [(m.start(), m.end()) for m in re.finditer(re.escape(text), prompt)] if text else []
    if not spans:
        return prompt + separator + text if prompt else text
    out, last = [], 0
    for start, end in spans:
        if separator and prompt[max(last, start - len(separator)):start] == separator:
            start -= len(separator)
        out.append(prompt[last:start])
        last = end
    out.append(prompt[last:])
    return "".join(out)


def _relative(path: str, folder: str) -> str:
    try:
        return os.path.relpath(path, folder)
    except ValueError:  # another drive on Windows
        return os.path.basename(path)
