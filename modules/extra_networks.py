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
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import defaultdict
from typing import Any, ContextManager

from modules import plugins

log = logging.getLogger("serena.extra_networks")

TAG = re.compile(r"<(\w+):([^>]+)>")


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


class ExtraNetwork:
    """A network type, named by its tag (``name``). Subclass it and list an instance in ``on_list_extra_networks``.

    ``activate(p, params_list, model)`` runs before each batch with the batch's tags of this type (an empty list
    when the prompt has none: a type that keeps state must drop its effect then) and the model the batch runs on.
    It returns a context manager (``contextlib.contextmanager`` suits), or ``None`` for nothing to undo: the
    generation enters it around the batch's sampling and exits it after, also on an exception or interrupt.
    """

    name = ""

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
    fails the generation: a model left changed must not run the next one.
    """
    networks = registered()
    for unknown in sorted(set(data) - set(networks)):
        log.info("Skipping unknown extra network: %s", unknown)
    with contextlib.ExitStack() as stack:
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
