"""Every hook Serena calls, in the order a run of Serena fires them.

Extension authors implement these with ``@hookimpl`` from ``modules.extensions_api``. An implementation may
accept any subset of a hook's arguments, by name (pluggy's rule), so hooks can gain arguments without breaking
extensions. The reference page ``docs/extensions/hooks.md`` has one section per hook with its exact signature; a
test keeps the two in step.

Ordering, for every hook: implementations run in extension load order (the core's own first, then
``extensions-builtin/``, then user extensions, each group ordered by name and ``metadata.ini`` Before/After),
with ``tryfirst``/``trylast`` moving an implementation to the front or back. ``on_opts_override_exit`` runs in
exactly the reverse order (``EXIT_HOOKS``). ``modules.plugins.resolved_order(hook_name)`` and ``launch.py --list-hooks``
show it.

Errors, for every hook: Serena calls implementations one at a time. An exception is reported with the
extension's name and traceback (log, and the generation's warnings where there is a generation) and the other
implementations still run. With ``--strict-hooks`` the first error fails the call, after everything owed ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import pluggy

if TYPE_CHECKING:
    from fastapi import FastAPI

PROJECT = "serena"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The hooks that are fired as a stack, like nested ``with`` blocks: ``{enter hook: exit hook}``. The exit hook
#: is owed once to each module whose enter implementation was called (also if it raised), in exactly the reverse
#: of the enter order; an exit implementation in a module without the enter one is never called.
#: ``plugins.Host.owed_exits`` is the one place that applies it.
EXIT_HOOKS = {"on_opts_override_enter": "on_opts_override_exit"}


# ---------------------------------------------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------------------------------------------

@hookspec
def on_ui_settings() -> None:
    """Register options. Fires once at start-up, after ``config.json`` is read and extensions are loaded.

    Call ``opts.add_option(key, OptionInfo(default, label, section=(id, label)))`` here. Registered options are
    stored in ``config.json`` like core options (a value already stored is checked when the option is added),
    shown on the settings page, and may be overridden per generation.
    A1111 name: ``script_callbacks.on_ui_settings``.

    :returns: nothing; return values are ignored.

    .. versionadded:: 0.1
    """


@hookspec
def on_app_started(app: "FastAPI") -> None:
    """Add routes or middleware. Fires once, after the API routes are added and before the web UI is mounted
    at ``/`` (a route added after that would be shadowed by the UI), before serving.

    :param app: the ``fastapi.FastAPI`` application; add routes under your own prefix.
    :returns: nothing; return values are ignored.

    A1111 name: ``script_callbacks.on_app_started(demo, app)`` (Serena passes ``app`` only).

    .. versionadded:: 0.1
    """


@hookspec
def on_ui_tabs() -> Any:
    """Add tabs to the web UI. Fires once while the gradio Blocks are built (not with ``--nowebui``).

    :returns: a list of ``(gradio_component, title, elem_id)`` tuples, or ``None`` for no tab. Every
        implementation's tabs are added, in hook order.

    A1111 name: ``script_callbacks.on_ui_tabs``.

    .. versionadded:: 0.1
    """


@hookspec
def on_list_scripts() -> Any:
    """List scripts: the "Script" dropdown's entries (API ``script_name``) and always-on scripts
    (``alwayson_scripts``). Fires whenever scripts are listed or a request names one (``GET /sdapi/v1/scripts``,
    ``/script-info``, every generation request, the UI when it is built), so return the same objects each time
    and do no work here.

    :returns: a list of ``modules.extensions_api.Script`` instances (or one). Every implementation's scripts are
        listed, in hook order; a title already listed (case-insensitively) is ignored with a log line.

    A1111 name: none; A1111 finds ``scripts.Script`` subclasses in every ``scripts/*.py`` file.

    .. versionadded:: 0.2
    """


@hookspec
def on_model_loaded(sd_model: Any) -> None:
    """React to a checkpoint being loaded from disk. Fires after each real load, not on a switch to a model
    already in the loaded-models cache.

    :param sd_model: the loaded ``modules.sd_models_loader.SDModel`` (``.info`` is its ``CheckpointInfo``).
        Treat it as read-only.
    :returns: nothing; return values are ignored.

    A1111 name: ``script_callbacks.on_model_loaded``.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------------------------------
# One generation, in firing order
# ---------------------------------------------------------------------------------------------------------------

@hookspec
def on_before_process(p: Any) -> None:
    """Prepare a generation. Fires first in ``process_images(p)``, before the overrides are applied.

    :param p: the processing object (``StableDiffusionProcessingTxt2Img`` or ``…Img2Img``). An implementation may
        change its fields, and may add entries to ``p.override_settings``: they are validated and applied with
        the rest (as A1111's ``before_process`` scripts do).
    :returns: nothing; return values are ignored.

    A1111 name: ``Script.before_process`` (an AlwaysVisible script method).

    .. versionadded:: 0.1
    """


@hookspec
def on_opts_override_enter(overrides: Mapping[str, Any], previous: Mapping[str, Any], p: Any) -> None:
    """React to per-generation overrides. Fires once per implementation right after ``temporary_opts`` put the
    overrides in effect (and after validation succeeded: a rejected set of overrides fires nothing).

    :param overrides: read-only mapping of the applied values, keyed by current option names.
    :param previous: read-only mapping of the effective values of the same keys just before.
    :param p: the processing object, or ``None`` outside a generation.
    :returns: nothing; return values are ignored.

    Order: load order (core first). Each implementation whose enter hook was called — also one that raised —
    is owed exactly one ``on_opts_override_exit``. Nested ``temporary_opts`` fire their own pairs.

    A1111 has no such hook; its overrides change options silently.

    .. versionadded:: 0.1
    """


@hookspec
def on_opts_override_exit(overrides: Mapping[str, Any], previous: Mapping[str, Any], p: Any,
                          error: BaseException | None, restored: bool) -> None:
    """Undo what ``on_opts_override_enter`` did. Fires once per implementation whose enter hook was called, after
    the previous values are back in effect, whether the block returned, raised or was interrupted.

    :param overrides: the same read-only mapping the enter hook received.
    :param previous: the same read-only mapping the enter hook received (now the effective values again).
    :param p: the processing object, or ``None``.
    :param error: the exception leaving the block, or ``None``.
    :param restored: ``False`` only when the block ran with ``restore=False`` (A1111's
        ``override_settings_restore_afterwards=False``): then the overrides became stored values.
    :returns: nothing; return values are ignored.

    Order: exactly the reverse of the enter order, like nested ``with`` blocks. Every owed exit runs even if
    another raises.

    .. versionadded:: 0.1
    """


@hookspec
def on_process(p: Any) -> None:
    """Inspect or adjust a generation with its overrides in effect. Fires in ``process_images_inner`` before the
    prompts are encoded; ``shared.opts`` reads give the overridden values.

    :param p: the processing object; fields may be changed (prompts, seeds, steps, ...).
    :returns: nothing; return values are ignored.

    A1111 name: ``Script.process``.

    .. versionadded:: 0.1
    """


@hookspec
def on_sampling_step(p: Any, request: Any, step: int, total_steps: int, sigma: float, latents: Any,
                     denoised: Any) -> None:
    """Observe the sampling loop. Fires after every sampling step of every batch, with the generation's overrides
    in effect (diffusers' ``callback_on_step_end``). A batch cut short by interrupt or skip fires no more.

    :param p: the processing object.
    :param request: the batch's frozen ``modules.sd_pipeline.SamplingRequest`` (prompts, seeds, sampler, steps,
        size, settings, init images, ...).
    :param step: the index of the step just finished, from 0; ``step + 1 == total_steps`` after the last.
    :param total_steps: the steps this batch walks (fewer than ``request.steps`` for img2img, more for a
        sampler that takes an extra noise level).
    :param sigma: the noise level ``latents`` are at now (0 after the last step).
    :param latents: a copy of the step's result, ``[batch, channels, h, w]`` in k-diffusion's scaling (clean
        latent + sigma * noise): what the next step's model call receives, or what is decoded after the last.
    :param denoised: a copy of the step's last denoised prediction (the model's clean-latent estimate).
    :returns: nothing; return values are ignored, and changing the copies changes nothing. Replacing the
        latents would need every sampler to take them back between steps (the multistep samplers keep a
        history; UniPC corrects a step with the next model call), which Serena's samplers do not do yet.

    Costs nothing when no extension implements it: the implementations are looked up once per batch.

    A1111 has no per-step hook for extensions; its closest, ``script_callbacks.on_cfg_after_cfg``, fires inside
    each model call and may change the denoised latent.

    .. versionadded:: 0.1
    """


@hookspec
def on_infotext(p: Any, params: dict) -> None:
    """Add fields to the generation parameters (the PNG "parameters" text). Fires once per image, while the
    generation's overrides are still in effect.

    :param p: the processing object.
    :param params: the ordered dict of ``label -> value`` that becomes the infotext line; add, change or remove
        entries in place. A value of ``None`` is left out.
    :returns: nothing; return values are ignored.

    A1111 has no direct equivalent (it uses ``p.extra_generation_params``, which Serena also honours).

    .. versionadded:: 0.1
    """


@hookspec
def on_image_saved(params: Any) -> None:
    """React to an image written to disk. Fires after each saved image, with the generation's overrides still in
    effect.

    :param params: an ``ImageSaveParams`` with ``image`` (PIL image), ``p``, ``filename`` and ``pnginfo`` (dict).
    :returns: nothing; return values are ignored.

    A1111 name: ``script_callbacks.on_image_saved``.

    .. versionadded:: 0.1
    """


@hookspec
def on_postprocess(p: Any, processed: Any) -> None:
    """Inspect or change the finished result. Fires at the end of ``process_images_inner``, with the overrides
    still in effect.

    :param p: the processing object.
    :param processed: the ``Processed`` result (``images``, ``seeds``, ``infotexts``); may be changed in place.
    :returns: nothing; return values are ignored.

    A1111 name: ``Script.postprocess``.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------------------------------
# Lists that extensions add to, read whenever they are needed
# ---------------------------------------------------------------------------------------------------------------

@hookspec
def on_list_upscalers() -> Any:
    """List image upscalers. Fires each time the list is read: ``GET /sdapi/v1/upscalers``, every extras request
    (``extra-single-image``, ``extra-batch-images``, the Extras tab), every ``modules.upscalers.upscale`` call
    (Hires fix, SD upscale) and every listing of the scripts (SD upscale's *Upscaler* choices), so keep it cheap:
    scan model folders once and return what you found.

    :returns: a list of ``modules.extensions_api.Upscaler`` (or one), or ``None``. They are listed after the
        built-in None, Lanczos and Nearest, in hook order. An item whose name is already listed (case-insensitive),
        or that is no ``Upscaler`` with a name, a function and a positive scale, is skipped and reported.

    A1111 has no hook: an extension subclasses ``modules.upscaler.Upscaler`` and A1111 finds the subclass when it
    loads the extension's scripts.

    .. versionadded:: 0.1
    """


@hookspec
def on_list_extra_networks() -> Any:
    """List extra network types: what a ``<type:arg1:arg2…>`` prompt tag does. Fires before every batch of every
    generation (``modules.extra_networks.activated``), so return the same objects each time and do no work here.

    :returns: a list of ``modules.extensions_api.ExtraNetwork`` (or one), or ``None``. Each one's ``name`` is its
        tag type (``lora`` for ``<lora:…>``); a type already listed is skipped with a log line.

    For every batch, each listed type's ``activate(p, params_list, model)`` is called with the tags of its type in
    the batch's first prompt (``ExtraNetworkParams``, an empty list when there are none) and the loaded model the
    batch runs on (``.unet``, ``.text_encoder``, ``.info``); it returns a context manager (or ``None``) that the
    generation enters around the batch's sampling and exits after it, also when sampling raised or was
    interrupted, in reverse order. A later pass of the batch with other tags or on another model (Hires fix's
    ``hr_prompt`` or ``hr_checkpoint_name``, the refiner once it takes over) calls every type's ``activate`` again
    with that pass's tags and model, its context nested inside the batch's and exited when the pass ends. The tags
    are removed from the text the conditioning reads (inside prompt editing and alternation too) and kept in the
    recorded prompts and infotext. A type whose ``activate`` raises
    is reported in the generation's warnings and the batch runs without it; an exception while exiting fails the
    generation (a model left changed must not run the next one).

    A1111 name: ``extra_networks.register_extra_network`` (an ``ExtraNetwork`` with ``activate``/``deactivate``).

    .. versionadded:: 0.3
    """
