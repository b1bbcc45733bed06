"""SDXL's prompt conditioning, as A1111 computes it (``sd_models_xl.get_learned_conditioning`` and the SDXL text
embedders of ``sd_hijack_clip``):

* the prompt is parsed and cut into windows of 75 tokens once (A1111's syntax: weights, editing, alternation,
  ``BREAK``), and every window goes through both text encoders: CLIP ViT-L pads with its end token, bigG with
  ``!`` (id 0), as open_clip does;
* each encoder gives its penultimate layer's hidden states, unnormalised; with the ``sdxl_clip_l_skip`` option,
  CLIP-L's layer is chosen by Clip skip instead (bigG always gives its penultimate);
* the attention weights multiply each encoder's states, which are then scaled back to their unweighted mean (per
  encoder, as A1111 hijacks each one on its own), and the two are concatenated: 768 + 1280 = 2048 wide for SDXL
  base; the refiner has bigG alone;
* the pooled bigG embedding (its projected end-token state) of the first window is the UNet's ``text_embeds``;
* the micro-conditioning ``time_ids``: ``original_size`` and ``target_size`` are the image's (height, width), the
  crop is the ``sdxl_crop_top``/``sdxl_crop_left`` options; the refiner takes an aesthetic score instead of the
  target size: ``sdxl_refiner_high_aesthetic_score`` for prompts, ``..._low_...`` for negative prompts;
* an empty negative prompt conditions on zeros, hidden states and pooled embedding alike (A1111's
  ``force_zero_embeddings``).

``modules.sd_pipeline`` builds the encoder and gives it its own prompt parser, so both model families read prompts
through the same code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class SDXLPromptEncoder:
    """Both text encoders of an ``SDXLModel`` (bigG alone for the refiner) over A1111-parsed prompt windows.

    Args:
        chunks: the prompt parser: text -> its windows (``tokens`` and their ``weights``), at most ``chunk``
            tokens each (``sd_pipeline.PromptEncoder.chunks``).
        model: the ``SDXLModel``.
        settings: the generation's ``GenerationSettings`` (clip skip and the SDXL options).
        chunk: tokens per window between the start and end tokens.
        vectors_in_place: ``(text_encoder, ids, fixes) -> context``: textual inversion vectors of that encoder's
            width in place of a window's ``fixes`` (``sd_pipeline.vectors_in_place``) while it is encoded.
    """

    def __init__(self, chunks: Callable, model, settings, chunk: int, vectors_in_place: Callable):
        self.chunks, self.vectors_in_place = chunks, vectors_in_place
        self.model, self.settings, self.chunk = model, settings, chunk
        self.device, self.dtype = model.device, model.dtype
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def encode(self, text: str) -> torch.Tensor:
        """``[windows*77, width]`` hidden states for one prompt (cached: prompt editing reuses texts)."""
        return self._encoded(text)[0]

    def pooled(self, text: str) -> torch.Tensor:
        """The pooled bigG embedding of the prompt's first window."""
        return self._encoded(text)[1]

    def conditioning(self, negatives, positives, request):
        """Each text's hidden states, negatives first (the UNet batch's order), and the UNet's
        ``added_cond_kwargs``: ``text_embeds`` (pooled) and ``time_ids`` (micro-conditioning at the request's
        ``width`` and ``height``), one row per text."""
        width, height = request.width, request.height
        hidden, pooled, time_ids = [], [], []
        for negative, text in [(True, t) for t in negatives] + [(False, t) for t in positives]:
            states, embeds = self._encoded(text)
            if negative and text == "":
                states, embeds = torch.zeros_like(states), torch.zeros_like(embeds)
            hidden.append(states)
            pooled.append(embeds)
            time_ids.append(self._time_ids(width, height, negative))
        added = {"text_embeds": torch.stack(pooled),
                 "time_ids": torch.tensor(time_ids, device=self.device, dtype=self.dtype)}
        return hidden, added

    def _time_ids(self, width: int, height: int, negative: bool) -> list[float]:
        s = self.settings
        size_crop = [height, width, s.sdxl_crop_top, s.sdxl_crop_left]
        if self.model.is_refiner:
            score = s.sdxl_refiner_low_aesthetic_score if negative else s.sdxl_refiner_high_aesthetic_score
            return [*size_crop, score]
        return [*size_crop, height, width]

    def _encoded(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        if text not in self._cache:
            windows, pooled = [], None
            for window in self.chunks(text):
                chunk, chunk_w = window.tokens, window.weights
                w = torch.tensor([1.0] + chunk_w + [1.0] * (self.chunk + 1 - len(chunk)), device=self.device)
                parts = []
                if self.model.text_encoder is not None:
                    parts.append(_weighted(self._clip_l(chunk, window.fixes), w))
                states, embeds = self._bigg(chunk, window.fixes)
                parts.append(_weighted(states, w))
                pooled = embeds if pooled is None else pooled
                windows.append(torch.cat(parts, dim=-1))
            self._cache[text] = (torch.cat(windows).to(self.dtype), pooled.to(self.dtype))
        return self._cache[text]

    def _ids(self, chunk: list[int], tokenizer) -> torch.Tensor:
        ids = [tokenizer.bos_token_id] + chunk + [tokenizer.eos_token_id]
        ids += [tokenizer.pad_token_id] * (self.chunk + 2 - len(ids))
        return torch.tensor([ids], device=self.device)

    def _clip_l(self, chunk: list[int], fixes) -> torch.Tensor:
        ids = self._ids(chunk, self.model.tokenizer)
        with self.vectors_in_place(self.model.text_encoder, ids, fixes):
            out = self.model.text_encoder(ids, output_hidden_states=True)
        layer = max(1, int(self.settings.clip_skip)) if self.settings.sdxl_clip_l_skip else 2
        return out.hidden_states[-layer][0]

    def _bigg(self, chunk: list[int], fixes) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self._ids(chunk, self.model.tokenizer_2)
        with self.vectors_in_place(self.model.text_encoder_2, ids, fixes):
            out = self.model.text_encoder_2(ids, output_hidden_states=True)
        return out.hidden_states[-2][0], out.text_embeds[0]


def _weighted(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's emphasis: states times their token's weight, scaled back to the unweighted mean."""
    mean_before = hidden.mean()
    hidden = hidden * weights.to(hidden.dtype).unsqueeze(-1)
    mean_after = hidden.mean()
    return hidden * (mean_before / mean_after) if mean_after.abs() > 1e-12 else hidden
