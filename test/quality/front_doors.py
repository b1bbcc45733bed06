"""One txt2img request through the CLI (``cli.run_txt2img`` on parsed flags) and through the UI's Generate handler
(``generation.run_generation``, no browser), in-process, for tests that check a checkpoint runs at every door."""

from __future__ import annotations

import io

from PIL import Image

from ui_form import form_values

PROMPT, SEED, CFG = "a red circle", 5, 7  # 64x64, 2 Euler steps: ui_form's request


def through_cli(out_dir, checkpoint: str) -> tuple[bytes, str]:
    """``(pixels, infotext)`` of the image ``--txt2img`` writes with ``--override sd_model_checkpoint=...``."""
    from modules import cli, cmd_args
    argv = ["--txt2img", PROMPT, "--steps", "2", "--seed", str(SEED), "--sampler", "Euler", "--cfg-scale", str(CFG),
            "--width", "64", "--height", "64", "--override", f"sd_model_checkpoint={checkpoint}", "--out", str(out_dir)]
    printed = io.StringIO()
    assert cli.run_txt2img(cmd_args.parse_args(argv), out=printed) == 0
    [path] = printed.getvalue().split()
    with Image.open(path) as image:
        return image.tobytes(), image.info["parameters"]


def through_ui(checkpoint: str) -> tuple[bytes, str]:
    """``(pixels, infotext)`` of the image the txt2img tab's Generate shows, the checkpoint an override entry."""
    from modules.ui import generation, txt2img
    values = form_values(prompt=PROMPT, seed=SEED, cfg_scale=CFG, override_settings=[f"Model hash: {checkpoint}"])
    *_, last = generation.run_generation(txt2img.make_p, ("session", "txt2img"), "txt2img", [], values)
    [image] = last[0]
    return image.tobytes(), last[1]


def assert_cli_and_ui_agree(out_dir, checkpoint: str, disk_loads: list) -> None:
    """The CLI and the UI give the same 64x64 image of ``checkpoint``, named in both infotexts, from one disk load."""
    cli_pixels, cli_info = through_cli(out_dir, checkpoint)
    ui_pixels, ui_info = through_ui(checkpoint)
    assert cli_pixels == ui_pixels and len(cli_pixels) == 64 * 64 * 3
    assert f"Model: {checkpoint}" in cli_info and f"Model: {checkpoint}" in ui_info
    assert disk_loads.count(f"{checkpoint}.safetensors") == 1
