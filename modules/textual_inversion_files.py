"""Reading textual inversion embedding files into ``Embedding`` objects (A1111's formats).

A1111 reads any file of ``embeddings/`` whose content is one of:

* one tensor under one key: ``.safetensors`` with ``emb_params`` (A1111's and kohya's), or diffusers' learned
  embeddings ``{"<token>": tensor}`` (``.bin``/``.safetensors``; a 1-D tensor is one vector);
* A1111's own ``.pt``: a dict whose ``string_to_param`` holds one tensor, with ``step``, ``sd_checkpoint`` and
  ``sd_checkpoint_name`` beside it;
* an SDXL embedding: ``clip_l`` and ``clip_g`` tensors, one per text encoder.

The vectors are kept by their width (hidden size), so a prompt encoder takes the part of its own text encoder; an
SDXL file has two parts. Pickled files (``.pt``, ``.bin``) are read weights-only and only with
``--allow-pickle-checkpoints`` (``sd_models_loader.read_pickle``). Embeddings stored in PNG/WEBP images are not
read.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

EXTENSIONS = (".safetensors", ".pt", ".bin")
SDXL_PARTS = ("clip_l", "clip_g")


@dataclass(frozen=True, eq=False)
class Embedding:
    """One embedding file: its trigger word (the file name without extension) and its vectors per text encoder.

    Attributes:
        name (`str`): the trigger word, as A1111 takes it (``os.path.splitext(file name)[0]``).
        path (`str`): the file.
        vectors (`dict[int, torch.Tensor]`): ``{width: [count, width] float32 tensor}``, one entry per text
            encoder the file was made for (two for SDXL files).
        sha256 (`str`): of the file's bytes; ``shorthash`` (12 hex digits) is what infotexts show (A1111).
        step, sd_checkpoint, sd_checkpoint_name: what A1111's trainer stored with the vectors, else ``None``.
        sdxl (`bool`): the file holds ``clip_l``/``clip_g`` parts.
    """

    name: str
    path: str
    vectors: dict[int, torch.Tensor] = field(repr=False)
    sha256: str
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    sdxl: bool = False

    @property
    def count(self) -> int:
        """How many token positions it takes in a prompt (A1111's ``vectors``)."""
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def shape(self) -> int:
        """A1111's ``shape``: the width of its vectors, summed over its parts (2048 for SDXL's 768 + 1280)."""
        return sum(self.vectors)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted(self.vectors))

    @property
    def shorthash(self) -> str:
        return self.sha256[:12]


def read_embedding(path: str, *, allow_pickle: bool) -> Embedding:
    """The embedding in the file ``path``.

    Raises:
        ValueError: naming the file: a pickle without ``allow_pickle``, an unreadable file, or content that is
            none of the formats above (A1111: "Couldn't identify ... as neither textual inversion embedding nor
            diffuser concept").
    """
    filename = os.path.basename(path)
    name = os.path.splitext(filename)[0]
    with open(path, "rb") as f:
        data = f.read()
    if filename.lower().endswith(".safetensors"):
        try:
            content = load_safetensors(data)
        except (SafetensorError, ValueError) as e:
            raise ValueError(f"{filename}: corrupt or truncated .safetensors file: {e}") from e
    else:
        from modules import sd_models_loader  # the model stack, only for a pickle: the UI lists embeddings without it

        content = sd_models_loader.read_pickle(path, allow_pickle=allow_pickle, what="embedding")
    if not isinstance(content, dict):
        raise ValueError(f"{filename}: holds {type(content).__name__}, not an embedding")
    vectors, sdxl = _vectors(content, filename)
    meta = {key: content.get(key) for key in ("step", "sd_checkpoint", "sd_checkpoint_name")}
    step = meta["step"]
    return Embedding(
        name=name, path=path, vectors=vectors, sha256=hashlib.sha256(data).hexdigest(),
        step=int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None,
        sd_checkpoint=meta["sd_checkpoint"] if isinstance(meta["sd_checkpoint"], str) else None,
        sd_checkpoint_name=meta["sd_checkpoint_name"] if isinstance(meta["sd_checkpoint_name"], str) else None,
        sdxl=sdxl)


def _vectors(content: dict, filename: str) -> tuple[dict[int, torch.Tensor], bool]:
    """``({width: [count, width]}, is_sdxl)`` from a file's content, in A1111's order of formats."""
    if "string_to_param" in content:
        params = content["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise ValueError(f"{filename}: string_to_param must hold exactly one tensor (A1111: one term per file)")
        return _as_vectors(next(iter(params.values())), filename), False
    if all(part in content for part in SDXL_PARTS):
        parts = [_as_vectors(content[part], f"{filename} {part}") for part in SDXL_PARTS]
        (width_l, vectors_l), (width_g, vectors_g) = (next(iter(p.items())) for p in parts)
        if vectors_l.shape[0] != vectors_g.shape[0] or width_l == width_g:
            raise ValueError(f"{filename}: clip_l and clip_g must have the same number of vectors and their own "
                             f"widths, got {list(vectors_l.shape)} and {list(vectors_g.shape)}")
        return {width_l: vectors_l, width_g: vectors_g}, True
    tensors = [v for v in content.values() if isinstance(v, torch.Tensor)]
    if len(content) == 1 and len(tensors) == 1:
        return _as_vectors(tensors[0], filename), False
    keys = ", ".join(sorted(map(str, content))[:5])
    raise ValueError(f"{filename}: neither a textual inversion embedding nor a diffusers concept (keys: {keys})")


def _as_vectors(tensor, what: str) -> dict[int, torch.Tensor]:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise ValueError(f"{what}: the vectors must be a floating-point tensor")
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2 or 0 in tensor.shape:
        raise ValueError(f"{what}: the vectors must be [count, width], got {list(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{what}: the vectors hold NaN or infinite values")
    return {int(tensor.shape[1]): tensor.detach().to(torch.float32).contiguous()}
