"""Putting a loaded checkpoint where ``modules.devices`` decided: the VAE's dtype, the attention processors, CPU
offload (``--medvram``/``--lowvram``) and the opt-in ``torch.compile`` of the UNet.

The decisions are ``devices.Placement``; this module only carries them out on an ``SDModel`` (duck-typed: it has
``text_encoder``, ``unet``, ``vae``, ``device``, ``dtype`` and ``vae_dtype``).
"""

from __future__ import annotations

import torch
from accelerate import cpu_offload
from diffusers.models.attention_processor import AttnProcessor2_0
from torch.nn.attention import SDPBackend, sdpa_kernel

from modules.devices import Placement


def torch_dtype(name: str) -> torch.dtype:
    """``torch.float16`` for ``"float16"``: the placement names dtypes so that ``devices`` needs no torch."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {name!r}")
    return dtype


class SdpNoMemProcessor(AttnProcessor2_0):
    """PyTorch's scaled-dot-product attention without its memory-efficient kernel (A1111's
    ``--opt-sdp-no-mem-attention``): flash or the plain math kernel only, which are deterministic on CUDA."""

    def __call__(self, *args, **kwargs):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
            return super().__call__(*args, **kwargs)


def attention_processor(attention: str):
    """The diffusers attention processor for ``Placement.attention``."""
    return SdpNoMemProcessor() if attention == "sdp-no-mem" else AttnProcessor2_0()


def set_attention(module, attention: str) -> None:
    """Every attention layer of a diffusers ``module`` (UNet, VAE) uses ``attention``'s processor."""
    if hasattr(module, "set_attn_processor") and getattr(module, "attn_processors", None):
        module.set_attn_processor(attention_processor(attention))


class ModelOffload:
    """``--medvram``: one network on the execution device at a time, moved there when it is called and back to the
    CPU when another one is (diffusers' ``enable_model_cpu_offload``, for Serena's model without a pipeline).

    A network is called through its own ``forward`` (text encoder, UNet) or through its children's (the VAE's
    ``encode``/``decode`` call its encoder, decoder and convolutions), so the hooks sit on what is called.
    """

    def __init__(self, networks: dict, device):
        self.device = torch.device(device)
        self.networks = networks
        self.resident: str | None = None
        self.moves: list[str] = []   # names moved onto the device, in order (tests and benchmarks read it)
        for name, module in networks.items():
            called = [module] if name != "vae" else [m for m in module.children()
                                                     if next(m.parameters(), None) is not None]
            for part in called:
                part.register_forward_pre_hook(lambda *_, name=name: self.bring(name))

    def bring(self, name: str) -> None:
        if self.resident == name:
            return
        if self.resident is not None:
            self.networks[self.resident].to("cpu")
        self.networks[name].to(self.device)
        self.resident = name
        self.moves.append(name)


def apply(model, where: Placement, *, compile_unet: bool = False):
    """Carry out ``where`` on ``model`` (loaded on ``where.load_device`` in ``where.dtype``); returns it.

    Afterwards ``model.device`` is the execution device: where the pipeline puts its tensors.
    """
    vae_dtype = torch_dtype(where.vae_dtype)
    if model.vae.dtype != vae_dtype:
        # torch's own cast: diffusers' warns on every load about modules kept in float32, which a VAE has none of
        model.vae = torch.nn.Module.to(model.vae, dtype=vae_dtype)
        if getattr(model, "_own_vae", None) is not None:
            model._own_vae = model.vae
    model.vae_dtype = vae_dtype
    for network in (model.unet, model.vae):
        set_attention(network, where.attention)
    # SDXL has a second text encoder (bigG), and its refiner has only that one
    networks = {name: network for name, network in (
        ("text_encoder", model.text_encoder), ("text_encoder_2", getattr(model, "text_encoder_2", None)),
        ("unet", model.unet), ("vae", model.vae)) if network is not None}
    if where.offload == "model":
        model.offload = ModelOffload(networks, where.device)
    elif where.offload == "sequential":
        for network in networks.values():
            cpu_offload(network, execution_device=torch.device(where.device))
    model.device = torch.device(where.device)
    if compile_unet:
        model.unet.compile()  # in place: the module, its config and its hooks stay what they were
    return model
