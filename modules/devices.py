"""Where and how the networks run: device, precision, attention, offload, compile, decided from the flags.

Every decision is a pure function of the flags and of what this torch build can do (``TorchFacts``), so the CPU
tests cover every branch by passing facts in; ``TorchFacts.probe`` is the one place that asks torch. A leaf: the
flags come in as arguments (this layer sits below ``modules.shared``), torch is imported only to probe.

The rules (docs/performance.md, *Device and precision*):

* device: ``--use-cpu all|sd`` forces the CPU; else CUDA (``--device-id N``, default 0); else Apple's MPS; else CPU;
* precision: float32 on the CPU and with ``--no-half`` or ``--precision full``; float16 on CUDA and MPS otherwise
  (A1111's default). The VAE follows, except ``--no-half-vae`` (float32) and CUDA cards with bfloat16
  (compute capability 8 and up), where it runs in bfloat16: SD VAEs overflow float16 (black or NaN images), and
  bfloat16 has float32's range at half precision's speed and memory, far faster than the float32 fallback;
* the sampler's arithmetic is always float32 (only the networks run in half), which is what A1111's
  ``--upcast-sampling`` asks for;
* attention: PyTorch's scaled-dot-product attention (``--opt-sdp-attention``, the default);
  ``--opt-sdp-no-mem-attention`` leaves out its memory-efficient kernel (deterministic on CUDA, as in A1111);
* offload (CUDA only): ``--medvram`` keeps each whole network on the GPU only while it runs, ``--lowvram`` moves
  the weights layer by layer (accelerate's model and sequential CPU offload);
* ``torch.compile`` of the UNet is opt-in (the ``serena_torch_compile`` setting; A1111 has none).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TorchFacts:
    """What the torch build and the machine offer: all a placement decision needs to know about them."""

    cuda_devices: int = 0
    mps: bool = False
    cuda_bf16: bool = False     # the first chosen CUDA device computes bfloat16 natively (compute capability >= 8)

    @classmethod
    def probe(cls, device_id: int = 0) -> TorchFacts:
        import torch
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        bf16 = bool(count) and device_id < count and torch.cuda.get_device_capability(device_id)[0] >= 8
        mps = getattr(torch.backends, "mps", None)
        return cls(cuda_devices=count, mps=bool(mps and mps.is_available()), cuda_bf16=bf16)


@dataclass(frozen=True)
class Placement:
    """How a checkpoint runs: ``device`` (a torch device string), the dtypes of the UNet and text encoder
    (``dtype``) and of the VAE (``vae_dtype``) as torch dtype names, the attention (``"sdp"`` or ``"sdp-no-mem"``)
    and the offload (``None``, ``"model"`` or ``"sequential"``)."""

    device: str = "cpu"
    dtype: str = "float32"
    vae_dtype: str = "float32"
    attention: str = "sdp"
    offload: str | None = None

    @property
    def load_device(self) -> str:
        """Where the weights are loaded: the CPU when they are offloaded (the GPU sees them only while they run)."""
        return "cpu" if self.offload else self.device


class DeviceFlagError(ValueError):
    """A device flag this machine cannot honour (``--device-id`` past the last GPU); names the flag."""


def _flag(cmd_opts, name, default=None):
    return getattr(cmd_opts, name, default)


def choose_device(cmd_opts, facts: TorchFacts) -> str:
    """``"cuda:N"``, ``"mps"`` or ``"cpu"`` for ``--use-cpu``, ``--device-id`` and what ``facts`` offer."""
    forced = {m.lower() for m in _flag(cmd_opts, "use_cpu", None) or ()}
    if forced & {"all", "sd"}:
        return "cpu"
    device_id = _flag(cmd_opts, "device_id")
    if facts.cuda_devices:
        index = int(device_id) if device_id is not None else 0
        if index >= facts.cuda_devices:
            raise DeviceFlagError(f"--device-id {device_id}: this machine has {facts.cuda_devices} CUDA device(s), "
                                  f"0 to {facts.cuda_devices - 1}")
        return f"cuda:{index}"
    if facts.mps:
        return "mps"
    return "cpu"


def choose_dtypes(cmd_opts, device: str, facts: TorchFacts) -> tuple[str, str]:
    """``(networks' dtype, VAE's dtype)`` as torch dtype names; the rules are in this module's docstring."""
    full = _flag(cmd_opts, "no_half", False) or _flag(cmd_opts, "precision") == "full"
    if device == "cpu" or full:
        return "float32", "float32"
    if _flag(cmd_opts, "no_half_vae", False):
        return "float16", "float32"
    if device.startswith("cuda") and facts.cuda_bf16:
        return "float16", "bfloat16"
    return "float16", "float16"


def choose_offload(cmd_opts, device: str) -> str | None:
    """``"sequential"`` for ``--lowvram``, ``"model"`` for ``--medvram``, on CUDA only (the CPU holds it all)."""
    if not device.startswith("cuda"):
        return None
    if _flag(cmd_opts, "lowvram", False):
        return "sequential"
    if _flag(cmd_opts, "medvram", False):
        return "model"
    return None


def placement(cmd_opts, facts: TorchFacts) -> Placement:
    """The whole placement for the flags ``cmd_opts`` (any object with the flags as attributes) on ``facts``."""
    device = choose_device(cmd_opts, facts)
    dtype, vae_dtype = choose_dtypes(cmd_opts, device, facts)
    attention = "sdp-no-mem" if _flag(cmd_opts, "opt_sdp_no_mem_attention", False) else "sdp"
    return Placement(device=device, dtype=dtype, vae_dtype=vae_dtype, attention=attention,
                     offload=choose_offload(cmd_opts, device))


def placement_for(cmd_opts) -> Placement:
    """``placement`` on this machine (probes torch)."""
    device_id = _flag(cmd_opts, "device_id")
    return placement(cmd_opts, TorchFacts.probe(int(device_id) if device_id is not None else 0))
