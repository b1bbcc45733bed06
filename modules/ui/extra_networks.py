"""The Extra networks panel of txt2img and img2img (A1111's 🎴): a tab per page of ``extra_networks_cards``, each a
gallery of cards (preview and name), a search box and a refresh button.

A click on a card is a gallery ``select`` event handled on the server: ``extra_networks_cards.toggle`` adds the
card's text to the prompt box, or takes it out if it is there (A1111's click). The cards shown are kept in a
``gr.State`` per page, so the clicked index always means the card the user saw, whatever the search. Previews
are read by the server as thumbnails (``extra_networks_cards.preview_file``: only images inside the page's
folders) and handed to gradio as images, never as paths.
"""

from __future__ import annotations

import functools
import os

import gradio as gr

from modules import extra_networks_cards

THUMBNAIL = 256  # px, the longer side
SYMBOL = "\U0001f3b4"  # 🎴, A1111's button

_thumbnails: dict[tuple, object] = {}  # (path, mtime, size) -> PIL image


def thumbnail(path: str | None):
    """A card's picture: its preview scaled down (cached per file version), else a plain grey card (the caption
    names it)."""
    from PIL import Image

    if path:
        try:
            st = os.stat(path)
            key = (path, st.st_mtime_ns, st.st_size)
            if key not in _thumbnails:
                with Image.open(path) as image:
                    image.thumbnail((THUMBNAIL, THUMBNAIL))
                    _thumbnails[key] = image.convert("RGB")
            return _thumbnails[key]
        except (OSError, ValueError):
            pass  # an unreadable preview: the card without one
    return Image.new("RGB", (THUMBNAIL, THUMBNAIL), (72, 72, 80))


def gallery_value(page: extra_networks_cards.Page, cards) -> list:
    return [(thumbnail(extra_networks_cards.preview_file(card, page.folders)), card.name)
            for card in cards]


def clicked(prompt: str, shown: list, evt: gr.SelectData):
    """A card's click: its text toggled in the prompt."""
    index = evt.index if isinstance(evt.index, int) else -1
    if not 0 <= index < len(shown):
        return gr.skip()
    return extra_networks_cards.toggle(prompt, shown[index])


def create_panel(tab: str, toggle_button, prompt):
    """The hidden panel (shown by ``toggle_button``) whose card clicks edit ``prompt``; returns its column."""
    pages = extra_networks_cards.pages()
    with gr.Column(visible=False, elem_id=f"{tab}_extra_networks") as panel:
        with gr.Row(equal_height=True):
            search = gr.Textbox(label="Search", placeholder="Search...", elem_id=f"{tab}_extra_search", scale=6,
                                max_lines=1)
            refresh = gr.Button("Refresh", elem_id=f"{tab}_extra_refresh", size="sm", scale=1, min_width=80)
        galleries, states = [], []
        with gr.Tabs(elem_id=f"{tab}_extra_tabs"):
            for page in pages:
                with gr.Tab(page.title, id=f"{tab}_extra_{page.id}", elem_id=f"{tab}_extra_tab_{page.id}"):
                    gallery = gr.Gallery(value=gallery_value(page, page.cards), label=page.title, show_label=False,
                                         elem_id=f"{tab}_extra_{page.id}_cards", columns=8, fit_columns=False,
                                         height=320, object_fit="contain", allow_preview=False,
                                         interactive=False)
                    shown = gr.State([card.prompt for card in page.cards])
                    gallery.select(clicked, inputs=[prompt, shown], outputs=[prompt], queue=False,
                                   api_visibility="undocumented", show_progress="hidden")
                galleries.append(gallery)
                states.append(shown)
    ids = [page.id for page in pages]

    def update(text: str, rescan: bool = False):
        """Every page's gallery and shown cards, listed again (after a rescan for Refresh) and searched."""
        if rescan:
            extra_networks_cards.refresh()
        listed = {page.id: page for page in extra_networks_cards.pages()}
        values, prompts = [], []
        for page_id in ids:
            page = listed.get(page_id)
            cards = extra_networks_cards.search(page.cards, text) if page else []
            values.append(gallery_value(page, cards) if page else [])
            prompts.append([card.prompt for card in cards])
        return values + prompts

    io = dict(inputs=[search], outputs=galleries + states, api_visibility="undocumented", show_progress="hidden")
    search.change(update, **io)
    refresh.click(functools.partial(update, rescan=True), **io)
    visible = gr.State(False)
    toggle_button.click(lambda shown: (not shown, gr.update(visible=not shown)), inputs=[visible],
                        outputs=[visible, panel], queue=False, api_visibility="undocumented", show_progress="hidden")
    return panel
