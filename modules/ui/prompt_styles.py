"""The styles row of the txt2img and img2img prompt area (A1111's): a multi-select of the styles files' styles, a
refresh button (the files may have been edited) and "apply styles", which writes the selected styles' text into
the prompt boxes and clears the selection, so the styles can be edited as text."""

from __future__ import annotations

import gradio as gr

from modules import styles

REFRESH_SYMBOL = "\U0001f504"  # 🔄, as A1111
APPLY_SYMBOL = "\U0001f4cb"    # 📋, as A1111


def names() -> list[str]:
    return list(styles.database().styles)


def apply_to_prompts(prompt: str, negative_prompt: str, selected: list | None):
    """The prompts with ``selected`` applied, and an empty selection (their text is in the prompts now)."""
    db = styles.database()
    selected = [name for name in selected or [] if name in db.styles]
    return db.apply_to_prompt(prompt or "", selected), db.apply_to_negative_prompt(negative_prompt or "", selected), []


def build(form) -> None:
    """The row under the prompts; ``form.styles`` is the multi-select whose value each generation uses."""
    t = form.tab
    with gr.Row(equal_height=True):
        form.styles = gr.Dropdown(label="Styles", choices=names(), value=[], multiselect=True, scale=4,
                                  elem_id=f"{t}_styles", info="From styles.csv; applied to both prompts, in order")
        refresh = gr.Button(REFRESH_SYMBOL, elem_id=f"{t}_styles_refresh", size="sm", scale=0, min_width=48)
        apply = gr.Button(APPLY_SYMBOL, elem_id=f"{t}_styles_apply", size="sm", scale=0, min_width=48)
    refresh.click(lambda: gr.update(choices=names()), outputs=[form.styles], queue=False,
                  api_visibility="undocumented", show_progress="hidden")
    apply.click(apply_to_prompts, inputs=[form.prompt, form.negative_prompt, form.styles],
                outputs=[form.prompt, form.negative_prompt, form.styles], queue=False, api_visibility="undocumented",
                show_progress="hidden")
