"""Start-up imports only what a run needs before it serves (docs/performance.md, start-up).

Each check runs in a fresh interpreter: in this process other tests have imported everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Modules whose import costs seconds: the web UI, and the model stack that the starting checkpoint's load brings
#: in (``webui.load_starting_model``, after the app is built), and its check on a first start (nothing cached).
HEAVY = ["gradio", "pandas", "diffusers", "transformers", "accelerate", "modules.sd_models_loader", "modules.ui"]


def imported_after(tmp_path, code: str) -> set[str]:
    """The ``HEAVY`` modules in ``sys.modules`` after ``code`` ran in a fresh interpreter."""
    script = (f"import sys\nsys.path.insert(0, {ROOT!r})\n{code}\n"
              f"import json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    assert result.returncode == 0, result.stderr[-4000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_api_only_app_imports_neither_gradio_nor_the_model_stack(tmp_path):
    code = ("import webui\nfrom modules import cmd_args, initialize\n"
            f"opts = cmd_args.parse_args(['--nowebui', '--data-dir', {str(tmp_path)!r}])\n"
            "initialize.initialize(opts)\nwebui.create_app(opts)")
    assert imported_after(tmp_path, code) == set()


def test_exit_after_initialize_imports_no_heavy_module(tmp_path):
    # `--exit` (like `--list-hooks`) stops after initialize: settings and extensions need none of these.
    code = ("import webui\n"
            f"assert webui.main(['--exit', '--data-dir', {str(tmp_path)!r}]) == 0")
    assert imported_after(tmp_path, code) == set()


def test_warm_start_builds_the_web_ui_and_checks_the_starting_checkpoint_without_the_model_stack(tmp_path):
    # The page needs the starting checkpoint's facts (title, native size, CFG); on a data folder used before they
    # come from cache.json (sd_models.StoredFacts), so only the background load imports diffusers.
    code = ("import webui\nfrom modules import cmd_args, initialize, sd_models\n"
            f"opts = cmd_args.parse_args(['--data-dir', {str(tmp_path)!r}])\n"
            "initialize.initialize(opts)\nwebui.create_app(opts)\n"
            "sd_models.current_model = lambda: None  # the weights' load (background) is not what is measured\n"
            "webui.load_starting_model(0.0).join()\n"
            "assert sd_models.model_manager.current is None and 'modules.ui' in sys.modules")
    model_stack = {"diffusers", "transformers", "accelerate", "modules.sd_models_loader"}
    assert imported_after(tmp_path, code) & model_stack == model_stack  # the first start inspects
    assert imported_after(tmp_path, code) & model_stack == set()
