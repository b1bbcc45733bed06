"""The core options, by section. Extensions add theirs with ``opts.add_option`` in ``on_ui_settings``.

The options layer knows no models: the checkpoint and VAE choices, and the checks of a value against the model it
would run with, are attached by the model layer at start-up (``modules.model_options.attach``).
"""

from __future__ import annotations

from modules.option_info import OptionInfo, options_section

options_templates: dict[str, OptionInfo] = {}

options_templates.update(options_section(("sd", "Stable Diffusion", "sd"), {
    "sd_model_checkpoint": OptionInfo(None, "Stable Diffusion checkpoint", "Dropdown", infotext="Model hash", type=str),
    "sd_checkpoints_limit": OptionInfo(
        1, "Maximum number of checkpoints loaded at the same time", "Slider",
        {"minimum": 1, "maximum": 10, "step": 1}),
    "sd_vae": OptionInfo("Automatic", "SD VAE", "Dropdown", infotext="VAE"),
    "CLIP_stop_at_last_layers": OptionInfo(
        1, "Clip skip", "Slider", {"minimum": 1, "maximum": 12, "step": 1}, infotext="Clip skip"),
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
