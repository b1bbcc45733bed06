"""The parts txt2img and img2img share: the parameter form, the output panel, and the Generate/paste events.

``build_form`` lays out A1111's controls with A1111's defaults (sampler "Euler a", 20 steps, CFG 7, seed -1,
batch 1x1) and the starting checkpoint's size and CFG scale (``sd_models.checkpoint_defaults``). ``wire`` connects
the buttons; the tab module supplies ``make_p(extra, values) -> processing object``, built and checked by the
preparation the API and the CLI share (``request_preparation.build_processing``), and any extra inputs (img2img's
images). A generation that fails those checks is refused before it queues, with the API's message.

The Script dropdown ("None" plus the tab's selectable scripts) shows the chosen script's controls, built from its
``ScriptArg`` schema: every script's controls are created once, in a group made visible when it is chosen, and its
values reach the preparation by position, as the API's ``script_args`` do (``scripts.select`` checks both alike).
"""

from __future__ import annotations

import functools
import html
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from modules.ui import common, extra_networks, paste, progress, prompt_styles

# Component order of the form values passed to ``make_p`` (after the tab's own extra inputs).
FORM_VALUE_NAMES = ("prompt", "negative_prompt", "sampler", "scheduler", "steps", "cfg_scale", "width", "height",
                    "seed", "batch_count", "batch_size", "denoising_strength", "override_settings", "styles",
                    "tiling")


@dataclass
class GenerationForm:
    tab: str
    prompt: Any = None
    negative_prompt: Any = None
    paste: Any = None
    extra_networks: Any = None      # the Extra networks panel (modules.ui.extra_networks)
    generate: Any = None
    interrupt: Any = None
    skip: Any = None
    sampler: Any = None
    scheduler: Any = None
    steps: Any = None
    cfg_scale: Any = None
    width: Any = None
    height: Any = None
    seed: Any = None
    random_seed: Any = None
    reuse_seed: Any = None
    batch_count: Any = None
    batch_size: Any = None
    denoising_strength: Any = None
    # img2img's inpaint controls (None in txt2img)
    mask_blur: Any = None
    inpainting_mask_invert: Any = None
    inpainting_fill: Any = None
    inpaint_full_res: Any = None
    inpaint_full_res_padding: Any = None
    override_settings: Any = None
    styles: Any = None
    tiling: Any = None
    progress: Any = None
    gallery: Any = None
    info: Any = None
    gen_info: Any = None
    selected: Any = None
    extra_inputs: list = field(default_factory=list)
    init_image: Any = None          # img2img only: where "Send to img2img" puts the image
    mode_tabs_state: Any = None     # img2img only: the selected input mode
    mode_tabs: Any = None           # img2img only: the input mode sub-tabs
    script: Any = None              # the Script dropdown
    script_controls: list = field(default_factory=list)  # [(title, [component per ScriptArg])]
    # The tab's own controls a paste fills too (txt2img's Hires fix section), and their values from an infotext.
    paste_extra: list = field(default_factory=list)
    paste_extra_values: Callable[[str], list] | None = None

    def values(self) -> list:
        return [getattr(self, name) for name in FORM_VALUE_NAMES]

    def pasted_components(self) -> list[str]:
        """The form's components a paste fills, in ``paste.FORM_FIELDS`` order (img2img has the inpaint ones)."""
        return [component for _, _, component in paste.FORM_FIELDS if getattr(self, component) is not None]

    def paste_targets(self) -> list:
        """Components a paste fills (``pasted_components``), then the styles, the override field and the tab's own
        (``paste_extra``)."""
        return [getattr(self, component) for component in self.pasted_components()] + [
            self.styles, self.override_settings, *self.paste_extra]


def build_prompt_row(form: GenerationForm):
    t = form.tab
    with gr.Row(elem_id=f"{t}_toprow", equal_height=False):
        with gr.Column(scale=6, min_width=300):
            form.prompt = gr.Textbox(label="Prompt", elem_id=f"{t}_prompt", lines=3, max_lines=12,
                                     placeholder="Prompt (paste generation parameters here and press "
                                                 f"{common.PASTE_SYMBOL} to fill every field)")
            form.negative_prompt = gr.Textbox(label="Negative prompt", elem_id=f"{t}_neg_prompt", lines=2,
                                              max_lines=12, placeholder="Negative prompt")
            prompt_styles.build(form)
        with gr.Column(scale=1, min_width=180):
            form.generate = gr.Button("Generate", variant="primary", elem_id=f"{t}_generate", size="lg")
            with gr.Row():
                form.interrupt = gr.Button("Interrupt", elem_id=f"{t}_interrupt", size="sm", min_width=60)
                form.skip = gr.Button("Skip", elem_id=f"{t}_skip", size="sm", min_width=60)
            form.paste = gr.Button(f"{common.PASTE_SYMBOL} Read parameters from prompt", size="sm",
                                   elem_id=f"{t}_paste")
            show_networks = gr.Button(f"{extra_networks.SYMBOL} Extra networks", size="sm",
                                      elem_id=f"{t}_extra_networks_button")
    form.extra_networks = extra_networks.create_panel(t, show_networks, form.prompt)


def build_parameters(form: GenerationForm, *, img2img: bool = False):
    """Sampler, size, batch, CFG, (denoising), seed and the override field, in A1111's order."""
    from modules import sd_models

    t = form.tab
    samplers = common.sampler_names()
    schedulers = common.scheduler_labels()
    defaults = sd_models.checkpoint_defaults()
    size = defaults.size
    with gr.Row():
        form.sampler = gr.Dropdown(label="Sampling method", choices=samplers, elem_id=f"{t}_sampling",
                                   value="Euler a" if "Euler a" in samplers else (samplers[0] if samplers else None))
        form.scheduler = gr.Dropdown(label="Schedule type", choices=schedulers, elem_id=f"{t}_scheduler",
                                     value="Automatic" if "Automatic" in schedulers else
                                     (schedulers[0] if schedulers else None))
        form.steps = gr.Slider(minimum=1, maximum=150, step=1, value=20, precision=0, label="Sampling steps",
                               elem_id=f"{t}_steps")
    with gr.Row():
        with gr.Column(scale=3):
            form.width = gr.Slider(minimum=64 if size >= 64 else 8, maximum=2048, step=8, value=size, precision=0,
                                   label="Width", elem_id=f"{t}_width")
            form.height = gr.Slider(minimum=64 if size >= 64 else 8, maximum=2048, step=8, value=size, precision=0,
                                    label="Height", elem_id=f"{t}_height")
        with gr.Column(scale=1, min_width=120):
            form.batch_count = gr.Slider(minimum=1, maximum=100, step=1, value=1, precision=0, label="Batch count",
                                         elem_id=f"{t}_batch_count")
            form.batch_size = gr.Slider(minimum=1, maximum=8, step=1, value=1, precision=0, label="Batch size",
                                        elem_id=f"{t}_batch_size")
    form.cfg_scale = gr.Slider(minimum=1.0, maximum=30.0, step=0.5, value=defaults.cfg_scale, label="CFG Scale",
                               elem_id=f"{t}_cfg_scale")
    # Unticked leaves the "tiling" setting to decide, as a request without `tiling` does
    form.tiling = gr.Checkbox(label="Tiling", value=False, elem_id=f"{t}_tiling",
                              info="A seamless image: its edges wrap around")
    form.denoising_strength = gr.Slider(minimum=0.0, maximum=1.0, step=0.01, value=0.75, visible=img2img,
                                        label="Denoising strength", elem_id=f"{t}_denoising_strength")
    with gr.Row(equal_height=True):
        form.seed = gr.Number(label="Seed (-1: random)", value=-1, precision=0, elem_id=f"{t}_seed", scale=4)
        form.random_seed = gr.Button(common.RANDOM_SYMBOL, elem_id=f"{t}_random_seed", size="sm", scale=0,
                                     min_width=48)
        form.reuse_seed = gr.Button(common.REUSE_SYMBOL, elem_id=f"{t}_reuse_seed", size="sm", scale=0,
                                    min_width=48)
    form.override_settings = gr.Dropdown(
        label="Override settings", choices=[], value=[], multiselect=True, allow_custom_value=True, visible=False,
        elem_id=f"{t}_override_settings",
        info="From pasted parameters; used for the next generations only (remove an entry with its \u00d7)")
    build_scripts(form)


def script_control(arg, elem_id: str):
    """The gradio component for one ``ScriptArg``, with its label, default, bounds and choices."""
    common = dict(label=arg.label, value=arg.value, elem_id=elem_id)
    if arg.type == "note":
        return gr.HTML(value=f"<p>{html.escape(str(arg.value))}</p>", elem_id=elem_id)
    if arg.type == "bool":
        return gr.Checkbox(**common)
    if arg.index:  # gradio hands ``run`` the position, as A1111's type="index" dropdowns
        return gr.Dropdown(choices=list(arg.choices), type="index", **{**common, "value": arg.choices[arg.value]})
    if arg.type == "list":
        return gr.Dropdown(choices=list(arg.choices or ()), multiselect=True, allow_custom_value=arg.choices is None,
                           **common)
    if arg.choices is not None:
        return (gr.Radio(choices=list(arg.choices), **common) if len(arg.choices) <= 4 else
                gr.Dropdown(choices=list(arg.choices), **common))
    if arg.type == "str":
        return gr.Textbox(lines=arg.lines, max_lines=max(arg.lines, 20), **common)
    if arg.minimum is not None and arg.maximum is not None:
        step = arg.step if arg.step is not None else (1 if arg.type == "int" else 0.01)
        return gr.Slider(minimum=arg.minimum, maximum=arg.maximum, step=step, **common)
    return gr.Number(precision=0 if arg.type == "int" else None, **common)


def build_scripts(form: GenerationForm):
    """The Script dropdown and, per selectable script of the tab, its controls in a group shown when chosen."""
    from modules import scripts

    listed = scripts.available(form.tab, alwayson=False)
    form.script = gr.Dropdown(label="Script", choices=["None"] + [s.title for s in listed], value="None",
                              elem_id=f"{form.tab}_script")
    groups = []
    for number, script in enumerate(listed):
        with gr.Group(visible=False, elem_id=f"{form.tab}_script_{number}") as group:
            controls = [script_control(arg, f"{form.tab}_script_{number}_arg_{i}") for i, arg in enumerate(script.args)]
        groups.append(group)
        form.script_controls.append((script.title, controls))
    if groups:
        form.script.change(functools.partial(visible_groups, [s.title for s in listed]), inputs=[form.script],
                           outputs=groups, queue=False, api_visibility="undocumented", show_progress="hidden")


def visible_groups(titles: list[str], chosen) -> list:
    """The Script dropdown's change: show the chosen script's controls, hide every other script's."""
    return [gr.update(visible=chosen == title) for title in titles]


def script_values(form: GenerationForm, title, control_values: list) -> tuple[str | None, list]:
    """``(script title or None, its arguments by position)`` from the dropdown and every script's control values
    (in ``form.script_controls`` order)."""
    offset = 0
    for script_title, controls in form.script_controls:
        if script_title == title:
            return title, list(control_values[offset:offset + len(controls)])
        offset += len(controls)
    return None, []


def build_outputs(form: GenerationForm):
    t = form.tab
    form.progress = gr.HTML(value="", elem_id=f"{t}_progress", padding=False)
    form.gallery = gr.Gallery(label="Output", format="png", elem_id=f"{t}_gallery", columns=4, height=420,
                              object_fit="contain", interactive=False, buttons=["download", "fullscreen"])
    form.info = gr.Textbox(label="Generation info", elem_id=f"{t}_info", lines=4, max_lines=12, interactive=False,
                           buttons=["copy"], placeholder="The parameters of the selected image appear here")
    form.gen_info = gr.State(None)
    form.selected = gr.State(0)


def as_int(value, default):
    """A form number as an int (gradio may hand floats for integer sliders); ``default`` when it is empty."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def common_p_kwargs(values: dict) -> dict:
    """Processing fields from the form values (types fixed: gradio may hand floats for integer sliders); an empty
    size or CFG scale is the default of the checkpoint the generation runs on, as in the API."""
    from modules import sd_models

    override_settings = paste.overrides_from_entries(values["override_settings"])
    defaults = sd_models.checkpoint_defaults(override_settings)
    return dict(
        scripts=_scripts_for(values),
        prompt=values["prompt"] or "",
        negative_prompt=values["negative_prompt"] or "",
        sampler_name=values["sampler"] or "Euler a",
        scheduler=values["scheduler"] or "Automatic",
        steps=as_int(values["steps"], 20),
        cfg_scale=float(values["cfg_scale"] if values["cfg_scale"] is not None else defaults.cfg_scale),
        width=as_int(values["width"], defaults.size),
        height=as_int(values["height"], defaults.size),
        seed=as_int(values["seed"], -1),
        n_iter=max(1, as_int(values["batch_count"], 1)),
        batch_size=max(1, as_int(values["batch_size"], 1)),
        override_settings=override_settings,
        styles=list(values.get("styles") or []),
        tiling=True if values.get("tiling") else None,
    )


def _scripts_for(values: dict):
    """The scripts of the form's ``script`` value, ``(tab, title, args)``, checked as the API checks them."""
    from modules import request_preparation, scripts

    tab, title, args = values.get("script") or ("txt2img", None, [])
    run, problems = scripts.select(tab, title, args)
    if problems:
        raise request_preparation.RequestFieldError(problems)
    return run


def _preview_for(image, width, height):
    try:
        return image.resize((int(width), int(height)))
    except (AttributeError, TypeError, ValueError):
        return image


def run_generation(make_p: Callable, key: tuple, run_name: str, extra: list, values: dict):
    """Generate's events for the outputs ``(gallery, info, gen_info, progress, selected)``: previews while the job
    runs, then the images. A processing object that ``make_p`` refuses (``ValueError``: an unknown sampler, a bad
    override...) is shown as the error and never queues."""
    try:
        p = make_p(extra, values)
    except ValueError as e:
        yield gr.skip(), gr.skip(), gr.skip(), common.status_html(f"Error: {e}", "error"), gr.skip()
        return
    stream = progress.run_streaming(key, run_name, p, job_count=p.n_iter)
    while True:
        try:
            tick = next(stream)
        except StopIteration as stop:
            job = stop.value
            break
        gallery = [_preview_for(tick.preview, p.width, p.height)] if tick.preview is not None else gr.skip()
        yield gallery, gr.skip(), gr.skip(), tick.html, gr.skip()
    processed = job.result
    if job.error is not None or processed is None:
        yield gr.skip(), gr.skip(), gr.skip(), progress.finished_html(job, 0), gr.skip()
        return
    gen_info = json.loads(processed.js())
    info = processed.infotexts[0] if processed.infotexts else ""
    yield (list(processed.images), info, gen_info,
           progress.finished_html(job, len(processed.images), processed.warnings), 0)


def wire(form: GenerationForm, make_p: Callable, *, run_name: str):
    """Connect Generate, Interrupt, Skip, seed buttons, paste and gallery selection for one tab."""
    tab = form.tab
    controls = [c for _, group in form.script_controls for c in group]
    inputs = list(form.extra_inputs) + form.values() + [form.script] + controls
    n_extra, n_form = len(form.extra_inputs), len(FORM_VALUE_NAMES)
    outputs = [form.gallery, form.info, form.gen_info, form.progress, form.selected]

    def generate(request: gr.Request, *args):
        values = dict(zip(FORM_VALUE_NAMES, args[n_extra:n_extra + n_form]))
        title, script_args = script_values(form, args[n_extra + n_form], list(args[n_extra + n_form + 1:]))
        values["script"] = (tab, title, script_args)
        yield from run_generation(make_p, progress.session_key(request, tab), run_name, list(args[:n_extra]), values)

    form.generate.click(generate, inputs=inputs, outputs=outputs, show_progress="hidden",
                        concurrency_limit=8, concurrency_id="serena_generate", api_visibility="undocumented")

    def do_interrupt(request: gr.Request):
        progress.interrupt(progress.session_key(request, tab))

    def do_skip(request: gr.Request):
        progress.skip(progress.session_key(request, tab))

    # Not queued: they must reach the server while Generate is still streaming. No outputs: the progress bar
    # of the running generation says "interrupting"/"skipping" on its next update, and its end says what
    # happened, so no second writer races the generation for the same element.
    form.interrupt.click(do_interrupt, queue=False, api_visibility="undocumented", show_progress="hidden")
    form.skip.click(do_skip, queue=False, api_visibility="undocumented", show_progress="hidden")

    form.random_seed.click(lambda: -1, outputs=[form.seed], queue=False, api_visibility="undocumented",
                           show_progress="hidden")
    form.reuse_seed.click(common.seed_from_generation, inputs=[form.gen_info, form.selected], outputs=[form.seed],
                          queue=False, api_visibility="undocumented", show_progress="hidden")

    def on_select(gen_info, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        texts = (gen_info or {}).get("infotexts") or []
        return (texts[index] if 0 <= index < len(texts) else gr.skip()), index

    form.gallery.select(on_select, inputs=[form.gen_info], outputs=[form.info, form.selected], queue=False,
                        api_visibility="undocumented", show_progress="hidden")

    form.override_settings.change(lambda v: gr.update(visible=bool(v)), inputs=[form.override_settings],
                                  outputs=[form.override_settings], queue=False, api_visibility="undocumented",
                                  show_progress="hidden")

    def paste_from_prompt(prompt):
        if not paste.looks_like_infotext(prompt):
            return [gr.skip()] * len(form.paste_targets()) + [
                common.status_html("The prompt box holds no generation parameters (no 'Steps:' line)", "warn")]
        values, status = paste_updates(form, prompt)
        return values + [status]

    form.paste.click(paste_from_prompt, inputs=[form.prompt], outputs=form.paste_targets() + [form.progress],
                     api_visibility="undocumented", show_progress="hidden")


def paste_updates(form: GenerationForm, text: str, *, with_seed: bool = True) -> tuple[list, str]:
    """Values for ``form.paste_targets()`` from an infotext (fields it names are set, others left as they are),
    and a status line that names what could not be applied."""
    pasted = paste.from_infotext(text, mode="img2img" if form.tab == "img2img" else "txt2img")
    if not with_seed:
        pasted.fields.pop("seed", None)
    out = []
    for component in form.pasted_components():
        out.append(pasted.fields[component] if component in pasted.fields else gr.skip())
    out.append(pasted.styles if pasted.styles is not None else gr.skip())
    out.append(gr.update(choices=pasted.overrides, value=pasted.overrides, visible=bool(pasted.overrides)))
    if form.paste_extra:
        try:
            out.extend(form.paste_extra_values(text))
        except ValueError as e:  # the form's fields are pasted; what the tab's own controls could not read is said
            out.extend([gr.skip()] * len(form.paste_extra))
            pasted.rejected.append(str(e))
    text = f"Pasted {len(pasted.fields)} fields"
    if pasted.overrides:
        text += f" and {len(pasted.overrides)} setting override{'s' if len(pasted.overrides) != 1 else ''}"
    status = common.status_html(text, "ok")
    status += common.message_list_html("Not applied", pasted.rejected, "warn")
    return out, status
