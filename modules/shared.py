"""The few process-wide handles: the options store and the parsed flags.

``opts`` starts with defaults and no settings file; ``modules.initialize.initialize`` binds it to the configured
``config.json`` and the real flags. Everything else that looks global lives in its own module (``jobs``,
``sd_models``, ``plugins``).
"""

from __future__ import annotations

from modules import cmd_args, paths, shared_options
from modules.options import Options

cmd_opts = cmd_args.defaults()
data_paths = paths.from_cmd_opts(cmd_opts)
opts = Options(shared_options.options_templates, filename=data_paths.config_file)
