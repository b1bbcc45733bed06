"""The diffusion itself: prompt conditioning, seeded noise, the scheduler loop, decoding.

diffusers provides the networks and schedulers; this module writes by hand only what diffusers does not do:
A1111's prompt syntax (attention weights, prompt editing, alternation, chunks longer than 75 tokens), clip skip,
per-image seeds with variation seeds, noise drawn on the CPU, inpainting checkpoints' mask conditioning (A1111's,
``modules.inpaint_conditioning``), and the per-step progress/interrupt/preview.
Everything it needs arrives as arguments: a frozen ``SamplingRequest`` per batch (built by ``modules.processing``),
the model, the job state and an optional per-step callback. Nothing here reads the processing object or
``modules.shared``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules import inpaint_conditioning, prompt_parser, sd_conditioning_xl, sd_samplers, sd_schedules, tiling

CHUNK = 75  # tokens per CLIP window, between the start and end tokens (A1111)
PREVIEW_EVERY = 5

# Linear map from SD1.x latent channels to RGB: a cheap preview that needs no VAE decode (A1111's "Approx cheap").
_LATENT_RGB = torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264],
                            [-0.184, -0.271, -0.473]])


@dataclass
class PromptChunk:
    """One CLIP window of a prompt: up to ``CHUNK`` token ids with their attention weights, and the textual
    inversion embeddings in it: ``fixes`` holds ``(position, embedding)``, whose vectors replace the token
    embeddings of ``tokens[position:position + embedding.count]`` (placeholder ids, A1111's ``PromptChunkFix``)."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, Any]] = field(default_factory=list)


# The id an embedding's positions hold before its vectors replace them (A1111's); never the end token, so the
# end of the text is still where the text encoder looks for it.
EMBEDDING_PLACEHOLDER = 0


class PromptEncoder:
    """Encodes prompts with A1111's attention syntax into CLIP hidden states, ``CHUNK`` tokens per window.

    ``embeddings`` (a ``textual_inversion.EmbeddingLookup`` or ``None``) finds textual inversion trigger words in
    the token ids: each takes as many positions as its embedding has vectors, in one window, and the vectors of
    this text encoder's width go in place of those positions' token embeddings while the window is encoded. The
    tokenizer and the text encoder are not changed; a prompt without trigger words is encoded as without them.
    """

    def __init__(self, tokenizer, text_encoder, clip_skip: int, device, dtype, embeddings=None):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.clip_skip = max(1, int(clip_skip))
        self.device, self.dtype = device, dtype
        self.embeddings = embeddings
        self._cache: dict[str, torch.Tensor] = {}

    def encode(self, text: str) -> torch.Tensor:
        """``[chunks*77, hidden]`` conditioning for one prompt (cached: prompt editing reuses texts)."""
        if text not in self._cache:
            self._cache[text] = self._encode_chunks(self.chunks(text))
        return self._cache[text]

    def conditioning(self, negatives, positives, request):
        """Each text's hidden states, negatives first (the UNet batch's order), and the UNet's added conditioning
        for ``request``: ``None``, as SD1.x UNets take none (``sd_conditioning_xl.SDXLPromptEncoder`` gives
        SDXL's). The prompts are encoded before the negative prompts: the order their embeddings are named in
        (A1111's TI hashes)."""
        cond = [self.encode(text) for text in positives]
        return [self.encode(text) for text in negatives] + cond, None

    def chunks(self, text: str) -> list[PromptChunk]:
        """The prompt's windows: a new one after ``CHUNK`` tokens, at ``BREAK``, and where an embedding would not
        fit in what is left of the current one (A1111's ``tokenize_line``)."""
        chunks = [PromptChunk()]
        for piece, weight in prompt_parser.parse_prompt_attention(text):
            if piece == "BREAK" and weight == -1:
                chunks.append(PromptChunk())
                continue
            ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
            position = 0
            while position < len(ids):
                found = self.embeddings.find(ids, position) if self.embeddings is not None else None
                taken = found[0].count if found else 1
                if len(chunks[-1].tokens) + taken > CHUNK:
                    chunks.append(PromptChunk())
                chunk = chunks[-1]
                if found is None:
                    chunk.tokens.append(ids[position])
                    chunk.weights.append(weight)
                    position += 1
                    continue
                embedding, length = found
                chunk.fixes.append((len(chunk.tokens), embedding))
                chunk.tokens += [EMBEDDING_PLACEHOLDER] * taken
                chunk.weights += [weight] * taken
                position += length
                self.embeddings.record(embedding)
        return chunks

    def _encode_chunks(self, chunks: list[PromptChunk]) -> torch.Tensor:
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        outs = []
        for chunk in chunks:
            ids = [bos] + chunk.tokens + [eos] + [pad] * (CHUNK - len(chunk.tokens))
            w = [1.0] + chunk.weights + [1.0] * (CHUNK + 1 - len(chunk.tokens))
            ids_t = torch.tensor([ids], device=self.device)
            with vectors_in_place(self.text_encoder, ids_t, chunk.fixes):
                out = self.text_encoder(ids_t, output_hidden_states=self.clip_skip > 1)
            if self.clip_skip > 1:
                # Clip skip: an earlier layer's output, normalised as the last layer's would be (A1111).
                hidden = self.text_encoder.final_layer_norm(out.hidden_states[-self.clip_skip])
            else:
                hidden = out.last_hidden_state
            hidden = hidden[0]
            weight_t = torch.tensor(w, device=self.device, dtype=hidden.dtype).unsqueeze(-1)
            mean_before = hidden.mean()
            hidden = hidden * weight_t
            mean_after = hidden.mean()
            if mean_after.abs() > 1e-12:
                hidden = hidden * (mean_before / mean_after)
            outs.append(hidden)
        return torch.cat(outs, dim=0).to(self.dtype)


def vectors_in_place(text_encoder, ids_t: torch.Tensor, fixes: list[tuple[int, Any]]):
    """While ``text_encoder`` encodes the window ``ids_t``, the embeddings' vectors of its width (SDXL's two: each its
    part) replace the token embeddings at their positions (A1111's ``EmbeddingsWithFixes``): a forward hook on the
    embedding layer, removed after the call, that changes only the output computed for ``ids_t`` itself."""
    if not fixes:
        return contextlib.nullcontext()
    layer = text_encoder.get_input_embeddings()
    width = layer.embedding_dim

    def substitute(module, args, output):
        if args[0].data_ptr() != ids_t.data_ptr():
            return None  # another caller's ids: not this window
        output = output.clone()
        for position, embedding in fixes:
            vectors = embedding.vectors[width]
            output[0, 1 + position:1 + position + len(vectors)] = vectors.to(output.device, output.dtype)
        return output

    return layer.register_forward_hook(substitute)  # a context manager: removed when the block ends


def prompt_encoder(model, request):
    """The prompt encoder for ``model`` and the request's settings: ``PromptEncoder`` with the request's textual
    inversion embeddings, or for an SDXL model (one with bigG, ``text_encoder_2``) both encoders over the windows
    ``PromptEncoder`` parses, with the request's embeddings (each encoder takes the vectors of its width)."""
    settings = request.settings
    if getattr(model, "text_encoder_2", None) is None:
        # a family that always conditions on one layer (SD2.x's penultimate) ignores clip skip, as A1111 does
        return PromptEncoder(model.tokenizer, model.text_encoder, model.conditioning_layer or settings.clip_skip,
                             model.device, model.dtype, embeddings=request.embeddings)
    chunks = PromptEncoder(model.tokenizer, None, 1, model.device, model.dtype, request.embeddings).chunks
    return sd_conditioning_xl.SDXLPromptEncoder(chunks, model, settings, CHUNK, vectors_in_place)


def _stack_padded(conds: list[torch.Tensor]) -> torch.Tensor:
    """Stack conditionings of different lengths by repeating each one's last window (A1111 pads the same way).

    Positive and negative prompts go through the UNet as one batch, so they must have equal lengths.
    """
    window = CHUNK + 2
    length = max(c.shape[0] for c in conds)
    padded = []
    for c in conds:
        while c.shape[0] < length:
            c = torch.cat([c, c[-window:]])
        padded.append(c)
    return torch.stack(padded)


def _slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a_n, b_n = a / a.norm(), b / b.norm()
    dot = (a_n * b_n).sum().clamp(-1, 1)
    if dot.abs() > 0.9995:
        return (1 - t) * a + t * b
    omega = torch.acos(dot)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def initial_noise(shape, seeds, subseeds, subseed_strength: float, device, source: str) -> torch.Tensor:
    """One noise tensor per image from its own seed, so image i is the same alone or in a batch.

    ``source`` "CPU" draws on the CPU, so a seed gives the same image on any device (A1111's ``randn_source``).
    """
    gen_device = torch.device("cpu") if source == "CPU" else torch.device(device)
    noises = []
    for seed, subseed in zip(seeds, subseeds):
        noise = torch.randn(shape, generator=torch.Generator(gen_device).manual_seed(int(seed)), device=gen_device)
        if subseed_strength:
            sub = torch.randn(shape, generator=torch.Generator(gen_device).manual_seed(int(subseed)),
                              device=gen_device)
            noise = _slerp(float(subseed_strength), noise, sub)
        noises.append(noise)
    return torch.stack(noises).to(device)


def latents_to_images(latents: torch.Tensor, vae) -> list[Image.Image]:
    scale = getattr(vae.config, "scaling_factor", 0.18215)
    decoded = vae.decode(latents.to(vae.dtype) / scale).sample
    arr = ((decoded.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def preview_image(latents: torch.Tensor) -> Image.Image:
    coeffs = _LATENT_RGB.to(latents.device, latents.dtype)
    rgb = torch.einsum("chw,cr->hwr", latents[0, :4], coeffs)
    arr = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr))


def images_to_pixels(images: list[Image.Image], width: int, height: int, device, dtype) -> torch.Tensor:
    """``[batch, 3, height, width]`` in the VAE's [-1, 1] range, each image resized to the batch's size."""
    tensors = []
    for image in images:
        image = image.convert("RGB").resize((width, height), Image.LANCZOS)
        arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        tensors.append(arr)
    return torch.stack(tensors).to(device=device, dtype=dtype)


def pixels_to_latents(pixels: torch.Tensor, vae) -> torch.Tensor:
    """The VAE's latents of ``pixels`` (its distribution's mean: the same image always gives the same latents)."""
    scale = getattr(vae.config, "scaling_factor", 0.18215)
    return vae.encode(pixels.to(vae.dtype)).latent_dist.mean * scale


def images_to_latents(images: list[Image.Image], vae, width: int, height: int, device, dtype) -> torch.Tensor:
    return pixels_to_latents(images_to_pixels(images, width, height, device, dtype), vae)


def mask_to_latent(mask: Image.Image, width: int, height: int, factor: int, invert: bool, device, dtype,
                   round_mask: bool = False):
    """1 where the image is repainted, at latent resolution (bicubic, as A1111 resizes it); ``round_mask`` makes
    every value 0 or 1 (A1111's ``mask_round``), so a blurred edge is either kept or repainted in the latents."""
    m = mask.convert("L").resize((width // factor, height // factor), Image.BICUBIC)
    t = torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)
    if round_mask:
        t = torch.round(t)
    if invert:
        t = 1.0 - t
    return t.to(device=device, dtype=dtype)[None, None]


def encode_init_images(request: "SamplingRequest", model, count: int, factor: int) -> torch.Tensor:
    """The batch's init images encoded, one per image in turn; resize mode 3 ("latent upscale") encodes each at
    its own size and stretches its latents (bilinear) to the request's size instead of its pixels."""
    images = (request.init_images * count)[:count]
    if not request.latent_resize:
        return images_to_latents(images, model.vae, request.width, request.height, model.device,
                                 model.vae.dtype).float()
    size = (request.height // factor, request.width // factor)
    return torch.cat([torch.nn.functional.interpolate(
        images_to_latents([image], model.vae, image.width, image.height, model.device, model.vae.dtype).float(),
        size=size, mode="bilinear") for image in images])


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """CFG rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", eq. 15–16).

    With a zero-terminal-SNR schedule, plain CFG overshoots: the guided prediction's standard deviation grows
    with the CFG scale and images come out over-exposed or washed out. Scaling it back to the conditional
    prediction's deviation, blended by ``phi``, keeps the colours the prompt asks for.
    """
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


class _Interrupted(Exception):
    """Raised inside the sampler when the job is interrupted or skipped; the last denoised latent is kept."""


@dataclass(frozen=True)
class SamplingRequest:
    """One batch to sample, as plain data: what, how, with which settings, and from which images (img2img).

    ``modules.processing`` builds one per batch (``StableDiffusionProcessing.sampling_request``); the pipeline
    reads nothing else about where a batch came from. Per-image fields hold one entry per image of the batch.

    Attributes:
        prompts, negative_prompts (`tuple[str, ...]`): A1111 prompt syntax, one per image.
        seeds, subseeds (`tuple[int, ...]`): each image's seed and variation seed.
        subseed_strength (`float`): how far each image's noise moves toward its variation seed's (0: not at all).
        width, height (`int`): the image size, multiples of 8.
        sampler_name (`str`), scheduler (`str` or `None`): A1111 names, resolved by ``modules.sd_samplers``.
        steps (`int`): sampling steps (prompt editing counts in these).
        cfg_scale (`float`): classifier-free guidance scale.
        eta (`float` or `None`): ancestral/SDE noise scale; `None` is the sampler's default.
        settings (`GenerationSettings`): the effective options of the generation (``modules.processing``).
        init_images (`tuple`): img2img's PIL images, reused in turn when fewer than images; empty for txt2img.
        init_latents (`torch.Tensor` or `None`): img2img from latents already at this size, one per image (Hires
            fix's latent upscalers), instead of encoding ``init_images``.
        denoising_strength (`float` or `None`): img2img: the part of the schedule that is walked (1: all of it).
        mask (PIL image or `None`): img2img: where to repaint (white), resized to the image; an inpainting
            checkpoint also sees it, with the image it hides (``prepare_image_conditioning``).
        inpainting_mask_invert (`bool`): repaint where the mask is black instead.
        mask_round (`bool`): the latent mask is 0 or 1 everywhere (A1111's ``mask_round``).
        inpainting_fill (`int`): what the masked latents start from: 1 the init image's (also 0, whose pixels
            were filled before encoding), 2 seeded noise ("latent noise"), 3 zeros ("latent nothing").
        latent_resize (`bool`): resize mode 3: ``init_images`` are encoded at their own size and their latents
            stretched to width x height.
        noise_multiplier (`float`): img2img: the initial noise scaled by this (A1111's ``initial_noise_multiplier``).
        tiling (`bool`): seamless tiling: the UNet and VAE pad circularly while the batch runs (``modules.tiling``).
        embeddings (`textual_inversion.EmbeddingLookup` or `None`): the textual inversion embeddings the batch's
            model can use; the prompt encoder records in it the ones the prompts used (``used``, for the
            infotext). ``None``: trigger words are plain words.
    """

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    subseeds: tuple[int, ...]
    subseed_strength: float
    width: int
    height: int
    sampler_name: str
    scheduler: str | None
    steps: int
    cfg_scale: float
    eta: float | None
    settings: Any
    init_images: tuple = ()
    denoising_strength: float | None = None
    mask: Any = None
    inpainting_mask_invert: bool = False
    tiling: bool = False
    init_latents: Any = None
    embeddings: Any = None
    mask_round: bool = True
    inpainting_fill: int = 1
    latent_resize: bool = False
    noise_multiplier: float = 1.0

    @property
    def is_img2img(self) -> bool:
        return bool(self.init_images) or self.init_latents is not None

    def check_inputs(self) -> None:
        """Raise ``ValueError`` for a batch the pipeline cannot run (the processing object checked its fields)."""
        counts = {len(self.prompts), len(self.negative_prompts), len(self.seeds), len(self.subseeds)}
        if len(counts) != 1 or not self.prompts:
            raise ValueError("prompts, negative_prompts, seeds and subseeds must have one entry per image")
        if self.mask is not None and not self.is_img2img:
            raise ValueError("a mask needs init_images")
        if self.init_latents is not None and len(self.init_latents) != len(self.seeds):
            raise ValueError("init_latents must have one entry per image")


@dataclass
class LatentStart:
    """Where sampling starts: the latents at ``sigmas[0]``, the noise levels left to walk, and for img2img the
    encoded init images and the inpainting mask (latent resolution), which the denoiser keeps outside the mask."""

    latents: torch.Tensor
    sigmas: torch.Tensor
    init_latents: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class Denoiser:
    """The model as a function of (x, sigma): classifier-free guidance, CFG rescale and the inpainting mask.

    An inpainting UNet also reads ``image_conditioning`` (``prepare_image_conditioning``), concatenated after the
    latents in both halves of every call.

    ``x`` is the latent at noise level ``sigma`` in k-diffusion's scaling (``latent_at_t * sqrt(1 + sigma^2)``);
    the UNet sees ``c_in * x`` at the timestep of ``sigma`` and its output (eps, v or sample, per the model's
    config) becomes the denoised latent ``c_skip * x + c_out * output``. Guidance and its rescale are applied to
    the UNet's output, as before, so a checkpoint's ``guidance_rescale`` means what it was trained with.

    The samplers call it at least once per step, first with the step's starting latents; so its first call of a
    step is where the previous step ended: progress, previews and ``on_step_end(step, sigma, latents, denoised)``
    (for the step just finished) happen there.
    """

    def __init__(self, request, model, schedule: sd_schedules.ModelSchedule, encoder, cond_schedules,
                 uncond_schedules, total_steps: int, state, on_step_end: Callable | None = None):
        self.request, self.model, self.schedule, self.encoder, self.state = request, model, schedule, encoder, state
        self.cond_schedules, self.uncond_schedules = cond_schedules, uncond_schedules
        self.total_steps = total_steps
        self.on_step_end = on_step_end
        self.init_latents = self.mask = None
        self.image_conditioning = None  # an inpainting UNet's mask and masked-image channels, one row per image
        self.last_denoised = None
        self.refiner = None  # the refiner switch (``sample_latents``), until it has switched

    def _refine_if_due(self, sigma: float) -> None:
        """Continue on the refiner once the noise is down to ``refiner.switch_at`` of the model's timesteps
        (A1111's ``(999 - t) / 1000``): its model, its schedule's scalings, its conditioning."""
        t = round(float(self.schedule.sigma_to_t(sigma)))
        if self.refiner.switch_at is not None and (999 - t) / 1000 < self.refiner.switch_at:
            return
        self.model = self.refiner.enter()
        self.schedule = sd_schedules.ModelSchedule(self.model.scheduler_config)
        self.encoder = prompt_encoder(self.model, self.request)
        self.refiner = None

    def __call__(self, x: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        request, model, state = self.request, self.model, self.state
        if state.interrupted or state.skipped:
            raise _Interrupted
        if step != state.sampling_step:
            self._step_done(step, x, sigma)
        if self.refiner is not None:
            self._refine_if_due(sigma)
            model = self.model
        prompt_step = min(request.steps - 1, step * request.steps // max(1, self.total_steps))
        negatives = [prompt_parser.schedule_for_step(sch, prompt_step) for sch in self.uncond_schedules]
        positives = [prompt_parser.schedule_for_step(sch, prompt_step) for sch in self.cond_schedules]
        conds, added_cond_kwargs = self.encoder.conditioning(negatives, positives, request)
        context = _stack_padded(conds)
        # SDXL's UNet takes the pooled embedding and the micro-conditioning besides the hidden states
        unet_kwargs = {} if added_cond_kwargs is None else {"added_cond_kwargs": added_cond_kwargs}
        c_in, c_skip, c_out = self.schedule.scalings(sigma)
        t = self.schedule.sigma_to_t(sigma).to(device=x.device, dtype=torch.float32).expand(2 * len(x))
        model_in = (torch.cat([x, x]) * c_in).to(model.dtype)
        if self.image_conditioning is not None:  # both CFG halves see the same mask and masked image
            extra = torch.cat([self.image_conditioning, self.image_conditioning]).to(model.dtype)
            model_in = torch.cat([model_in, extra], dim=1)
        pred = model.unet(model_in, t, encoder_hidden_states=context, **unet_kwargs).sample.float()
        pred_uncond, pred_cond = pred.chunk(2)
        guided = pred_uncond + request.cfg_scale * (pred_cond - pred_uncond)
        if model.guidance_rescale:
            guided = rescale_guidance(guided, pred_cond, model.guidance_rescale)
        denoised = x * c_skip + guided * c_out
        if self.mask is not None:
            # Keep the unmasked area on the init image's trajectory: there the model "predicts" the init image.
            denoised = self.init_latents * (1 - self.mask) + denoised * self.mask
        self.last_denoised = denoised
        return denoised

    def _step_done(self, step: int, x: torch.Tensor, sigma: float) -> None:
        """Step ``step - 1`` ended with ``x`` at ``sigma`` (the first input of step ``step``)."""
        self.state.sampling_step = step
        if self.on_step_end is not None:
            self.on_step_end(step - 1, sigma, x, self.last_denoised)
        if step and step % PREVIEW_EVERY == 0 and self.last_denoised is not None:
            self.state.current_image, self.state.current_image_step = preview_image(self.last_denoised), step


def _noise_source(generators, shape, device):
    """Fresh noise per image from its own generator, so image i's noise is the same alone or in a batch."""
    def noise():
        return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
    return noise


def prepare_txt2img_latents(noise: torch.Tensor, sigmas: torch.Tensor) -> LatentStart:
    """txt2img starts from the seeded noise at the first noise level and walks every level."""
    return LatentStart(noise * float(sigmas[0]), sigmas)


def prepare_img2img_latents(request: SamplingRequest, model, noise: torch.Tensor, sigmas: torch.Tensor,
                            factor: int) -> LatentStart:
    """img2img starts part of the way: the init images encoded, noised to the level ``denoising_strength`` picks
    (1 walks every level; 0 still walks the last step). With a mask, "latent noise" and "latent nothing" replace
    the masked latents first (A1111 does it in ``init``); the noise is scaled by ``noise_multiplier``."""
    if request.init_latents is not None:
        init_latents = request.init_latents.to(device=model.device, dtype=torch.float32)
    else:
        init_latents = encode_init_images(request, model, len(request.seeds), factor)
    total_steps = len(sigmas) - 1
    start = min(total_steps - 1, int(total_steps * (1 - float(request.denoising_strength))))
    sigmas = sigmas[start:]
    mask = None
    if request.mask is not None:
        mask = mask_to_latent(request.mask, request.width, request.height, factor, request.inpainting_mask_invert,
                              model.device, torch.float32, round_mask=request.mask_round)
        if request.inpainting_fill == 2:  # each image's own seed, without the variation seed (A1111)
            seeded = initial_noise(noise.shape[1:], request.seeds, request.seeds, 0.0, model.device,
                                   request.settings.randn_source).float()
            init_latents = init_latents * (1 - mask) + seeded * mask
        elif request.inpainting_fill == 3:
            init_latents = init_latents * (1 - mask)
    noise = noise * float(request.noise_multiplier)
    return LatentStart(init_latents + noise * float(sigmas[0]), sigmas, init_latents, mask)


def prepare_image_conditioning(request: SamplingRequest, model) -> torch.Tensor | None:
    """``[batch, 5, h, w]`` for an inpainting UNet (``modules.inpaint_conditioning``): the request's mask (all ones
    without one) and the latents of its image with the mask's area faded to gray by the settings'
    ``inpainting_mask_weight``. txt2img shows an all-gray image. ``None`` for a UNet that takes latents only."""
    if not inpaint_conditioning.takes_image_conditioning(model):
        return None
    count, weight = len(request.seeds), request.settings.inpainting_mask_weight
    mask = inpaint_conditioning.pixel_mask(request.mask, request.width, request.height,
                                           request.inpainting_mask_invert, request.mask_round)
    if not request.is_img2img or inpaint_conditioning.hides_everything(mask, weight):
        # All gray whatever the image: encode it once, not per image
        pixels = torch.zeros(1, 3, request.height, request.width, device=model.device, dtype=model.dtype)
    elif request.init_latents is not None:  # Hires fix's latent upscale: the image is in the latents
        scale = getattr(model.vae.config, "scaling_factor", 0.18215)
        pixels = model.vae.decode(request.init_latents.to(model.device, model.vae.dtype) / scale).sample
    else:
        pixels = images_to_pixels((request.init_images * count)[:count], request.width, request.height,
                                  model.device, model.dtype)
    masked = pixels_to_latents(inpaint_conditioning.masked_pixels(pixels, mask, weight), model.vae).float()
    if len(masked) != count:
        masked = masked.expand(count, -1, -1, -1)
    return inpaint_conditioning.concat_channels(mask.to(model.device), masked)


@torch.inference_mode()
@tiling.with_request_padding
def sample_batch(request: SamplingRequest, model, state, callback_on_step_end: Callable | None = None,
                 refiner=None) -> list[Image.Image]:
    """Generate one batch; returns PIL images (``sample_latents``, then the VAE of the model that finished
    decodes them). With a ``refiner`` switch, its override is held from the switch to the end of decoding."""
    if refiner is None:
        return latents_to_images(sample_latents(request, model, state, callback_on_step_end), model.vae)
    with refiner:
        latents = sample_latents(request, model, state, callback_on_step_end, refiner=refiner)
        return latents_to_images(latents, (refiner.model or model).vae)


@torch.inference_mode()
@tiling.with_request_padding
def sample_latents(request: SamplingRequest, model, state, callback_on_step_end: Callable | None = None,
                   refiner=None) -> torch.Tensor:
    """Sample one batch and return its final latents, not yet decoded (Hires fix upscales them).

    Args:
        request (`SamplingRequest`): everything the images depend on besides the model.
        model (`SDModel`): the loaded checkpoint to run.
        state (`jobs.State`): where progress and previews go and interrupt/skip requests come from.
        callback_on_step_end (`Callable`, *optional*): called after every sampling step with keyword arguments
            ``step`` (index of the step just finished), ``total_steps`` (steps this batch walks), ``sigma`` (the
            noise level the latents are at now; 0 after the last), ``latents`` (the step's result: what the next
            step's first model call receives, or what is decoded after the last step) and ``denoised`` (the step's
            last denoised prediction); both tensors are copies. Its return value is ignored. Not called for a
            step cut short by interrupt or skip.
        refiner (`refiner.Switch`, *optional*): switches to the refiner model mid-sampling: ``switch_at`` (the part
            of the model's timesteps after which it takes over; ``None``: at once) and ``enter()``, which returns
            the model to continue with. The caller holds it open (``with refiner:``) until it has decoded.
    """
    # 0. Check inputs before any model work
    request.check_inputs()
    device, settings = model.device, request.settings
    # 1. Noise levels from the model's own config (prediction type, betas, zero SNR, spacing are the model's)
    sampler, scheduler = sd_samplers.resolve_sampler_and_scheduler(request.sampler_name, request.scheduler)
    schedule = sd_schedules.ModelSchedule(model.scheduler_config)
    sigmas = sd_samplers.sigmas_for(sampler, scheduler, request.steps, schedule)
    total_steps = len(sigmas) - 1
    # 2. Conditioning schedules (prompt editing and alternation switch at their steps)
    encoder = prompt_encoder(model, request)
    cond_schedules = prompt_parser.get_learned_conditioning_prompt_schedules(list(request.prompts), request.steps)
    uncond_schedules = prompt_parser.get_learned_conditioning_prompt_schedules(list(request.negative_prompts),
                                                                               request.steps)
    # 3. Seeded noise: the initial noise per image, and the per-step noise of ancestral/SDE samplers
    factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    # The latents' channels are the UNet's output: an inpainting UNet reads 5 more (its image conditioning)
    shape = (model.unet.config.out_channels, request.height // factor, request.width // factor)
    noise = initial_noise(shape, request.seeds, request.subseeds, request.subseed_strength, device,
                          settings.randn_source).float()
    ensd = settings.eta_noise_seed_delta
    step_noise = _noise_source([torch.Generator("cpu").manual_seed(int(s) + ensd) for s in request.seeds], shape,
                               device)
    # 4. Initial latents: txt2img from noise; img2img (the request holds init images) from its images
    if request.is_img2img:
        start = prepare_img2img_latents(request, model, noise, sigmas, factor)
    else:
        start = prepare_txt2img_latents(noise, sigmas)
    sigmas, walked = start.sigmas, len(start.sigmas) - 1
    step_end = None
    if callback_on_step_end is not None:
        def step_end(step, sigma, latents, denoised):
            callback_on_step_end(step=step, total_steps=walked, sigma=float(sigma), latents=latents.clone(),
                                 denoised=None if denoised is None else denoised.clone())
    denoiser = Denoiser(request, model, schedule, encoder, cond_schedules, uncond_schedules, total_steps, state,
                        on_step_end=step_end)
    denoiser.init_latents, denoiser.mask, denoiser.refiner = start.init_latents, start.mask, refiner
    # 4b. An inpainting UNet's mask and masked-image channels, the same at every step
    denoiser.image_conditioning = prepare_image_conditioning(request, model)
    eta = sampler.default_eta if request.eta is None else float(request.eta)
    # 5. Sampling over the sigmas
    state.sampling_steps, state.sampling_step = walked, 0
    try:
        latents = sampler.function(denoiser, start.latents, sigmas, step_noise, eta)
        state.sampling_step = walked
        if step_end is not None:
            step_end(walked - 1, sigmas[-1], latents, denoiser.last_denoised)
    except _Interrupted:
        latents = denoiser.last_denoised if denoiser.last_denoised is not None else start.latents
    if denoiser.mask is not None:
        latents = denoiser.init_latents * (1 - denoiser.mask) + latents * denoiser.mask
    return latents
