"""The core options, by section. Extensions add theirs with ``opts.add_option`` in ``on_ui_settings``."""

from __future__ import annotations

from modules.option_info import OptionInfo, options_section


def _checkpoint_title(value):
    # Imported late: the checkpoint list is only needed when a value is checked.
    from modules import sd_models
    info = sd_models.resolve_checkpoint(value)
    sd_models.model_manager.facts(info)  # a file that cannot load is refused by name before it is chosen
    return info.title


def _vae_name(value):
    from modules import sd_models, sd_vae
    name = sd_vae.resolve_vae_name(value)
    if name not in sd_vae.SPECIAL:
        sd_models.model_manager.vae_facts(sd_vae.vae_path(name))
    return name


# Model-dependent checks (``check_with``): a value is checked against the checkpoint it would run with — the one
# in the same request or settings change, else the effective one. A stored value that a checkpoint chosen later
# cannot honour is not an error: the generation fits it to the model with a warning (``processing``).

def _model_of(values):
    from modules import sd_models
    if "sd_model_checkpoint" not in values:  # rejected in the same check: that error is the one to report
        return None
    return sd_models.checkpoint_facts(values["sd_model_checkpoint"])


def _clip_skip_fits(value, values):
    from modules import sd_models
    found = _model_of(values)
    problem = found and sd_models.clip_skip_problem(value, *found)
    if problem:
        raise ValueError(problem)
    return value


def _vae_fits(value, values):
    from modules import sd_models, sd_vae
    found = _model_of(values)
    if found is None or value in sd_vae.SPECIAL:
        return value
    vae_facts = sd_models.model_manager.vae_facts(sd_vae.vae_path(value))
    problem = vae_facts and sd_models.vae_problem(value, vae_facts, *found)
    if problem:
        raise ValueError(problem)
    return value


def _checkpoint_titles():
    from modules import sd_models
    return [c.title for c in sd_models.list_checkpoints()]


def _vae_choices():
    from modules import sd_vae
    return sd_vae.vae_choices()


options_templates: dict[str, OptionInfo] = {}

options_templates.update(options_section(("sd", "Stable Diffusion", "sd"), {
    "sd_model_checkpoint": OptionInfo(
        None, "Stable Diffusion checkpoint", "Dropdown", lambda: {"choices": _checkpoint_titles()},
        infotext="Model hash", validate=_checkpoint_title, type=str, choices=_checkpoint_titles),
    "sd_checkpoints_limit": OptionInfo(
        1, "Maximum number of checkpoints loaded at the same time", "Slider",
        {"minimum": 1, "maximum": 10, "step": 1}),
    "sd_vae": OptionInfo(
        "Automatic", "SD VAE", "Dropdown", lambda: {"choices": _vae_choices()},
        infotext="VAE", validate=_vae_name, choices=_vae_choices, check_with=_vae_fits),
    "CLIP_stop_at_last_layers": OptionInfo(
        1, "Clip skip", "Slider", {"minimum": 1, "maximum": 12, "step": 1}, infotext="Clip skip",
        check_with=_clip_skip_fits),
}))

options_templates.update(options_section(("sampler-params", "Sampler parameters", "sd"), {
    "eta_noise_seed_delta": OptionInfo(
        0, "Eta noise seed delta", "Number", {"minimum": 0, "maximum": 2**31 - 1, "precision": 0},
        infotext="ENSD"),
    "randn_source": OptionInfo(
        "CPU", "Random number generator source", "Radio", {"choices": ["CPU", "GPU"]}, infotext="RNG"),
}))

options_templates.update(options_section(("saving-images", "Saving images/grids", "saving"), {
    "samples_save": OptionInfo(True, "Always save all generated images"),
    "samples_format": OptionInfo("png", "File format for images", "Radio", {"choices": ["png", "jpg", "webp"]}),
    "add_model_hash_to_info": OptionInfo(True, "Add model hash to generation information"),
    "add_model_name_to_info": OptionInfo(True, "Add model name to generation information"),
}))

# Output folders are restrict_api: file-system paths come from the user's own settings, never from requests.
options_templates.update(options_section(("saving-paths", "Paths for saving", "saving"), {
    "outdir_samples": OptionInfo(
        "", "Output directory for images; if empty, defaults to the three directories below", restrict_api=True),
    "outdir_txt2img_samples": OptionInfo(
        "outputs/txt2img-images", "Output directory for txt2img images", restrict_api=True),
    "outdir_img2img_samples": OptionInfo(
        "outputs/img2img-images", "Output directory for img2img images", restrict_api=True),
}))

options_templates.update(options_section(("ui", "User interface", "ui"), {
    "send_seed": OptionInfo(True, "Send seed when sending prompt or image to other interface"),
}))

options_templates.update(options_section((None, "Hidden options"), {
    "disabled_extensions": OptionInfo([], "Disable these extensions"),
    "disable_all_extensions": OptionInfo(
        "none", "Disable all extensions (preserves the list of disabled extensions)", "Radio",
        {"choices": ["none", "extra", "all"]}),
}))
