"""Where the networks run: CUDA when available (half precision), else the CPU; ``--use-cpu all|sd`` forces the CPU.

The flags come in as arguments: this layer sits below the process-wide handles (``modules.shared``).
"""

from __future__ import annotations

from collections.abc import Iterable


def device(use_cpu: Iterable[str]):
    """The torch device for Stable Diffusion; ``use_cpu`` is the ``--use-cpu`` flag's list of module names."""
    import torch
    forced = {m.lower() for m in use_cpu}
    if torch.cuda.is_available() and not forced & {"all", "sd"}:
        return torch.device("cuda")
    return torch.device("cpu")


def dtype(device):
    """The floating-point dtype the networks use on ``device``."""
    import torch
    return torch.float16 if device.type == "cuda" else torch.float32
