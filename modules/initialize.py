"""Start-up, in order: flags, folders, the core's hooks, the model options' checks, settings, extensions, their
options, checkpoints.

Everything a process needs before it serves or generates; ``webui.py`` and the tests call ``initialize``.
"""

from __future__ import annotations

import logging
import os

from modules import cmd_args, core_hooks, model_options, paths, plugins, sd_models, shared
from modules.option_info import OptionError

log = logging.getLogger("serena.initialize")

CORE_PLUGIN = "serena.core"


def register_core_plugin(host: plugins.Host | None = None) -> None:
    """Register the core's own implementations (``core_hooks``) first, once (seam rule 12)."""
    host = host if host is not None else plugins.host
    if not host.is_registered(CORE_PLUGIN):
        host.register(core_hooks, CORE_PLUGIN, plugins.CORE_GROUP)


def initialize(cmd_opts=None, *, load_extensions: bool = True):
    """Bind the process-wide handles to ``cmd_opts`` and load settings and extensions.

    ``shared.opts`` stays the same object (extensions hold references to it); only its file, frozen flag and
    stored values change.
    """
    from modules import extensions

    cmd_opts = cmd_opts if cmd_opts is not None else cmd_args.defaults()
    shared.cmd_opts = cmd_opts
    shared.data_paths = paths.from_cmd_opts(cmd_opts)
    opts = shared.opts
    opts.filename = shared.data_paths.config_file
    opts.frozen = bool(cmd_opts.freeze_settings)
    plugins.host.strict = bool(cmd_opts.strict_hooks) or os.environ.get("SERENA_STRICT_HOOKS") == "1"
    register_core_plugin()
    model_options.attach(opts)  # before load: a stored checkpoint, VAE or clip skip is checked against the models
    opts.load()
    if cmd_opts.ckpt:
        if not os.path.exists(cmd_opts.ckpt):
            raise SystemExit(f"serena: error: --ckpt {cmd_opts.ckpt}: no such file")
        sd_models.extra_checkpoints.append(os.path.abspath(cmd_opts.ckpt))
    if load_extensions:
        extensions.load_configured()
        extensions.register_extension_options()
    sd_models.refresh_checkpoints()
    if cmd_opts.ckpt and not opts.frozen:
        # A1111: --ckpt names the checkpoint to start with.
        title = sd_models.checkpoint_for_file(cmd_opts.ckpt.rstrip("/")).title
        try:
            opts.set("sd_model_checkpoint", title, run_callbacks=False)
        except OptionError as e:  # a file that cannot load: start on a working checkpoint instead (docs/models.md)
            log.warning("--ckpt %s not used: %s", cmd_opts.ckpt, e.reason)
    return shared.opts
