"""What extension authors import. Everything listed in ``__all__`` is public and stable; nothing else is.

Example::

    from modules.extensions_api import hookimpl

    @hookimpl
    def on_opts_override_enter(overrides, previous):
        if "CLIP_stop_at_last_layers" in overrides:
            ...

See ``docs/extensions/writing.md`` for a tutorial and ``docs/extensions/hooks.md`` for every hook; helpers for an
extension's own tests are in ``modules.extensions_api.testing``.
"""

from modules import plugins as _plugins  # read at call time: tests swap the host (plugins.use_host)
from modules import shared as _shared
from modules.extra_networks import Card, ExtraNetwork, ExtraNetworkParams, format_multiplier
from modules.hookspecs import hookimpl
from modules.image_grid import combine_grid, split_grid, upscale_tiled
from modules.infotext import create_infotext
from modules.labelled_grid import draw_grid, error_tile
from modules.option_info import OptionInfo, options_section
from modules.override_state import OverrideState
from modules.plugins import HookError, resolved_order
from modules.runtime_utils import (OverrideError, active_overrides, run_in_thread, running_overrides, temporary_opts,
                                   with_overrides)
from modules.scripts import Script, ScriptArg, ScriptArgError, interrupted, prepare_item, process_item, save_result
from modules.scripts import combine as combine_processed
from modules.shared import opts
from modules.upscalers import Upscaler, UpscalerFailed
from modules.upscalers import all_upscalers as list_upscalers
from modules.upscalers import upscale as upscale_image


def model_dirs(kind: str) -> list[str]:
    """The folders of ``kind`` models (``"Lora"``, ``"VAE"``, ...): the data folder's ``models/<kind>``, then
    Serena's own ``models/<kind>``; first match first."""
    return _shared.data_paths.model_dirs(kind)


def allow_pickle() -> bool:
    """Whether pickled model files (``.ckpt``/``.pt``) may be read: ``--allow-pickle-checkpoints``."""
    return bool(getattr(_shared.cmd_opts, "allow_pickle_checkpoints", False))


def original_unet_paths(unet) -> dict[str, str]:
    """``{module path: original module path}`` for a loaded model's UNet: the diffusers path of every layer with a
    weight and its name in the original (LDM/SGM) layout of single-file checkpoints, as the checkpoint loader maps
    them (``down_blocks.1.attentions.0.proj_in`` -> ``input_blocks.4.1.proj_in``)."""
    from modules import sd_models_writer  # the model stack, imported only when a model is there
    return sd_models_writer.unet_ldm_module_paths(unet)


def hook_order() -> dict[str, list[str]]:
    """``{hook name: [extension, ...]}`` in call order, for every hook."""
    return _plugins.host.hook_order()


__all__ = [
    "hookimpl",
    "temporary_opts",
    "with_overrides",
    "OverrideError",
    "active_overrides",
    "OverrideState",
    "run_in_thread",
    "running_overrides",
    "resolved_order",
    "hook_order",
    "HookError",
    "OptionInfo",
    "options_section",
    "opts",
    "Upscaler",
    "upscale_tiled",
    "draw_grid",
    "error_tile",
    "create_infotext",
    "list_upscalers",
    "upscale_image",
    "UpscalerFailed",
    "split_grid",
    "combine_grid",
    "Script",
    "ScriptArg",
    "ScriptArgError",
    "prepare_item",
    "process_item",
    "combine_processed",
    "interrupted",
    "ExtraNetwork",
    "ExtraNetworkParams",
    "Card",
    "format_multiplier",
    "model_dirs",
    "allow_pickle",
    "original_unet_paths",
    "save_result",
]
