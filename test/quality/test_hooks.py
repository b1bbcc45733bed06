"""Every hook: documented, and called by a test through Serena's dispatch; the built-in extensions; nesting.

The policy (``shared/design/style.md`` point 3), one subtest per hook spec in ``modules/hookspecs.py``:

* the spec has a docstring with a ``:param x:`` line per argument;
* ``docs/extensions/hooks.md`` has a heading that is exactly ``name(arg1, arg2, ...)`` in backticks, followed by
  an argument table listing exactly the spec's arguments, in order;
* this file has a ``test_hook_<name>`` — and that test really calls the hook: the autouse ``hook_calls`` fixture
  records every hook call through the test's ``plugins.pm`` (``add_hookcall_monitoring``) and fails a
  ``test_hook_<name>`` during which ``<name>`` was never called.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pluggy
import pytest
import torch
from PIL import Image

from modules import extensions, hookspecs, plugins, processing, sd_pipeline, shared
from modules.hookspecs import hookimpl
from modules.runtime_utils import active_overrides, temporary_opts

ROOT = Path(__file__).resolve().parents[2]
HOOKS_DOC = ROOT / "docs" / "extensions" / "hooks.md"
HOOKS = plugins.hook_names(plugins.pm)


# ---------------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def hook_calls(request, plugin_host):
    """Hook names called through this test's ``pm`` (``plugins.pm``) during this test, in order."""
    called: list[str] = []
    undo = plugin_host.pm.add_hookcall_monitoring(lambda name, impls, kwargs: called.append(name),
                                              lambda outcome, name, impls, kwargs: None)
    yield called
    undo()
    test_name = request.node.originalname
    hook = test_name.removeprefix("test_hook_")
    if test_name.startswith("test_hook_") and hook in HOOKS:
        assert hook in called, (f"{test_name} in {Path(__file__).name} must call {hook} through Serena's dispatch "
                                f"(plugins.host / process_images / temporary_opts); it called {sorted(set(called))}")


class SketchTxt2Img(processing.StableDiffusionProcessingTxt2Img):
    """A generation without a model: small solid images; records what each batch saw."""

    def sample_batch(self, model, prompts, negative_prompts, seeds, subseeds):
        self.seen = getattr(self, "seen", [])
        self.seen.append({"clip_skip": shared.opts.CLIP_stop_at_last_layers, "prompts": list(prompts),
                          "stack": active_overrides()})
        for callback in getattr(self, "during", ()):
            callback(self)
        return [Image.new("RGB", (self.width, self.height), (seed % 256, 0, 0)) for seed in seeds]


def make_p(**kw) -> SketchTxt2Img:
    defaults = dict(prompt="a cat", steps=2, width=64, height=64, seed=5, do_not_save_samples=True)
    defaults.update(kw)
    return SketchTxt2Img(**defaults)


@pytest.fixture
def option_labels(monkeypatch):
    """Options registered during the test are forgotten afterwards."""
    monkeypatch.setattr(shared.opts, "data_labels", dict(shared.opts.data_labels))
    monkeypatch.setattr(shared.opts, "_aliases", dict(shared.opts._aliases))


@pytest.fixture
def builtins(data_dir, option_labels):
    """The real ``extensions-builtin/`` loaded on the process-wide host, as start-up does, for one test."""
    exts = extensions.load_all(builtin_dir=str(ROOT / "extensions-builtin"), user_dir=str(data_dir / "extensions"),
                               disabled=[], disable_all=False, disable_extra=False, entry_points=False)
    assert [e.name for e in exts if e.loaded] == ["clip-skip-cache", "Lora", "override-infotext",
                                                  "override-inspector", "prompts-from-file", "sd-upscale",
                                                  "xyz-grid"]
    assert extensions.register_extension_options() == []
    yield {e.name: plugins.pm.get_plugin(e.name) for e in exts}
    extensions.unload(exts)


def infotext_fields(text: str) -> dict:
    from modules import infotext
    return infotext.parse_generation_parameters(text)


# ---------------------------------------------------------------------------------------------------------------
# The policy: docstring, docs section with the exact signature and argument table, a test that calls the hook
# ---------------------------------------------------------------------------------------------------------------

def spec_args(hook: str) -> list[str]:
    return list(getattr(plugins.pm.hook, hook).spec.argnames)


def doc_section(hook: str) -> tuple[str, str]:
    """``(heading line, body up to the next heading)`` of the hook's section in hooks.md."""
    text = HOOKS_DOC.read_text(encoding="utf-8")
    match = re.search(rf"^###\s+`{hook}\(.*$", text, re.M)
    if match is None:
        return "", ""
    rest = text[match.end():]
    following = re.search(r"^#{1,3}\s", rest, re.M)
    return match.group(0), rest[:following.start()] if following else rest


def test_each_test_has_a_fresh_host_with_only_the_core(plugin_host):
    assert plugins.host is plugin_host and plugins.pm is plugin_host.pm and plugin_host.strict
    assert plugin_host.registered() == [("serena.core", plugins.CORE_GROUP)]


def test_use_host_swaps_host_and_pm_for_a_block():
    from modules import extensions_api
    outer = plugins.host
    other = plugins.Host(plugins.create_plugin_manager())
    other.register(type("Tabs", (), {"on_ui_tabs": hookimpl(lambda self: None)})(), "only-here")
    with plugins.use_host(other):
        assert plugins.host is other and plugins.pm is other.pm
        assert extensions_api.hook_order()["on_ui_tabs"] == ["only-here"] == plugins.resolved_order("on_ui_tabs")
    assert plugins.host is outer and plugins.pm is outer.pm
    assert extensions_api.hook_order()["on_ui_tabs"] == []


def test_every_hook_spec_is_covered():
    # Read from the source, not from the module's attributes as ``plugins.hook_names`` does.
    tree = ast.parse(Path(hookspecs.__file__).read_text(encoding="utf-8"))
    declared = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                and any(isinstance(d, ast.Name) and d.id == "hookspec" for d in node.decorator_list)]
    assert HOOKS == declared and len(HOOKS) >= 11
    assert all(getattr(plugins.pm.hook, name).has_spec() for name in declared)


def test_dispatch_prunes_arguments_and_tracers_see_each_call():
    """Each implementation gets the arguments it names (pluggy's rule, through pluggy's public API only), and a
    tracer added with ``pm.add_hookcall_monitoring`` sees every implementation's call while it is added."""
    host = plugins.Host(strict=True)

    class Recorder:
        def __init__(self, name):
            self.name = name

        @hookimpl
        def on_infotext(self, params):
            params.setdefault("seen", []).append(self.name)
            return self.name

    host.register(Recorder("a"), "a")
    host.register(Recorder("b"), "b")
    params: dict = {}
    assert host.call("on_infotext", p=None, params=params) == ["a", "b"] and params == {"seen": ["a", "b"]}
    traced = []
    undo = host.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: traced.append((name, [host.plugin_name(i.plugin) for i in impls])),
        lambda outcome, name, impls, kwargs: None)
    try:
        assert host.call("on_infotext", p=None, params={}) == ["a", "b"]
    finally:
        undo()
    assert host.call("on_infotext", p=None, params={}) == ["a", "b"]
    assert traced == [("on_infotext", ["a"]), ("on_infotext", ["b"])]
    with pytest.raises(plugins.HookError) as info:
        host.call("on_infotext", p=None)  # no params: the implementation cannot be called
    assert isinstance(info.value.__cause__, pluggy.HookCallError) and "'params'" in str(info.value.__cause__)


@pytest.mark.parametrize("hook", HOOKS)
def test_policy_spec_has_docstring(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert doc.strip(), f"modules/hookspecs.py: {hook} has no docstring"
    for arg in spec_args(hook):
        assert f":param {arg}:" in doc, f"modules/hookspecs.py: {hook}'s docstring lacks ':param {arg}:'"
    assert ":returns:" in doc, f"modules/hookspecs.py: {hook}'s docstring lacks ':returns:'"


@pytest.mark.parametrize("hook", HOOKS)
def test_policy_docs_heading_is_the_exact_signature(hook):
    signature = f"{hook}({', '.join(spec_args(hook))})"
    heading, _ = doc_section(hook)
    assert heading == f"### `{signature}`", (
        f"docs/extensions/hooks.md needs the heading ### `{signature}` (found {heading!r})")


@pytest.mark.parametrize("hook", HOOKS)
def test_policy_docs_argument_table_matches_spec(hook):
    _, body = doc_section(hook)
    rows = [line for line in body.splitlines() if line.startswith("|")]
    args = spec_args(hook)
    if not args:
        assert not rows and "No arguments." in body, f"docs/extensions/hooks.md: {hook} takes no arguments"
        return
    assert rows and re.match(r"\|\s*Argument\s*\|\s*Type\s*\|\s*Meaning\s*\|", rows[0]), (
        f"docs/extensions/hooks.md: {hook} needs a table | Argument | Type | Meaning |")
    names = [re.match(r"\|\s*`(\w+)`", row).group(1) for row in rows[2:] if re.match(r"\|\s*`(\w+)`", row)]
    assert names == args, f"docs/extensions/hooks.md: the argument table of {hook} lists {names}, the spec {args}"


@pytest.mark.parametrize("hook", HOOKS)
def test_policy_hook_has_a_test(hook):
    test = globals().get(f"test_hook_{hook}")
    assert callable(test), f"{Path(__file__).name} needs a test_hook_{hook} that calls {hook} through pm"


# ---------------------------------------------------------------------------------------------------------------
# One test per hook, each calling it through Serena's dispatch
# ---------------------------------------------------------------------------------------------------------------

def test_hook_on_ui_settings(data_dir, register, option_labels):
    class Settings:
        @hookimpl
        def on_ui_settings(self):
            shared.opts.add_option("hooktest_strength", shared_options_info(0.5))

    register(Settings(), "settings-ext")
    assert extensions.register_extension_options() == []
    assert shared.opts.hooktest_strength == 0.5
    # Stored like core options ...
    shared.opts.set("hooktest_strength", 0.75)
    shared.opts.save()
    shared.opts.load()
    assert shared.opts.hooktest_strength == 0.75
    # ... and overridable per generation like them.
    with temporary_opts({"hooktest_strength": 1.0}):
        assert shared.opts.hooktest_strength == 1.0
    assert shared.opts.hooktest_strength == 0.75


def shared_options_info(default):
    from modules.extensions_api import OptionInfo
    return OptionInfo(default, "Hook test strength", "Slider", {"minimum": 0.0, "maximum": 1.0},
                      section=("hooktest", "Hook test"))


def test_hook_on_app_started(data_dir, register):
    from fastapi.testclient import TestClient

    import webui
    from modules import cmd_args
    seen = []

    class Routes:
        @hookimpl
        def on_app_started(self, app):
            seen.append(app)
            app.add_api_route("/hooktest/ping", lambda: {"pong": True}, methods=["GET"])

    register(Routes(), "routes-ext")
    app = webui.create_app(cmd_args.parse_args(["--nowebui", "--data-dir", str(data_dir)]))
    assert seen == [app]  # once, with the app that is served
    with TestClient(app) as client:
        assert client.get("/hooktest/ping").json() == {"pong": True}
        assert client.get("/sdapi/v1/progress").status_code == 200  # next to Serena's own routes


def test_hook_on_ui_tabs(register):
    tab = object()  # stands for a gradio Blocks

    class Tabs:
        @hookimpl
        def on_ui_tabs(self):
            return [(tab, "Hook test", "hooktest_tab")]

    class NoTab:
        @hookimpl
        def on_ui_tabs(self):
            return None

    register(Tabs(), "tabs-ext")
    register(NoTab(), "no-tab-ext")
    assert plugins.host.call("on_ui_tabs") == [[(tab, "Hook test", "hooktest_tab")]]


def test_hook_on_list_scripts(register):
    from modules import scripts
    from modules.extensions_api import Script

    class Upscale(Script):
        title = "Only img2img"
        tabs = ("img2img",)

    class Lister:
        @hookimpl
        def on_list_scripts(self):
            return [Upscale(), "not a script"]  # the second is logged and skipped

    register(Lister(), "script-ext")
    assert [s.title for s in scripts.available("img2img")] == ["Only img2img"]
    assert scripts.available("txt2img") == [] and scripts.find("img2img", "ONLY IMG2IMG").tabs == ("img2img",)


def test_hook_on_model_loaded(fake_models, register):
    from modules import sd_models
    seen = []

    class Loaded:
        @hookimpl
        def on_model_loaded(self, sd_model):
            seen.append(sd_model.info.name)

    register(Loaded(), "loaded-ext")
    alpha, beta = sd_models.resolve_checkpoint("alpha"), sd_models.resolve_checkpoint("beta")
    shared.opts.set("sd_checkpoints_limit", 2)
    sd_models.model_manager.get(alpha)
    sd_models.model_manager.get(beta)
    sd_models.model_manager.get(alpha)  # in the loaded-models cache: a switch, not a load
    assert seen == ["alpha.safetensors", "beta.safetensors"] == fake_models.loaded_names


def test_hook_on_before_process(fake_models, register):
    class Before:
        @hookimpl
        def on_before_process(self, p):
            self.seen_clip_skip = shared.opts.CLIP_stop_at_last_layers  # overrides are not applied yet
            p.override_settings["CLIP_stop_at_last_layers"] = 3        # validated and applied with the rest
            p.prompt += ", masterpiece"

    before = register(Before(), "before-ext")
    p = make_p(override_settings={"eta_noise_seed_delta": 7})
    processed = processing.process_images(p)
    assert before.seen_clip_skip == 1
    assert p.seen[0]["clip_skip"] == 3 and p.seen[0]["prompts"] == ["a cat, masterpiece"]
    assert infotext_fields(processed.infotexts[0])["Clip skip"] == "3"
    assert shared.opts.CLIP_stop_at_last_layers == 1 and shared.opts.stored() == {}


def test_hook_on_opts_override_enter(data_dir, register):
    calls = []

    class Enter:
        @hookimpl
        def on_opts_override_enter(self, overrides, previous, p):
            calls.append((dict(overrides), dict(previous), p, shared.opts.CLIP_stop_at_last_layers))
            with pytest.raises(TypeError):
                overrides["CLIP_stop_at_last_layers"] = 5  # read-only

    register(Enter(), "enter-ext")
    marker = SimpleNamespace(warnings=[])
    with temporary_opts({"CLIP_stop_at_last_layers": 2}, p=marker):
        pass
    with temporary_opts({}):  # empty is free: no hook
        pass
    assert calls == [({"CLIP_stop_at_last_layers": 2}, {"CLIP_stop_at_last_layers": 1}, marker, 2)]


def test_hook_on_opts_override_exit(data_dir, register):
    calls = []

    class Exit:
        @hookimpl
        def on_opts_override_enter(self):
            pass

        @hookimpl
        def on_opts_override_exit(self, overrides, previous, p, error, restored):
            calls.append((dict(overrides), dict(previous), p, error, restored, shared.opts.CLIP_stop_at_last_layers))

    register(Exit(), "exit-ext")
    boom = ValueError("boom")
    with pytest.raises(ValueError):
        with temporary_opts({"CLIP_stop_at_last_layers": 2}):
            raise boom
    with temporary_opts({"CLIP_stop_at_last_layers": 4}, restore=False):
        pass
    assert calls == [
        ({"CLIP_stop_at_last_layers": 2}, {"CLIP_stop_at_last_layers": 1}, None, boom, True, 1),
        ({"CLIP_stop_at_last_layers": 4}, {"CLIP_stop_at_last_layers": 1}, None, None, False, 4),
    ]
    assert shared.opts.stored() == {"CLIP_stop_at_last_layers": 4}


def test_hook_on_process(fake_models, register):
    class Process:
        @hookimpl
        def on_process(self, p):
            p.prompt = p.prompt.upper()
            p.extra_generation_params["Seen clip skip"] = shared.opts.CLIP_stop_at_last_layers

    register(Process(), "process-ext")
    processed = processing.process_images(make_p(override_settings={"CLIP_stop_at_last_layers": 2}))
    assert processed.all_prompts == ["A CAT"]
    assert infotext_fields(processed.infotexts[0])["Seen clip skip"] == "2"


def test_hook_on_sampling_step(real_model, register, monkeypatch):
    """A real generation: one call per step, with the latents sampling goes on from and, at the end, decodes."""
    calls, unet_inputs = [], []

    class Steps:
        @hookimpl
        def on_sampling_step(self, p, request, step, total_steps, sigma, latents, denoised):
            calls.append(SimpleNamespace(p=p, request=request, step=step, total=total_steps, sigma=sigma,
                                         latents=latents, denoised=denoised,
                                         clip_skip=shared.opts.CLIP_stop_at_last_layers))

    forward = real_model.unet.forward

    def recording(sample, timestep, **kw):
        unet_inputs.append(sample.clone())
        return forward(sample, timestep, **kw)

    monkeypatch.setattr(real_model.unet, "forward", recording)
    register(Steps(), "step-observer")
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a red circle", sampler_name="Euler", steps=3, width=64,
                                                    height=64, seed=3, do_not_save_samples=True,
                                                    override_settings={"CLIP_stop_at_last_layers": 2})
    processed = processing.process_images(p)
    assert [c.step for c in calls] == [0, 1, 2] and {c.total for c in calls} == {3}
    assert all(c.p is p and c.request.seeds == (3,) and c.request.steps == 3 and c.clip_skip == 2 for c in calls)
    sigmas = [c.sigma for c in calls]
    assert sigmas == sorted(sigmas, reverse=True) and sigmas[-1] == 0.0 and sigmas[0] > 0
    # Euler calls the UNet once per step, with c_in * x: the latents after step k are what step k + 1 receives...
    assert len(unet_inputs) == 3
    for call, model_in in zip(calls, unet_inputs[1:]):
        c_in = 1 / math.sqrt(call.sigma**2 + 1)
        assert torch.equal(model_in, (torch.cat([call.latents, call.latents]) * c_in).to(model_in.dtype))
    # ...and the last step's are what is decoded (Euler's last step to sigma 0 lands on the denoised estimate).
    assert torch.equal(calls[-1].latents, calls[-1].denoised)
    with torch.inference_mode():
        decoded = sd_pipeline.latents_to_images(calls[-1].latents, real_model.vae)[0]
    assert decoded.tobytes() == processed.images[0].tobytes()


def test_sampling_step_is_not_looked_up_per_step_when_unobserved(fake_models, monkeypatch):
    """No implementation: the pipeline gets no callback at all, so its steps cost exactly what they did."""
    callbacks = []

    def sample_batch(request, model, state, callback_on_step_end=None):
        callbacks.append(callback_on_step_end)
        return [Image.new("RGB", (request.width, request.height)) for _ in request.seeds]

    monkeypatch.setattr(sd_pipeline, "sample_batch", sample_batch)
    p = processing.StableDiffusionProcessingTxt2Img(prompt="x", steps=2, width=64, height=64, n_iter=2,
                                                    do_not_save_samples=True)
    assert len(processing.process_images(p).images) == 2 and callbacks == [None, None]


def test_sampling_step_observers_change_no_pixel(real_model, register, lenient_hooks):
    """Two code paths on one machine: a masked img2img with an ancestral sampler gives the same pixels with an
    observer that scribbles on its tensors and fails at every step as with none; each failure is a warning."""
    init = processing.process_images(processing.StableDiffusionProcessingTxt2Img(
        prompt="a blue square", steps=2, width=64, height=64, seed=8, do_not_save_samples=True)).images[0]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))

    def img2img():
        return processing.process_images(processing.StableDiffusionProcessingImg2Img(
            prompt="a red circle", sampler_name="Euler a", steps=4, width=64, height=64, seed=5, init_images=[init],
            mask=mask, denoising_strength=0.6, do_not_save_samples=True))

    alone = img2img()

    class Scribbler:
        @hookimpl
        def on_sampling_step(self, latents, denoised):
            latents.mul_(0)
            denoised.add_(1)
            raise RuntimeError("scribbled")

    register(Scribbler(), "scribbler")
    observed = img2img()
    assert observed.images[0].tobytes() == alone.images[0].tobytes()
    failures = [w for w in observed.warnings if "scribbler" in w]
    assert len(failures) == 3 and all("on_sampling_step" in w for w in failures)  # strength 0.6 of 4 steps: 3


def test_a_failing_step_observer_fails_a_strict_generation(real_model, register):
    class Failing:
        @hookimpl
        def on_sampling_step(self, step):
            raise RuntimeError(f"step {step}")

    register(Failing(), "failing-observer")
    with pytest.raises(plugins.HookError) as info:
        processing.process_images(processing.StableDiffusionProcessingTxt2Img(
            prompt="x", steps=2, width=64, height=64, do_not_save_samples=True))
    assert (info.value.plugin, info.value.hook, str(info.value.__cause__)) == (
        "failing-observer", "on_sampling_step", "step 0")


def test_hook_on_infotext(fake_models, register):
    class Info:
        @hookimpl
        def on_infotext(self, p, params):
            params["Hook clip skip"] = shared.opts.CLIP_stop_at_last_layers  # overrides still in effect
            params.pop("Sampler", None)
            params["Dropped"] = None                                          # None is left out

    register(Info(), "info-ext")
    processed = processing.process_images(make_p(override_settings={"CLIP_stop_at_last_layers": 2}, batch_size=2))
    for text in processed.infotexts:
        fields = infotext_fields(text)
        assert fields["Hook clip skip"] == "2" and "Sampler" not in fields and "Dropped" not in text


def test_hook_on_image_saved(fake_models, register, data_dir):
    saved = []

    class Saved:
        @hookimpl
        def on_image_saved(self, params):
            saved.append((params.filename, params.pnginfo["parameters"], params.p,
                          shared.opts.CLIP_stop_at_last_layers))

    register(Saved(), "saved-ext")
    p = make_p(do_not_save_samples=False, override_settings={"CLIP_stop_at_last_layers": 2}, n_iter=2)
    processed = processing.process_images(p)
    assert [s[0] for s in saved] == processed.saved_paths and len(saved) == 2
    for (filename, parameters, seen_p, clip_skip), text in zip(saved, processed.infotexts):
        assert Path(filename).is_file() and str(data_dir) in filename
        assert parameters == text and seen_p is p and clip_skip == 2


def test_hook_on_postprocess(fake_models, register):
    class Post:
        @hookimpl
        def on_postprocess(self, p, processed):
            processed.images.append(Image.new("RGB", (8, 8)))
            processed.infotexts.append(f"clip skip {shared.opts.CLIP_stop_at_last_layers}")

    register(Post(), "post-ext")
    processed = processing.process_images(make_p(override_settings={"CLIP_stop_at_last_layers": 2}))
    assert len(processed.images) == 2 and processed.infotexts[-1] == "clip skip 2"


def test_hook_on_list_extra_networks(register, lenient_hooks):
    """A third-party tag type: its tags leave the text the batch samples, its context wraps exactly the batch."""
    import contextlib

    from modules.extensions_api import ExtraNetwork

    events = []

    class Bright(ExtraNetwork):
        name = "bright"

        @contextlib.contextmanager
        def activate(self, p, params_list, model):
            events.append(("enter", [(x.positional, x.named) for x in params_list]))
            try:
                yield
            finally:
                events.append(("exit",))

    class Broken(ExtraNetwork):
        name = "broken"

        def activate(self, p, params_list, model):
            raise ValueError("cannot")

    class Lister:
        @hookimpl
        def on_list_extra_networks(self):
            return [Bright(), Broken(), Bright(), "nonsense"]

    register(Lister(), "bright-ext")
    p = make_p(prompt="a <bright:0.5:x=1> [red:<bright:2>:1] cat <other:1>", n_iter=2)
    p.during = [lambda p: events.append(("sample",))]
    processed = processing.process_images(p)
    assert [s["prompts"] for s in p.seen] == [["a  [red::1] cat "]] * 2
    batch = [("enter", [(["0.5"], {"x": "1"}), (["2"], {})]), ("sample",), ("exit",)]
    assert events == batch * 2
    assert processed.infotexts[0].startswith("a <bright:0.5:x=1> [red:<bright:2>:1] cat <other:1>\n")
    assert sum("'broken' failed to activate: ValueError: cannot" in w for w in processed.warnings) == 2

    # Without tags the type is still activated, with none; its context exits also when sampling raises.
    events.clear()
    p = make_p(prompt="a cat")
    p.during = [lambda p: (_ for _ in ()).throw(RuntimeError("sampling failed"))]
    with pytest.raises(RuntimeError, match="sampling failed"):
        processing.process_images(p)
    assert events == [("enter", []), ("exit",)]


def test_hook_on_list_upscalers(register):
    from modules import upscalers
    from modules.extensions_api import Upscaler

    def halve_then_grow(image, width, height):  # returns the wrong size on purpose: Serena resizes to fit
        return image.resize((width // 2, height // 2))

    class One:
        @hookimpl
        def on_list_upscalers(self):
            return Upscaler("Hook upscaler", halve_then_grow, scale=2, model_name="hook")

    class Many:
        @hookimpl
        def on_list_upscalers(self):
            return [Upscaler("hook UPSCALER", halve_then_grow), Upscaler("Second", halve_then_grow, scale=3),
                    "not an upscaler", Upscaler("Zero", halve_then_grow, scale=0)]

    register(One(), "one-ext")
    register(Many(), "many-ext")
    warnings: list = []
    listed = upscalers.all_upscalers(warnings)
    assert [u.name for u in listed] == ["None", "Lanczos", "Nearest", "Hook upscaler", "Second"]
    assert len(warnings) == 3 and all("'many-ext'" in w for w in warnings)
    assert "'hook UPSCALER' is already listed by extension 'one-ext'" in warnings[0]
    image = upscalers.upscale(Image.new("RGB", (5, 3), (9, 9, 9)), "hook upscaler", 15, 9)
    assert image.size == (15, 9) and image.getpixel((7, 4)) == (9, 9, 9)
    assert upscalers.upscale(image, "none", 4, 2).size == (4, 2)  # "None" still gives the size asked for
    with pytest.raises(ValueError, match="available: None, Lanczos, Nearest, Hook upscaler, Second"):
        upscalers.upscale(image, "Third", 4, 2)
    with pytest.raises(upscalers.UpscalerFailed, match="'Bad' failed: returned str, not a PIL image"):
        upscalers.Upscaler("Bad", lambda image, width, height: "oops").run(image, 4, 2)


# ---------------------------------------------------------------------------------------------------------------
# The built-in extensions, through process_images
# ---------------------------------------------------------------------------------------------------------------

class TestOverrideInfotext:
    def test_field_present_during_and_absent_after(self, fake_models, builtins, register):
        seen = []

        class Peek:  # a user extension's on_infotext runs after the built-in one
            @hookimpl
            def on_infotext(self, params):
                seen.append(params.get("Override settings"))

        register(Peek(), "peek")
        p = make_p(override_settings={"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337})
        processed = processing.process_images(p)
        expected = "CLIP_stop_at_last_layers=2, eta_noise_seed_delta=31337"
        assert seen == [expected]
        assert infotext_fields(processed.infotexts[0])["Override settings"] == expected
        nxt = processing.process_images(make_p())
        assert "Override settings" not in nxt.infotexts[0] and seen[-1] is None
        assert builtins["override-infotext"].current() == {}

    def test_no_leak_after_a_failed_generation(self, fake_models, builtins):
        def fail(p):
            raise RuntimeError("sampler blew up")

        p = make_p(override_settings={"CLIP_stop_at_last_layers": 3})
        p.during = [fail]
        with pytest.raises(RuntimeError):
            processing.process_images(p)
        assert "Override settings" not in processing.process_images(make_p()).infotexts[0]


class TestClipSkipCache:
    def test_enter_exit_symmetry(self, fake_models, builtins):
        cache = builtins["clip-skip-cache"]
        shared.opts.set("CLIP_stop_at_last_layers", 2)
        assert cache.current() == cache.derive(2)
        during = []
        p = make_p(override_settings={"CLIP_stop_at_last_layers": 4})
        p.during = [lambda p: during.append(cache.current())]
        processing.process_images(p)
        assert during == [cache.derive(4)] and during[0].hidden_layer == -4
        assert cache.current() == cache.derive(2)           # derived from the stored value again
        p2 = make_p(override_settings={"eta_noise_seed_delta": 1})  # another key: the stored value's state
        p2.during = [lambda p: during.append(cache.current())]
        processing.process_images(p2)
        assert during[-1] == cache.derive(2)

    def test_its_option_is_stored_and_overridable(self, fake_models, builtins, data_dir):
        p = make_p(override_settings={"clip_skip_cache_infotext": True, "CLIP_stop_at_last_layers": 3})
        fields = infotext_fields(processing.process_images(p).infotexts[0])
        assert fields["CLIP layer"] == "-3"
        assert "CLIP layer" not in processing.process_images(make_p()).infotexts[0]
        shared.opts.set("clip_skip_cache_infotext", True)
        shared.opts.save()
        shared.opts.load()
        assert shared.opts.clip_skip_cache_infotext is True
        assert infotext_fields(processing.process_images(make_p()).infotexts[0])["CLIP layer"] == "-1"

    def test_derived_state_is_per_thread(self, fake_models, builtins):
        cache = builtins["clip-skip-cache"]
        inside, release, other = threading.Event(), threading.Event(), []

        def hold(p):
            inside.set()
            assert release.wait(10)

        p = make_p(override_settings={"CLIP_stop_at_last_layers": 5})
        p.during = [hold]
        worker = threading.Thread(target=processing.process_images, args=(p,))
        worker.start()
        try:
            assert inside.wait(10)
            other.append(cache.current())  # this thread: no override in effect
        finally:
            release.set()
            worker.join(10)
        assert other == [cache.derive(1)] and p.seen[0]["clip_skip"] == 5


# ---------------------------------------------------------------------------------------------------------------
# A generation inside a generation (as ADetailer does)
# ---------------------------------------------------------------------------------------------------------------

def test_nested_generation_fires_nested_pairs_and_restores(fake_models, builtins, register):
    events = []

    class Trace:
        @hookimpl
        def on_opts_override_enter(self, overrides, p):
            events.append(("enter", sorted(overrides), getattr(p, "name", None)))

        @hookimpl
        def on_opts_override_exit(self, overrides, p):
            events.append(("exit", sorted(overrides), getattr(p, "name", None),
                           shared.opts.CLIP_stop_at_last_layers, shared.opts.eta_noise_seed_delta))

    class Detailer:
        @hookimpl
        def on_postprocess(self, p, processed):
            if getattr(p, "name", None) != "outer":
                return
            inner = make_p(prompt="a face", override_settings={"eta_noise_seed_delta": 9})
            inner.name = "inner"
            result = processing.process_images(inner)
            self.inner_seen = (inner.seen[0]["clip_skip"], [layer["keys"] for layer in inner.seen[0]["stack"]])
            self.inner_infotext = result.infotexts[0]
            processed.images.extend(result.images)

    register(Trace(), "trace")
    detailer = register(Detailer(), "detailer")
    outer = make_p(override_settings={"CLIP_stop_at_last_layers": 2})
    outer.name = "outer"
    processed = processing.process_images(outer)

    assert events == [
        ("enter", ["CLIP_stop_at_last_layers"], "outer"),
        ("enter", ["eta_noise_seed_delta"], "inner"),
        ("exit", ["eta_noise_seed_delta"], "inner", 2, 0),    # back to the outer level
        ("exit", ["CLIP_stop_at_last_layers"], "outer", 1, 0),  # back to stored values
    ]
    assert detailer.inner_seen == (2, [["CLIP_stop_at_last_layers"], ["eta_noise_seed_delta"]])
    inner_fields = infotext_fields(detailer.inner_infotext)
    assert inner_fields["Override settings"] == "CLIP_stop_at_last_layers=2, eta_noise_seed_delta=9"
    assert infotext_fields(processed.infotexts[0])["Override settings"] == "CLIP_stop_at_last_layers=2"
    assert len(processed.images) == 2
    # everything as before
    assert shared.opts.layers() == () and shared.opts.stored() == {}
    assert builtins["override-infotext"].current() == {}
    assert builtins["clip-skip-cache"].current() == builtins["clip-skip-cache"].derive(1)
    assert "Override settings" not in processing.process_images(make_p()).infotexts[0]


# ---------------------------------------------------------------------------------------------------------------
# KeyboardInterrupt / SystemExit raised by a hook inside a generation: a hook failure, never a bare 500
# ---------------------------------------------------------------------------------------------------------------

def interrupting(kind, hooks):
    """A plugin whose ``hooks`` (of enter, exit, process) raise ``kind``; the others record what they saw."""
    seen = []

    class Plugin:
        @hookimpl
        def on_opts_override_enter(self, overrides):
            seen.append(("enter", shared.opts.CLIP_stop_at_last_layers))
            if "enter" in hooks:
                raise kind()

        @hookimpl
        def on_opts_override_exit(self, overrides):
            seen.append(("exit", shared.opts.CLIP_stop_at_last_layers))
            if "exit" in hooks:
                raise kind()

        @hookimpl
        def on_process(self, p):
            seen.append(("process", shared.opts.CLIP_stop_at_last_layers))
            if "process" in hooks:
                raise kind()

    plugin = Plugin()
    plugin.seen = seen
    return plugin


def assert_restored(builtins):
    assert shared.opts.CLIP_stop_at_last_layers == 1 and shared.opts.layers() == () and shared.opts.stored() == {}
    assert active_overrides() == [] and builtins["override-infotext"].current() == {}
    assert builtins["clip-skip-cache"].current() == builtins["clip-skip-cache"].derive(1)


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
def test_interrupt_from_hooks_is_contained_in_a_generation(fake_models, builtins, register, lenient_hooks, kind):
    good = register(interrupting(kind, ()), "good-ext")
    register(interrupting(kind, ("enter", "process", "exit")), "bad-ext")
    processed = processing.process_images(make_p(override_settings={"CLIP_stop_at_last_layers": 2}))
    assert len(processed.images) == 1
    assert [w for w in processed.warnings if "bad-ext" in w] == [
        f"extension 'bad-ext' failed in {hook}: {kind.__name__}"
        for hook in ("on_opts_override_enter", "on_process", "on_opts_override_exit")]
    assert good.seen == [("enter", 2), ("process", 2), ("exit", 1)]
    assert infotext_fields(processed.infotexts[0])["Override settings"] == "CLIP_stop_at_last_layers=2"
    assert_restored(builtins)


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("where", ["enter", "process", "exit"])
def test_interrupt_from_a_hook_fails_a_strict_generation_after_restoring(fake_models, builtins, register, kind,
                                                                          where):
    good = register(interrupting(kind, ()), "good-ext")
    bad = register(interrupting(kind, (where,)), "bad-ext")
    with pytest.raises(plugins.HookError) as info:
        processing.process_images(make_p(override_settings={"CLIP_stop_at_last_layers": 2}))
    hook = "on_process" if where == "process" else f"on_opts_override_{where}"
    assert (info.value.plugin, info.value.hook, type(info.value.__cause__)) == ("bad-ext", hook, kind)
    assert good.seen[-1] == ("exit", 1) and bad.seen[-1] == ("exit", 1)  # every owed exit ran, restored
    assert_restored(builtins)


@pytest.mark.parametrize("strict", [False, True])
def test_api_reports_an_interrupting_hook_by_name(data_dir, fake_models, register, monkeypatch, strict):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules.api.api import Api

    monkeypatch.setattr(plugins.host, "strict", strict)
    monkeypatch.setattr(processing.StableDiffusionProcessing, "sample_batch",
                        lambda p, model, prompts, *rest: [Image.new("RGB", (p.width, p.height))] * len(prompts))
    register(interrupting(KeyboardInterrupt, ("enter",)), "bad-ext")
    app = FastAPI()
    Api(app)
    with TestClient(app) as client:
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64,
                                                    "override_settings": {"CLIP_stop_at_last_layers": 2}})
    message = "extension 'bad-ext' failed in on_opts_override_enter: KeyboardInterrupt"
    if strict:
        assert r.status_code == 500 and r.json()["error"] == "HookError" and r.json()["errors"] == message
    else:
        assert r.status_code == 200 and message in r.json()["info"]
    assert shared.opts.CLIP_stop_at_last_layers == 1 and shared.opts.layers() == ()


# ---------------------------------------------------------------------------------------------------------------
# Code shown in the docs is the code that runs
# ---------------------------------------------------------------------------------------------------------------

# ``<!-- include: path#marker -->`` before a fenced block: the block is the text between ``# -- start marker --``
# and ``# -- end marker --`` in that file (``#whole``: the whole file), as datasette's literalinclude does.
INCLUDE = re.compile(r"<!-- include: (?P<path>[^#\s]+)#(?P<marker>[\w-]+) -->\n```\w*\n(?P<code>.*?)```", re.S)


def included_snippets():
    for doc in sorted((ROOT / "docs" / "extensions").glob("*.md")):
        for match in INCLUDE.finditer(doc.read_text(encoding="utf-8")):
            yield pytest.param(doc.name, match, id=f"{doc.name}:{match['marker']}")


def test_docs_have_included_snippets():
    assert len(list(included_snippets())) >= 3


@pytest.mark.parametrize("doc, match", list(included_snippets()))
def test_docs_snippet_matches_its_source(doc, match):
    source = (ROOT / match["path"]).read_text(encoding="utf-8")
    if match["marker"] == "whole":
        assert match["code"] == source, f"docs/extensions/{doc}: the copy of {match['path']} is out of date"
        return
    snippet = re.search(rf"^[ \t]*# -- start {match['marker']} --\n(.*?)^[ \t]*# -- end {match['marker']} --", source,
                        re.S | re.M)
    assert snippet is not None, f"{match['path']} has no '# -- start {match['marker']} --' ... '# -- end' markers"
    assert match["code"] == snippet.group(1), (
        f"docs/extensions/{doc}: the block after <!-- include: {match['path']}#{match['marker']} --> differs from "
        f"the source; copy it again")


def test_writing_md_reference_lists_every_public_name():
    from modules import extensions_api
    text = (ROOT / "docs" / "extensions" / "writing.md").read_text(encoding="utf-8")
    section = re.split(r"## \d+\. Reference: `modules.extensions_api`", text, maxsplit=1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(\w+)` \|", section, re.M)
    assert sorted(listed) == sorted(extensions_api.__all__) and len(listed) == len(set(listed)), (
        "docs/extensions/writing.md's reference section must list exactly modules.extensions_api.__all__")
