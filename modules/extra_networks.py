"""Extra networks: ``<type:arg1:arg2…>`` prompt tags, taken out of the prompt and handed to the network type
that registered ``type`` (A1111's ``modules/extra_networks.py``).

A network type is an ``ExtraNetwork`` an extension lists through ``on_list_extra_networks`` (the built-in
``Lora`` extension lists ``lora``). For every batch the generation parses the batch's first prompt, as A1111
does, removes every tag from the text the conditioning reads (inside prompt editing and alternation too: the
tags go before the schedules are built), and enters ``activated(p, model, data)`` around sampling: each
registered type's ``activate`` gets the tags of its type (possibly none) and returns a context manager that is
exited after the batch, whether it returned, raised or was interrupted, in the reverse order. So what a network
does to the model lives exactly as long as the batch that asked for it.

The prompts a generation records (``p.all_prompts``, the infotext) keep their tags.

A later pass of the same batch with prompts of its own (Hires fix's second pass with ``hr_prompt``), or on
another model (``hr_checkpoint_name``, the refiner), enters ``for_pass``: every type activated again for that pass
with that pass's tags and model, nested inside the batch's contexts, so the batch's networks are back after it. A
pass with the batch's tags on the batch's model activates nothing again (A1111 re-activates only what differs).

A type also lists its networks as ``Card``s for the UI's Extra networks panel (``ExtraNetwork.cards``; the pages
themselves are ``modules.extra_networks_cards``): name, file, preview and description found next to the file
(``find_preview``, ``find_description``), the words a search matches and the text a click puts in the prompt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import defaultdict
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ContextManager

from modules import plugins, shared

log = logging.getLogger("serena.extra_networks")

TAG = re.compile(r"<(\w+):([^>]+)>")
#: ``(model, tags)`` of the innermost ``activated`` block of this context: what a later pass compares with.
_active: ContextVar[tuple | None] = ContextVar("serena_extra_networks_active", default=None)


class ExtraNetworkParams:
    """One tag's arguments: ``items`` as written (``<lora:name:0.5:unet=0.2>`` → ``["name", "0.5", "unet=0.2"]``),
    ``positional`` the items without ``=``, ``named`` the ``key=value`` ones (A1111's class)."""

    def __init__(self, items: list | None = None):
        self.items = list(items or [])
        self.positional: list = []
        self.named: dict[str, str] = {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    def __eq__(self, other):
        return isinstance(other, ExtraNetworkParams) and self.items == other.items

    def __repr__(self):
        return f"ExtraNetworkParams({self.items!r})"


#: A preview is a sibling image of the network file: ``NAME.png`` or ``NAME.preview.png`` (A1111's names), in
#: this order of extensions.
PREVIEW_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def find_preview(path: str) -> str | None:
    """The preview image next to the network file ``path`` (``NAME.ext``, then ``NAME.preview.ext``), or ``None``."""
    if not path:
        return None
    stem = os.path.splitext(path)[0]
    for candidate in [stem + suffix + ext for suffix in ("", ".preview") for ext in PREVIEW_EXTENSIONS]:
        if os.path.isfile(candidate):
            return candidate
    return None


def find_description(path: str) -> str:
    """The text of ``NAME.txt`` or ``NAME.description.txt`` next to the network file (A1111's), else ``""``."""
    if not path:
        return ""
    stem = os.path.splitext(path)[0]
    for candidate in (stem + ".txt", stem + ".description.txt"):
        try:
            with open(candidate, encoding="utf-8", errors="replace") as f:
                return f.read().strip()
        except OSError:
            continue
    return ""


def format_multiplier(value) -> str:
    """A weight as A1111's page writes it (JavaScript's number to text): ``1.0`` → ``"1"``, ``0.5`` → ``"0.5"``."""
    return f"{float(value):g}"


@dataclass(frozen=True)
class Card:
    """One network as the Extra networks panel shows it: ``name`` (the caption), ``path`` (its file), ``prompt``
    (what a click puts in the prompt), ``preview`` (an image file next to it, or ``None``), ``description`` and
    ``search_terms`` (what the search box matches besides the name)."""

    name: str
    path: str
    prompt: str
    preview: str | None = None
    description: str = ""
    search_terms: tuple[str, ...] = ()

    @classmethod
    def for_file(cls, name: str, path: str, prompt: str, search_terms=()) -> "Card":
        """A card with the preview and description found next to ``path``."""
        return cls(name, path, prompt, find_preview(path), find_description(path), tuple(search_terms))


class ExtraNetwork:
    """A network type, named by its tag (``name``). Subclass it and list an instance in ``on_list_extra_networks``.

    ``activate(p, params_list, model)`` runs before each batch with the batch's tags of this type (an empty list
    when the prompt has none: a type that keeps state must drop its effect then) and the model the batch runs on.
    It returns a context manager (``contextlib.contextmanager`` suits), or ``None`` for nothing to undo: the
    generation enters it around the batch's sampling and exits it after, also on an exception or interrupt. A
    later pass with other tags or on another model (``for_pass``) calls it again, nested, for that pass.
    """

    name = ""
    #: The panel's tab for this type ("Lora"); the tag name when empty.
    title = ""

    def __init__(self, name: str | None = None):
        if name is not None:
            self.name = name

    def activate(self, p, params_list: list[ExtraNetworkParams], model) -> ContextManager | None:
        raise NotImplementedError

    def items(self) -> list[dict]:
        """The networks of this type on disk, ``[{"name", "alias", "path", "metadata"}, …]`` (``GET
        /sdapi/v1/loras`` shows the ``lora`` type's)."""
        return []

    def refresh(self) -> None:
        """Scan the disk again (``POST /sdapi/v1/refresh-loras`` refreshes the ``lora`` type)."""

    def cards(self) -> list[Card]:
        """The Extra networks panel's cards: by default one per ``items()`` entry, inserting
        ``<name:alias or name:default multiplier>``."""
        multiplier = format_multiplier(shared.opts.extra_networks_default_multiplier)
        cards = []
        for item in self.items():
            label = str(item.get("alias") or item["name"])
            cards.append(Card.for_file(str(item["name"]), str(item.get("path") or ""),
                                       f"<{self.name}:{label}:{multiplier}>", (label,)))
        return cards

    def folders(self) -> list[str]:
        """Where this type's files live: a preview outside them is never shown. By default the folders of
        ``items()``' files."""
        return sorted({os.path.dirname(str(item["path"])) for item in self.items() if item.get("path")})


def parse_prompt(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    """The prompt without its tags, and ``{type: [params, …]}`` of the tags in writing order."""
    found: dict[str, list[ExtraNetworkParams]] = defaultdict(list)

    def take(match):
        found[match.group(1)].append(ExtraNetworkParams(match.group(2).split(":")))
        return ""

    return TAG.sub(take, prompt), dict(found)


def strip_prompt(prompt: str) -> str:
    """The prompt without its tags (what the conditioning reads)."""
    return TAG.sub("", prompt)


def parse_prompts(prompts) -> tuple[list[str], dict[str, list[ExtraNetworkParams]]]:
    """Every prompt without its tags, and the first prompt's tags: a batch runs on one model, so one set of
    networks applies to all of its images (A1111)."""
    texts, data = [], None
    for prompt in prompts:
        text, found = parse_prompt(prompt)
        texts.append(text)
        if data is None:
            data = found
    return texts, data or {}


def registered(host: plugins.Host | None = None) -> dict[str, ExtraNetwork]:
    """``{tag type: ExtraNetwork}`` from ``on_list_extra_networks``, in hook order; a type listed twice keeps the
    first and logs the second."""
    host = host if host is not None else plugins.host
    networks: dict[str, ExtraNetwork] = {}
    for result in host.call("on_list_extra_networks"):
        for network in result if isinstance(result, (list, tuple)) else [result]:
            if not isinstance(network, ExtraNetwork) or not network.name:
                log.error("on_list_extra_networks returned %r, which is no ExtraNetwork with a name", network)
            elif network.name in networks:
                log.error("extra network type %r is listed twice; the first is kept", network.name)
            else:
                networks[network.name] = network
    return networks


@contextlib.contextmanager
def activated(p, model, data: dict[str, list[ExtraNetworkParams]]):
    """Every registered type activated for one batch (its tags, or none), undone in reverse order on leaving.

    A type that fails to activate is reported in ``p.warnings`` and the batch runs without it (with strict hooks
    the failure propagates, after every type already entered was exited). A type that fails to undo its effect
    fails the generation: a model left changed must not run the next one. With ``p.disable_extra_networks``
    (A1111's request field) no type is activated at all, as in A1111.
    """
    if getattr(p, "disable_extra_networks", False):
        yield
        return
    networks = registered()
    for unknown in sorted(set(data) - set(networks)):
        log.info("Skipping unknown extra network: %s", unknown)
    token = _active.set((model, data))
    with contextlib.ExitStack() as stack:
        stack.callback(_active.reset, token)
        for name, network in networks.items():
            try:
                manager: Any = network.activate(p, list(data.get(name, [])), model)
                if manager is not None:
                    stack.enter_context(manager)
            except Exception as e:
                message = f"extra network {name!r} failed to activate: {type(e).__name__}: {e}"
                log.error("%s", message, exc_info=True)
                p.warnings.append(message)
                if plugins.host.strict:
                    raise
        yield


def for_pass(p, model, prompts=None) -> ContextManager:
    """A later pass of the active batch (Hires fix's second, the refiner): ``activated`` for ``model`` with the
    tags of ``prompts``' first prompt, or with the batch's tags when ``prompts`` is ``None``, nested in the batch's
    contexts. Nothing is activated again when the tags and the model are the batch's, or outside a batch."""
    active = _active.get()
    if active is None:
        return contextlib.nullcontext()
    data = active[1] if prompts is None else parse_prompts(prompts)[1]
    if active[0] is model and data == active[1]:
        return contextlib.nullcontext()
    return activated(p, model, data)
