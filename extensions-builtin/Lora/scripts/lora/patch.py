"""LoRA deltas added to a model's weights for one batch, and the exact weights back after it.

``applied(model, networks)`` is the context manager the Lora network type returns from ``activate``: on entry the
layers the networks touch are copied (the backup) and ``weight += multiplier * delta`` is added in place; on exit,
however the batch ended, every touched weight is copied back from its backup, so it is bitwise what it was. A
nested generation on the same model (an extension's hook that generates) enters its own ``applied``: its networks
replace the outer ones from the backups and the outer ones are put back on its exit, so neither sees the other's.

Deltas are cached per model (weakly: an unloaded model drops its cache) and per file (path, mtime, size) and
``dyn``, for the networks of the last generation plus ``lora_in_memory_limit`` more, so the next generation with
the same LoRA only adds them. A cache holds deltas, never changed weights: outside ``applied`` the model is as
loaded.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from . import layers as layers_module

log = logging.getLogger("serena.lora")


@dataclass(frozen=True)
class Applied:
    """One network as a batch wants it: its cached deltas and its text encoder and UNet multipliers."""

    key: tuple
    deltas: tuple
    te: float
    unet: float

    def multiplier(self, component: str) -> float:
        return self.unet if component == layers_module.UNET else self.te


@dataclass
class ModelState:
    """What this extension keeps for one loaded model."""

    names: dict | None = None                                  # layer name -> (component, path)
    modules: dict = field(default_factory=dict)                # (component, path) -> module
    deltas: OrderedDict = field(default_factory=OrderedDict)   # network key -> (LayerDeltas, misfits), LRU
    backups: dict = field(default_factory=dict)                # (component, path) -> weight before any delta
    applied: tuple = ()                                        # the Applied networks now in the weights

    def module(self, model, component: str, path: str):
        key = (component, path)
        if key not in self.modules:
            self.modules[key] = getattr(model, layers_module.ROOTS[component]).get_submodule(path)
        return self.modules[key]


_states: "weakref.WeakKeyDictionary[object, ModelState]" = weakref.WeakKeyDictionary()


def state_for(model) -> ModelState:
    state = _states.get(model)
    if state is None:
        state = _states[model] = ModelState()
    return state


def load_deltas(model, network, dyn: int | None) -> tuple[tuple, tuple, list[str], tuple]:
    """``(cache key, deltas, unknown layer names, misfits)`` of one file for this model: misfits are the layers
    the model has by name whose weights the file's do not fit (a file made for another model family). From the
    cache when it has them (the unknown names are then not listed again)."""
    state = state_for(model)
    key = (network.signature, dyn)
    if key in state.deltas:
        state.deltas.move_to_end(key)
        deltas, misfits = state.deltas[key]
        return key, deltas, [], misfits
    if state.names is None:
        state.names = layers_module.layer_names(model)
    grouped = layers_module.group(network.read_tensors(), network.metadata)
    deltas, unmatched, misfits = [], [], []
    for name, parts in grouped.items():
        where = state.names.get(name)
        if where is None:
            unmatched.append(name)
            continue
        component, path = where
        weight = state.module(model, component, path).weight
        if weight.is_meta:
            raise ValueError("the model's weights are offloaded layer by layer (--lowvram), which LoRA does not "
                             "support yet")
        try:
            change = layers_module.delta(parts, weight, dyn)
        except (ValueError, KeyError, RuntimeError) as e:
            misfits.append(f"{name} ({e})")
            continue
        deltas.append(layers_module.LayerDelta(component, path, change))
    state.deltas[key] = (tuple(deltas), tuple(misfits))
    return key, tuple(deltas), unmatched, tuple(misfits)


def trim_cache(model, keep: set, extra: int) -> None:
    """Drop cached deltas beyond those in ``keep`` and the ``extra`` most recently used others."""
    state = state_for(model)
    others = [k for k in state.deltas if k not in keep]
    for key in others[: max(0, len(others) - max(0, extra))]:
        del state.deltas[key]


def _set(model, state: ModelState, wanted: tuple) -> None:
    """Put the weights back from the backups, then add ``wanted``'s deltas (backing up what they touch)."""
    with torch.no_grad():
        for (component, path), backup in state.backups.items():
            state.module(model, component, path).weight.copy_(backup)
        state.backups.clear()
        state.applied = ()
        for network in wanted:
            for layer in network.deltas:
                multiplier = network.multiplier(layer.component)
                if multiplier == 0:
                    continue
                weight = state.module(model, layer.component, layer.path).weight
                where = (layer.component, layer.path)
                if where not in state.backups:
                    state.backups[where] = weight.detach().clone()
                # --medvram moves whole networks between devices: the weight may live elsewhere than the delta
                weight.add_(layer.delta.to(weight.device), alpha=multiplier)
        state.applied = tuple(wanted)


def _signature(networks: tuple) -> tuple:
    return tuple((n.key, n.te, n.unet) for n in networks)


@contextlib.contextmanager
def applied(model, networks: tuple):
    """``networks`` in the model's weights for the block; what was there before (nothing, or an outer block's
    networks) exactly back after it."""
    try:
        state = _states.get(model)
    except TypeError:  # an object without weak references never had networks applied
        state = None
    previous = state.applied if state is not None else ()
    if _signature(networks) == _signature(previous):
        yield
        return
    state = state_for(model)
    try:
        _set(model, state, networks)
        yield
    finally:
        _set(model, state, previous)
