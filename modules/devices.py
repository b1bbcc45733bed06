"""Where the networks run: CUDA when available (half precision), else the CPU; ``--use-cpu all|sd`` forces the CPU."""

from __future__ import annotations

from modules import shared


def device():
    import torch
    forced = {m.lower() for m in shared.cmd_opts.use_cpu}
    if torch.cuda.is_available() and not forced & {"all", "sd"}:
        return torch.device("cuda")
    return torch.device("cpu")


def dtype():
    import torch
    return torch.float16 if device().type == "cuda" else torch.float32
