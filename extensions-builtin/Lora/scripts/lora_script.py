"""LoRA, LoHa and LoKr networks from ``<lora:name:te[:unet[:dyn]]>`` prompt tags (A1111's built-in Lora extension).

Written against ``modules.extensions_api`` only: the ``lora`` tag type is an ``ExtraNetwork`` listed through
``on_list_extra_networks``, so the core takes the tags out of the conditioning text and enters this type's
``activate`` context around every batch, with the model the batch runs on, and again, nested, for a later pass with
other tags or on another model (Hires fix's ``hr_prompt``/``hr_checkpoint_name``, the refiner). The weight patch
lives in that context (``lora.patch.applied``): after it every weight is bitwise what it was.

Options (A1111's names, section "Extra Networks"): ``sd_lora`` ("Add network to prompt": a LoRA added to every
prompt; as a per-request override, a LoRA for one request), ``lora_add_hashes_to_infotext`` and
``lora_in_memory_limit``. The core's ``extra_networks_default_multiplier`` is the weight of a tag that gives none.

The Extra networks panel's "Lora" page shows a card per file (``cards``), inserting ``<lora:ALIAS:MULTIPLIER>``
(A1111's: the alias, the file name when another file has that alias; the ``preferred weight`` of the file's
``NAME.json``, else the default multiplier) and the ``activation text`` of that ``NAME.json`` after it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

from modules.extensions_api import (Card, ExtraNetwork, ExtraNetworkParams, OptionInfo, format_multiplier, hookimpl,
                                    model_dirs, opts)

from .lora import files, patch

log = logging.getLogger("serena.lora")

SECTION = ("extra_networks", "Extra Networks")
library = files.Library()


#: A multiplier past this is no longer a weight anyone means; far larger ones overflow the weights' dtype.
MAX_WEIGHT = 1e4


def _parse(params, default: float):
    """``(name, te, unet, dyn)`` of one tag, A1111's reading: positional te, unet, dyn, then named ones win."""
    name = params.positional[0] if params.positional else params.named.get("name", "")
    te = float(params.positional[1]) if len(params.positional) > 1 else default
    te = float(params.named.get("te", te))
    unet = float(params.positional[2]) if len(params.positional) > 2 else te
    unet = float(params.named.get("unet", unet))
    dyn = int(params.positional[3]) if len(params.positional) > 3 else None
    dyn = int(params.named["dyn"]) if "dyn" in params.named else dyn
    # Refused here so a bad tag is a warning naming it, never a failed or NaN generation.
    if not str(name):
        raise ValueError("no LoRA name")
    for label, weight in (("te", te), ("unet", unet)):
        if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
            raise ValueError(f"{label} weight {weight} is not a number within ±{MAX_WEIGHT:g}")
    if dyn is not None and dyn < 1:
        raise ValueError(f"dyn {dyn} must be at least 1")
    return str(name), te, unet, dyn


class ExtraNetworkLora(ExtraNetwork):
    name = "lora"
    title = "Lora"

    def activate(self, p, params_list, model):
        default = float(opts.extra_networks_default_multiplier)
        additional = opts.get("sd_lora", "None")
        if additional not in ("None", "", None) and not any(x.positional[:1] == [additional] for x in params_list):
            tag = f"<lora:{additional}:{default}>"
            # a later pass of the batch (Hires fix's prompt) gets it too, without a second tag in the records
            p.all_prompts = [prompt if tag in prompt else prompt + tag for prompt in p.all_prompts]
            params_list.append(ExtraNetworkParams([additional, str(default)]))
        wanted, hashes, missing = [], [], []
        for params in params_list:
            try:
                name, te, unet, dyn = _parse(params, default)
            except ValueError as e:
                _warn(p, f"Lora tag <lora:{':'.join(map(str, params.items))}> ignored: {e}")
                continue
            network = library.find(name)
            if network is None:
                missing.append(name)
            elif te or unet:  # weight 0 is no effect: nothing is loaded or added
                applied = _load(p, model, name, network, te, unet, dyn)
                if applied is not None:
                    wanted.append(applied)
                    hashes.append(f"{name.replace(':', '').replace(',', '')}: {network.shorthash()}")
        if missing:
            _warn(p, f"Networks not found: {', '.join(missing)}")
        if hashes and opts.get("lora_add_hashes_to_infotext", True):
            # a Hires pass with a LoRA of its own adds to the first pass's hashes (A1111's second write replaced them)
            known = [h for h in str(p.extra_generation_params.get("Lora hashes") or "").split(", ") if h]
            p.extra_generation_params["Lora hashes"] = ", ".join(dict.fromkeys(known + hashes))
        if wanted:  # a generation without networks keeps the cache for the next one with them
            patch.trim_cache(model, {a.key for a in wanted}, int(opts.get("lora_in_memory_limit", 0)))
        return patch.applied(model, tuple(wanted))

    def items(self):
        library.names()  # scans once
        return [network.item() for network in library.networks.values()]

    def refresh(self):
        library.refresh()

    def cards(self):
        library.names()  # scans once
        default = opts.extra_networks_default_multiplier
        cards = []
        for network in library.networks.values():
            user = _user_metadata(network.path)
            # A1111's get_alias: a tag by alias only where the alias names this file and no other
            alias = network.alias if library.find(network.alias) is network else network.name
            weight = user.get("preferred weight") or default
            prompt = f"<lora:{alias}:{format_multiplier(weight)}>"
            if user.get("activation text"):
                prompt += " " + str(user["activation text"])
            card = Card.for_file(network.name, network.path, prompt, (alias, *_relative(network.path)))
            if not card.description and user.get("description"):
                card = dataclasses.replace(card, description=str(user["description"]))
            cards.append(card)
        return cards

    def folders(self):
        return model_dirs("Lora")


def _user_metadata(path: str) -> dict:
    """A1111's per-file user metadata, ``NAME.json`` next to the file (``{}`` when absent or unreadable)."""
    try:
        with open(os.path.splitext(path)[0] + ".json", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _relative(path: str) -> tuple[str, ...]:
    """The file's path under its Lora folder (what A1111's search matches), if it is under one."""
    for folder in model_dirs("Lora"):
        if os.path.commonpath([os.path.abspath(folder), os.path.abspath(path)]) == os.path.abspath(folder):
            return (os.path.relpath(path, folder),)
    return ()


def _warn(p, message: str) -> None:
    """A warning of the generation, once however many batches meet it."""
    if message not in p.warnings:
        log.warning("%s", message)
        p.warnings.append(message)


def _load(p, model, name: str, network, te: float, unet: float, dyn):
    """One tag's network for this model (``patch.Applied``), or ``None`` with a warning."""
    try:
        key, deltas, unmatched, misfits = patch.load_deltas(model, network, dyn)
    except Exception as e:  # a broken or foreign file costs its own LoRA, not the others or the image
        log.debug("Lora %s (%s)", name, network.path, exc_info=True)
        _warn(p, f"Lora {name} not applied: {type(e).__name__}: {e}")
        return None
    if unmatched:
        log.info("Lora %s: %d keys fit no layer of %s: %s", name, len(unmatched), _model_name(model),
                 ", ".join(unmatched[:5]))
    if not deltas:
        _warn(p, f"Lora {name} has no layer that fits the loaded model {_model_name(model)}; not applied")
        return None
    if misfits:  # an SD1.x file on SDXL shares some layer names and shapes: say so rather than half-apply quietly
        log.info("Lora %s: layers that do not fit %s: %s", name, _model_name(model), ", ".join(misfits[:5]))
        _warn(p, f"Lora {name}: {len(misfits)} of its layers do not fit the loaded model {_model_name(model)} "
                 f"(made for another model?); applied to the {len(deltas)} that do")
    return patch.Applied(key, deltas, te, unet)


def _model_name(model) -> str:
    info = getattr(model, "info", None)
    return getattr(info, "title", None) or getattr(info, "name", None) or "model"


extra_network = ExtraNetworkLora()


def _check_sd_lora(value):
    if value in ("None", "") or library.find(value) is not None:
        return value
    raise ValueError(f"no Lora named {value!r}; choose one of {['None', *library.names()]}")


@hookimpl
def on_ui_settings():
    opts.add_option("sd_lora", OptionInfo("None", "Add network to prompt", "Dropdown", section=SECTION, type=str,
                                          choices=lambda: ["None", *library.names()], validate=_check_sd_lora))
    opts.add_option("lora_add_hashes_to_infotext", OptionInfo(True, "Add Lora hashes to infotext", section=SECTION))
    opts.add_option("lora_in_memory_limit", OptionInfo(
        0, "Number of Lora networks to keep cached in memory", "Number", {"precision": 0, "minimum": 0},
        section=SECTION).info("besides those of the last generation"))


@hookimpl
def on_list_extra_networks():
    return [extra_network]
