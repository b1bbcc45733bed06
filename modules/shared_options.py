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
    # A1111 1.10 keeps tiling as a setting; a request's own ``tiling`` wins over it (modules.tiling).
    "tiling": OptionInfo(False, "Tiling", infotext="Tiling").info("produce a tileable picture"),
    "sdxl_clip_l_skip": OptionInfo(False, "Clip skip SDXL").info(
        "apply Clip skip to SDXL's CLIP-L text encoder too; without it, SDXL takes CLIP-L's penultimate layer"),
}))

options_templates.update(options_section(("sdxl", "Stable Diffusion XL", "sd"), {
    "sdxl_crop_top": OptionInfo(0, "crop top coordinate", "Number", {"precision": 0}),
    "sdxl_crop_left": OptionInfo(0, "crop left coordinate", "Number", {"precision": 0}),
    "sdxl_refiner_low_aesthetic_score": OptionInfo(2.5, "SDXL low aesthetic score", "Number").info(
        "used for refiner model negative prompt"),
    "sdxl_refiner_high_aesthetic_score": OptionInfo(6.0, "SDXL high aesthetic score", "Number").info(
        "used for refiner model prompt"),
}))

# Extra networks (<lora:…> tags, modules.extra_networks): the weight of a tag that gives none (A1111's section).
options_templates.update(options_section(("extra_networks", "Extra Networks", "sd"), {
    "extra_networks_default_multiplier": OptionInfo(
        1.0, "Default multiplier for extra networks", "Slider", {"minimum": 0.0, "maximum": 2.0, "step": 0.01}),
    # What the Extra networks panel puts between the prompt and the text of a clicked card.
    "extra_networks_add_text_separator": OptionInfo(" ", "Extra networks separator").info(
        "extra text to add before <...> when adding extra network to prompt"),
}))

options_templates.update(options_section(("img2img", "img2img", "sd"), {
    # Read by inpainting checkpoints only (9-channel UNets): 1 hides the repainted area from the model, 0 shows it.
    "inpainting_mask_weight": OptionInfo(
        1.0, "Inpainting conditioning mask strength", "Slider", {"minimum": 0.0, "maximum": 1.0, "step": 0.01},
        infotext="Conditional mask weight"),
}))

options_templates.update(options_section(("sampler-params", "Sampler parameters", "sd"), {
    "eta_noise_seed_delta": OptionInfo(
        0, "Eta noise seed delta", "Number", {"minimum": 0, "maximum": 2**31 - 1, "precision": 0},
        infotext="ENSD"),
    "randn_source": OptionInfo(
        "CPU", "Random number generator source", "Radio", {"choices": ["CPU", "GPU"]}, infotext="RNG"),
}))

options_templates.update(options_section(("optimizations", "Optimizations", "sd"), {
    # Serena's own (A1111 has no torch.compile); read when a checkpoint loads, so never per request.
    "serena_torch_compile": OptionInfo(
        False, "Compile the UNet with torch.compile when a checkpoint loads (faster sampling on a GPU after a slow "
        "first generation at each size; needs a C++ compiler on the CPU)", restrict_api=True),
}))


def _color(value: str) -> str:
    """A colour PIL reads ("#ffffff", "white"), else ``ValueError``: a request's override must not fail later."""
    from PIL import ImageColor

    try:
        ImageColor.getrgb(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a colour (use #rrggbb)") from None
    return value


# A1111's img2img section, for the options Serena acts on.
options_templates.update(options_section(("img2img", "img2img", "sd"), {
    "initial_noise_multiplier": OptionInfo(
        1.0, "Noise multiplier for img2img", "Slider", {"minimum": 0.0, "maximum": 1.5, "step": 0.001},
        infotext="Noise multiplier"),
    "img2img_background_color": OptionInfo(
        "#ffffff", "With img2img, fill transparent parts of the input image with this color.", "ColorPicker",
        validate=_color),
    "overlay_inpaint": OptionInfo(True, "Overlay original for inpaint").info(
        "when inpainting, overlay the original image over the areas that weren't inpainted."),
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

options_templates.update(options_section(("extra_networks", "Extra Networks", "sd"), {
    "textual_inversion_add_hashes_to_infotext": OptionInfo(True, "Add Textual Inversion hashes to infotext"),
}))

options_templates.update(options_section(("ui", "User interface", "ui"), {
    "send_seed": OptionInfo(True, "Send seed when sending prompt or image to other interface"),
}))

options_templates.update(options_section(("infotext", "Infotext", "ui"), {
    "infotext_styles": OptionInfo(
        "Apply if any", "Infer styles from prompts of pasted infotext", "Radio",
        {"choices": ["Ignore", "Apply", "Discard", "Apply if any"]}).info(
        "when reading generation parameters from text: Ignore keeps the prompt; Apply removes the styles' text "
        "and selects the styles found; Discard only removes their text; Apply if any selects them when some are "
        "found"),
}))

options_templates.update(options_section((None, "Hidden options"), {
    "disabled_extensions": OptionInfo([], "Disable these extensions"),
    "disable_all_extensions": OptionInfo(
        "none", "Disable all extensions (preserves the list of disabled extensions)", "Radio",
        {"choices": ["none", "extra", "all"]}),
}))

# Request limits of the HTTP API, as options so a server owner can raise them in config.json or the settings page.
# restrict_api: a client must not lift its own limits through POST /options or override_settings.
options_templates.update(options_section(("api", "API"), {
    "api_max_width": OptionInfo(2048, "Largest width an API request may ask for", "Number",
                                {"minimum": 64, "maximum": 16384, "precision": 0}, restrict_api=True),
    "api_max_height": OptionInfo(2048, "Largest height an API request may ask for", "Number",
                                 {"minimum": 64, "maximum": 16384, "precision": 0}, restrict_api=True),
    "api_max_steps": OptionInfo(150, "Most sampling steps an API request may ask for", "Number",
                                {"minimum": 1, "maximum": 10000, "precision": 0}, restrict_api=True),
    "api_max_images": OptionInfo(16, "Most images (batch_size x n_iter) one API request may ask for", "Number",
                                 {"minimum": 1, "maximum": 10000, "precision": 0}, restrict_api=True),
    "api_max_infotext_chars": OptionInfo(65536, "Longest infotext (request field or PNG parameters) the API reads",
                                         "Number", {"minimum": 1024, "maximum": 10_000_000, "precision": 0},
                                         restrict_api=True),
    "api_max_prompt_chars": OptionInfo(20000, "Longest prompt (each prompt field) an API request may send", "Number",
                                       {"minimum": 1000, "maximum": 10_000_000, "precision": 0}, restrict_api=True),
    "api_max_input_images": OptionInfo(16, "Most images one API request may send (init_images, imageList)",
                                       "Number", {"minimum": 1, "maximum": 10000, "precision": 0}, restrict_api=True),
    "api_max_input_pixels": OptionInfo(64 * 1024 * 1024, "Most pixels of all the images one API request sends, "
                                       "together", "Number", {"minimum": 1024 * 1024, "maximum": 2**40,
                                                              "precision": 0}, restrict_api=True),
    # Extras can turn 16 small images into 16 of 8192 x 8192: half a minute of Lanczos on a CPU, 4 GB of memory.
    "api_max_output_pixels": OptionInfo(64 * 1024 * 1024, "Most pixels of all the images one extras request "
                                        "produces, together", "Number", {"minimum": 1024 * 1024, "maximum": 2**40,
                                                                         "precision": 0}, restrict_api=True),
    "api_max_request_bytes": OptionInfo(128 * 1024 * 1024, "Largest API request body, in bytes", "Number",
                                        {"minimum": 1024 * 1024, "maximum": 2**40, "precision": 0},
                                        restrict_api=True),
    # A million wrongly typed list items are a million validation errors: seconds and a gigabyte for a 2 MB body.
    "api_max_json_values": OptionInfo(200_000, "Most JSON values (numbers, strings, lists, objects) in one API "
                                      "request body", "Number", {"minimum": 1000, "maximum": 2**40, "precision": 0},
                                      restrict_api=True),
}))
