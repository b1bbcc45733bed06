"""Train the shipped extra-network examples for the embedded default model, on the CPU, in a few minutes each.

Two small networks that teach ``serena-shapes-v1`` something its training data never showed it, each from images
drawn by ``tools/shapes_dataset.py`` (so ``bench/prompt_adherence.py --examples`` can score the effect):

* ``embedding``: a textual inversion embedding, ``embeddings/serena-night.safetensors`` (2 vectors): the trigger
  word ``serena-night`` puts the shape on a black background. Its training captions name the shape and colour,
  never the background, and end with the trigger word; only the two vectors are trained, in the place the
  prompt encoder puts them (``modules.sd_pipeline.PromptEncoder``: the token embeddings of the trigger word's
  positions, placeholder ids around them as in a real prompt).
* ``lora``: a rank-4 LoRA, ``models/Lora/serena-heart.safetensors``: the word "heart" draws hearts, a shape the
  default model never drew (it is one of the alt model's shapes; without the LoRA the model draws one of its own
  four). Half the batch is the default model's own data (prior preservation) so the other shapes stay. Trained
  on the UNet's attention projections and the text encoder's attention and MLP layers; written in kohya's
  format (``lora_unet_<module path with _>`` / ``lora_te_<module path with _>`` with ``lora_down.weight``,
  ``lora_up.weight``, ``alpha``), the names the built-in Lora extension and A1111 read for an SD1.x model.
  Why a shape and not a colour: the default model's VAE draws only its palette's colours (a cyan, gray or brown
  drawing comes back as a palette colour), so no LoRA on its latents can teach a new colour; it draws the alt
  shapes it never trained on (hearts and crosses come back as themselves), so a new shape can be taught.

The noise schedule, timestep sampling and tokenization are the default model's (``tools/train_default_model.py``).
Everything is seeded: the same command gives the same file on the same torch build and thread count.

Usage:
    venv/bin/python tools/train_examples.py embedding [--out embeddings/serena-night.safetensors] [--steps N]
    venv/bin/python tools/train_examples.py lora [--out models/Lora/serena-heart.safetensors] [--steps N]
    venv/bin/python tools/train_examples.py previews   # NAME.preview.png beside each shipped file, for its card
The exact commands that made the shipped files, with their times and scores, are in docs/models.md
("Shipped examples").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import shapes_dataset as ds  # noqa: E402
import train_default_model as tdm  # noqa: E402
from modules import sd_models_loader  # noqa: E402
from modules.checkpoint_info import CheckpointInfo  # noqa: E402
from modules.sd_pipeline import EMBEDDING_PLACEHOLDER  # noqa: E402

DEFAULT_CHECKPOINT = os.path.join(ROOT, "models", "Stable-diffusion", "serena-shapes-v1.safetensors")
EMBEDDING_NAME, EMBEDDING_BACKGROUND, EMBEDDING_VECTORS = "serena-night", "black", 2
LORA_NAME, LORA_SHAPE, LORA_RANK = "serena-heart", "heart", 4
SEED = 20261202  # what made the shipped files
#: The UNet's and the text encoder's layers the LoRA trains (module path suffixes).
UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
TEXT_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                "mlp.fc1", "mlp.fc2")


def plain_caption(rng: random.Random, s: ds.Sample, colour: str) -> str:
    """A caption of ``s`` naming ``colour`` and the shape (sometimes size and position), never the background."""
    return ds.caption_for(rng, colour, s.shape, s.background, s.size, s.position, say_size=rng.random() < 0.4,
                          say_position=rng.random() < 0.35, say_background=False)


def oracle_prompts() -> frozenset[str]:
    """The texts the prompt-adherence oracle scores with: each example's prompts, with and without its addition
    (a LoRA's tag is removed before conditioning), and the default model's benchmark prompts. No training
    caption is one of them, as the default model's training leaves out its benchmark."""
    import prompt_adherence

    out = {c.prompt for c in prompt_adherence.prompt_set()}
    for name, example in prompt_adherence.EXAMPLES.items():
        out |= {p for c in prompt_adherence.example_cases(name) for p in (c.prompt, c.prompt + example.addition)}
    return frozenset(out)


def embedding_data(n: int, seed: int):
    """Shapes on black, captioned ``"<shape caption>, serena-night"`` (never an oracle prompt)."""
    rng = random.Random(seed)
    fgs = tuple(c for c in ds.FOREGROUNDS if ds.contrast(c, EMBEDDING_BACKGROUND) >= ds.MIN_CONTRAST)
    exclude = oracle_prompts()
    images, masks, captions = [], [], []
    for _ in range(n):
        while True:
            s = ds.sample(rng, foregrounds=fgs, backgrounds=(EMBEDDING_BACKGROUND,))
            caption = f"{plain_caption(rng, s, s.colour)}, {EMBEDDING_NAME}"
            if caption not in exclude:
                break
        image, mask = ds.render(s.shape, ds.jitter_colour(rng, s.colour), ds.jitter_colour(rng, s.background, 6),
                                s.centre, s.diameter)
        images.append(np.asarray(image))
        masks.append(mask)
        captions.append(caption)
    return np.stack(images), np.stack(masks), captions


def lora_data(n: int, seed: int):
    """Half hearts (any foreground colour on any background) captioned like the default model's data, half the
    default model's own data; never an oracle prompt."""
    rng = random.Random(seed)
    exclude = oracle_prompts()
    images, masks, captions = [], [], []
    for i in range(n):
        if i % 2:
            image, mask, caption, _ = ds.generate(1, rng.randrange(2 ** 31), exclude=exclude)
            images.append(image[0])
            masks.append(mask[0])
            captions.append(caption[0])
            continue
        s = ds.sample(rng, shapes=(LORA_SHAPE,), exclude=exclude)
        image, mask = ds.render(s.shape, ds.jitter_colour(rng, s.colour), ds.jitter_colour(rng, s.background, 6),
                                s.centre, s.diameter)
        images.append(np.asarray(image))
        masks.append(mask)
        captions.append(s.caption)
    return np.stack(images), np.stack(masks), captions


class LoRALinear(torch.nn.Module):
    """``up(down(x)) * alpha / rank`` added to one Linear layer's output by a forward hook."""

    def __init__(self, layer: torch.nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.down = torch.nn.Parameter(torch.randn(rank, layer.in_features) / rank)
        self.up = torch.nn.Parameter(torch.zeros(layer.out_features, rank))
        self.alpha, self.rank = alpha, rank
        layer.register_forward_hook(self._add)

    def _add(self, module, args, output):
        return output + (args[0] @ self.down.T @ self.up.T) * (self.alpha / self.rank)


def attach_lora(model, rank: int, alpha: float) -> dict[str, LoRALinear]:
    """``{kohya layer name: LoRALinear}`` for every target layer of the UNet and the text encoder."""
    out = {}
    for prefix, root, targets in (("lora_unet_", model.unet, UNET_TARGETS), ("lora_te_", model.text_encoder,
                                                                             TEXT_TARGETS)):
        for path, module in root.named_modules():
            if isinstance(module, torch.nn.Linear) and path.endswith(targets):
                out[prefix + path.replace(".", "_")] = LoRALinear(module, rank, alpha)
    return out


def trigger_ids(tokenizer, captions: list[str], trigger: str, count: int) -> torch.Tensor:
    """Token ids as the prompt encoder builds them, the trigger word's ids replaced by ``count`` placeholders."""
    rows = tdm.tokenize(tokenizer, captions).tolist()
    word = tokenizer(trigger, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for row in rows:
        at = next(i for i in range(len(row)) if row[i:i + len(word)] == word)
        row = row[:at] + [EMBEDDING_PLACEHOLDER] * count + row[at + len(word):]
        out.append((row + [eos] * tdm.CHUNK)[:tdm.CHUNK + 2])
    return torch.tensor(out, dtype=torch.long)


def train(args, model, latents, weights, params, context_fn) -> None:
    """The default model's v-prediction objective on ``latents``, optimising ``params`` only; ``context_fn(idx)``
    is the text encoder's output for the samples ``idx``."""
    sched = DDPMScheduler.from_config(tdm.scheduler_config())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 2)
    t0 = time.time()
    for step in range(args.steps):
        idx = torch.randint(0, len(latents), (args.batch,), generator=gen)
        x0, w = latents[idx], weights[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = tdm.sample_timesteps(gen, len(idx))
        for g in opt.param_groups:
            g["lr"] = tdm.lr_at(step, args.steps, args.lr, 20)
        pred = model.unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=context_fn(idx)).sample
        loss = ((pred - sched.get_velocity(x0, noise, t)) ** 2 * w).mean() / w.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            tdm.log(f"step {step} loss {loss.item():.4f} ({time.time() - t0:.0f} s)")


def encode(model, images, masks):
    with torch.no_grad():
        latents = model.vae.encode(tdm.to_tensor(images)).latent_dist.mean * model.vae.config.scaling_factor
    m = torch.nn.functional.avg_pool2d(torch.from_numpy(masks)[:, None], 4)
    return latents, 1.0 + 2.0 * torch.nn.functional.max_pool2d(m, 3, stride=1, padding=1)


def write_previews() -> None:
    """``NAME.preview.png`` beside each shipped example, the image of its Extra Networks card: the first of its
    oracle prompts with it, generated by Serena (the built-in Lora extension loaded) as the oracle does."""
    import tempfile

    import prompt_adherence
    from PIL import Image

    folders = {"embedding": os.path.join(ROOT, "embeddings"), "lora": os.path.join(ROOT, "models", "Lora")}
    with tempfile.TemporaryDirectory() as data_dir:
        title = prompt_adherence.setup_serena(DEFAULT_CHECKPOINT, data_dir, examples=True)
        for example in prompt_adherence.EXAMPLES.values():
            cases = prompt_adherence.with_addition(prompt_adherence.example_cases(example.name)[:1], example)
            image = prompt_adherence.generate(cases, title, steps=20, sampler="Euler a", cfg=4.0, size=64)[0][0]
            path = os.path.join(folders[example.kind], f"{example.name}.preview.png")
            image.resize((256, 256), Image.Resampling.NEAREST).save(path)
            tdm.log(f"wrote {path}: {cases[0].prompt}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("embedding", "lora", "previews"))
    parser.add_argument("--out", help="default: embeddings/serena-night.safetensors, models/Lora/serena-heart.safetensors")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--images", type=int, default=None, help="default: 256 (embedding), 512 (lora)")
    parser.add_argument("--steps", type=int, default=None, help="default: 200 (embedding), 800 (lora)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="default: 3e-2 (embedding), 1e-2 (lora)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.kind == "previews":
        write_previews()
        return 0
    embedding = args.kind == "embedding"
    # The defaults are what made the shipped files.
    args.images = args.images or (256 if embedding else 512)
    args.steps = args.steps or (200 if embedding else 800)
    args.lr = args.lr or (3e-2 if embedding else 1e-2)
    args.out = args.out or (os.path.join(ROOT, "embeddings", f"{EMBEDDING_NAME}.safetensors") if embedding
                            else os.path.join(ROOT, "models", "Lora", f"{LORA_NAME}.safetensors"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()
    model = sd_models_loader.load_checkpoint(CheckpointInfo(args.checkpoint, os.path.basename(args.checkpoint),
                                                            "0" * 64))
    for part in (model.unet, model.text_encoder, model.vae):
        part.requires_grad_(False)
    images, masks, captions = (embedding_data if embedding else lora_data)(args.images, args.seed)
    latents, weights = encode(model, images, masks)
    training = {"tool": "tools/train_examples.py", "kind": args.kind, "seed": args.seed, "steps": args.steps,
                "batch": args.batch, "lr": args.lr, "images": args.images,
                "checkpoint": os.path.basename(args.checkpoint)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if embedding:
        table = model.text_encoder.get_input_embeddings()
        vectors = torch.nn.Parameter(torch.randn(EMBEDDING_VECTORS, table.embedding_dim) * table.weight.std())
        ids = trigger_ids(model.tokenizer, captions, EMBEDDING_NAME, EMBEDDING_VECTORS)
        starts = (ids == EMBEDDING_PLACEHOLDER).float().argmax(1)
        batch_starts = []

        def substitute(module, inputs, output):
            # The vectors in place of the placeholders' token embeddings, as the prompt encoder's hook does.
            output = output.clone()
            rows = torch.arange(len(output))
            for k in range(EMBEDDING_VECTORS):
                output[rows, batch_starts[-1] + k] = vectors[k]
            return output

        def context(idx):
            batch_starts.append(starts[idx])
            return model.text_encoder(ids[idx])[0]

        handle = table.register_forward_hook(substitute)
        train(args, model, latents, weights, [vectors], context)
        handle.remove()
        save_file({"emb_params": vectors.detach().float().contiguous()}, args.out,
                  metadata={"serena_training": json.dumps(training, sort_keys=True)})
    else:
        layers = attach_lora(model, LORA_RANK, float(LORA_RANK))
        params = [p for layer in layers.values() for p in (layer.down, layer.up)]
        ids = tdm.tokenize(model.tokenizer, captions)
        train(args, model, latents, weights, params, lambda idx: model.text_encoder(ids[idx])[0])
        tensors = {}
        for name, layer in sorted(layers.items()):
            tensors[f"{name}.lora_down.weight"] = layer.down.detach().half().contiguous()
            tensors[f"{name}.lora_up.weight"] = layer.up.detach().half().contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(layer.alpha, dtype=torch.float16)
        save_file(tensors, args.out, metadata={"ss_network_dim": str(LORA_RANK), "ss_network_alpha": str(LORA_RANK),
                                               "ss_network_module": "networks.lora",
                                               "serena_training": json.dumps(training, sort_keys=True)})
    tdm.log(f"wrote {args.out} ({os.path.getsize(args.out):,} B) in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
