"""Train Serena's embedded default model from scratch on the CPU: a small SD1.x-architecture model that draws shapes.

The model is made of the stock classes a real SD1.x checkpoint loads into (transformers ``CLIPTextModel``, diffusers
``UNet2DConditionModel`` and ``AutoencoderKL``), with the real CLIP BPE tokenizer (``modules/sd_configs/tokenizer``),
and is written as an A1111-style single-file ``.safetensors`` by ``sd_models_writer.save_ldm_checkpoint``: the
normal checkpoint loader reads it, and its ``serena_config`` metadata carries the small component configs and the
scheduler config every sampler is built from.

Recipe (see docs/models.md for the measured numbers):

1. VAE: 64x64 RGB -> 16x16x4 latent (scale factor 4); L1 + MSE + an image-gradient L1 term (keeps corners sharp)
   + a tiny KL; trained on freshly drawn images; ``scaling_factor`` set to 1/std of the training latents.
2. Data: ``tools/shapes_dataset.py`` images, encoded once to latents (posterior means); captions tokenized exactly
   as Serena's prompt encoder does (start token, up to 75 tokens, end token, padding to 77 with the end token).
   The prompt-adherence benchmark's prompts are excluded verbatim.
3. UNet + text encoder, jointly, from scratch: DDPM schedule scaled_linear 0.00085-0.012 rescaled to zero terminal
   SNR, v-prediction, "trailing" spacing (so pure noise at the first sampling step carries no colour hint);
   timesteps drawn 40% uniform, 30% with density proportional to t (noisy end), 30% around the middle (layout);
   the loss is weighted 3x on and around the shape; 10% empty captions for classifier-free guidance; AdamW with
   warm-up and cosine decay, gradient clipping; EMA of the weights is what ships.
4. The checkpoint declares how it is sampled (``serena_config.sampling``): CFG rescale 1.0, which the sampling
   loop applies (plain CFG over-saturates a zero-terminal-SNR model, Lin et al.), and a recommended CFG scale of 4,
   which Serena's UI and CLI start with (at A1111's 7, pink and orange come out too light).

The defaults are the shipped recipe (about 37 minutes on an idle 2-core CPU). Everything is seeded (``--seed``)
and runs on ``torch.set_num_threads(--threads)``: the same command gives the same weights on the same torch build
and thread count. ``--alt`` trains the second shipped checkpoint: other shapes and palette
(``--vae-init`` reuses the default model's VAE; ``--init`` starts from another checkpoint's UNet and text encoder).
Staged runs: ``--vae-only`` (the VAE only), ``--init`` (continue training), ``--assemble`` (swap a VAE in,
set the sampling recommendations).
The exact commands that made the shipped files are in docs/models.md.

Usage:
    venv/bin/python tools/train_default_model.py --out models/Stable-diffusion/serena-shapes-v1.safetensors
Logs go to stdout; intermediate files (VAE, raw non-EMA weights) to ``--work-dir`` (default /tmp/serena-train).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

import shapes_dataset as ds  # noqa: E402
from modules import sd_models_loader, sd_models_writer  # noqa: E402

UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=16,
    block_out_channels=(32, 32, 64, 64), cross_attention_dim=64, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
VAE_CONFIG = dict(
    sample_size=64, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
    block_out_channels=(16, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3, scaling_factor=1.0,
)
TEXT_CONFIG = dict(
    vocab_size=49408, max_position_embeddings=77, hidden_size=64, intermediate_size=128, num_attention_heads=4,
    num_hidden_layers=2, projection_dim=64, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
    pad_token_id=49407,
)
SCHEDULER_OVERRIDES = dict(
    _class_name="DDIMScheduler", prediction_type="v_prediction", rescale_betas_zero_snr=True,
    timestep_spacing="trailing", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)
CHUNK = 75


def scheduler_config() -> dict:
    config = dict(sd_models_loader.default_configs()["scheduler"])
    config.pop("skip_prk_steps", None)
    config.update(SCHEDULER_OVERRIDES)
    return config


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids exactly as ``modules.sd_pipeline.PromptEncoder`` builds them for a plain prompt (77 per caption)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    cache: dict[str, list[int]] = {}
    rows = []
    for caption in captions:
        if caption not in cache:
            ids = tokenizer(caption, add_special_tokens=False)["input_ids"][:CHUNK] if caption else []
            cache[caption] = [bos] + ids + [eos] + [pad] * (CHUNK - len(ids))
        rows.append(cache[caption])
    return torch.tensor(rows, dtype=torch.long)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1 - d)


# --- VAE ----------------------------------------------------------------------------------------------------------

def image_grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dxa, dxb = a[..., :, 1:] - a[..., :, :-1], b[..., :, 1:] - b[..., :, :-1]
    dya, dyb = a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :]
    return (dxa - dxb).abs().mean() + (dya - dyb).abs().mean()


def train_vae(args, data_kw) -> AutoencoderKL:
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    log(f"VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters, {args.vae_steps} steps")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    t0 = time.time()
    for step in range(args.vae_steps):
        images, masks, _, _ = ds.generate(args.vae_batch, args.seed * 7919 + 100_000 + step, **data_kw)
        x = to_tensor(images)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.vae_steps, args.vae_lr, 50)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=torch.Generator().manual_seed(step))
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        loss = l1 + F.mse_loss(rec, x) + 0.5 * image_grad_l1(rec, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.vae_steps - 1:
            log(f"vae step {step} loss {loss.item():.4f} l1 {l1.item():.4f} ({time.time() - t0:.0f} s)")
    vae.eval()
    with torch.no_grad():
        images, _, _, _ = ds.generate(512, args.seed + 31337, **data_kw)
        x = to_tensor(images)
        z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        held_l1 = (rec - x).abs().mean().item()
        scale = 1.0 / z.std().item()
    vae.register_to_config(scaling_factor=round(scale, 5))
    log(f"VAE held-out L1 {held_l1:.4f}, latent std {1 / scale:.3f} -> scaling_factor {scale:.5f}, "
        f"{time.time() - t0:.0f} s")
    return vae


# --- UNet + text encoder --------------------------------------------------------------------------------------------

def encode_dataset(args, vae, tokenizer, data_kw, exclude):
    t0 = time.time()
    latents, weights, ids = [], [], []
    scale = vae.config.scaling_factor
    per = 2000
    for start in range(0, args.images, per):
        n = min(per, args.images - start)
        images, masks, captions, _ = ds.generate(n, args.seed * 1_000_003 + start, exclude=exclude, **data_kw)
        with torch.no_grad():
            for i in range(0, n, 250):
                latents.append(vae.encode(to_tensor(images[i:i + 250])).latent_dist.mean * scale)
        m = torch.from_numpy(masks)[:, None]
        # Shape area and a 1-latent-pixel ring around it, at latent resolution.
        m = F.max_pool2d(F.avg_pool2d(m, 4), 3, stride=1, padding=1)
        weights.append(1.0 + 2.0 * m)
        ids.append(tokenize(tokenizer, captions))
    latents = torch.cat(latents)
    log(f"encoded {len(latents)} images in {time.time() - t0:.0f} s; latent std {latents.std():.3f}")
    return latents, torch.cat(weights), torch.cat(ids)


def sample_timesteps(gen: torch.Generator, n: int, T: int = 1000) -> torch.Tensor:
    u = torch.rand(n, generator=gen)
    kind = torch.rand(n, generator=gen)
    noisy = torch.sqrt(torch.rand(n, generator=gen))  # density proportional to t
    mid = (torch.rand(n, generator=gen) + torch.rand(n, generator=gen) + torch.rand(n, generator=gen)) / 3
    mid = 0.15 + 0.75 * mid  # centred near t = 600
    x = torch.where(kind < 0.4, u, torch.where(kind < 0.7, noisy, mid))
    return (x * T).long().clamp(0, T - 1)


def train_unet(args, vae, tokenizer, data_kw, exclude, init=None):
    torch.manual_seed(args.seed + 1)
    if init is not None:
        unet, text_encoder = init.unet, init.text_encoder
        unet.train().requires_grad_(True)
        text_encoder.train().requires_grad_(True)
    else:
        unet = UNet2DConditionModel(**UNET_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    unet.train()
    text_encoder.train()
    log(f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M, text encoder "
        f"{sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M parameters")
    latents, weights, ids = encode_dataset(args, vae, tokenizer, data_kw, exclude)
    empty_ids = tokenize(tokenizer, [""])[0]
    sched = DDPMScheduler.from_config(scheduler_config())
    assert float(sched.alphas_cumprod[-1]) < 1e-6, "zero terminal SNR expected"
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    ema_unet, ema_text = EMA(unet, args.ema), EMA(text_encoder, args.ema)
    gen = torch.Generator().manual_seed(args.seed + 2)
    n = len(latents)
    order = torch.randperm(n, generator=gen)
    cursor = 0
    t0 = time.time()
    running = None
    step = 0
    for step in range(args.unet_steps):
        if cursor + args.batch > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor:cursor + args.batch]
        cursor += args.batch
        x0, w, tok = latents[idx], weights[idx], ids[idx].clone()
        drop = torch.rand(len(idx), generator=gen) < args.empty_fraction
        tok[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=gen)
        t = sample_timesteps(gen, len(idx))
        noisy = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.unet_steps, args.lr, args.warmup)
        context = text_encoder(tok)[0]
        pred = unet(noisy, t, encoder_hidden_states=context).sample
        loss = ((pred - target) ** 2 * w).mean() / w.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet, step)
        ema_text.update(text_encoder, step)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        elapsed = time.time() - t0
        if step % 50 == 0 or step == args.unet_steps - 1:
            log(f"unet step {step} loss {loss.item():.4f} avg {running:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({elapsed:.0f} s, {elapsed / (step + 1):.2f} s/step)")
        if args.max_steps and step + 1 >= args.max_steps:
            log(f"stopping after {step + 1} steps (--max-steps)")
            break
        if args.time_limit and elapsed > args.time_limit * 60:
            log(f"time limit reached after {step + 1} steps")
            break
    log(f"UNet training: {step + 1} steps in {time.time() - t0:.0f} s")
    return ema_unet.model, ema_text.model, unet.eval(), text_encoder.eval(), step + 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the .safetensors checkpoint to write")
    parser.add_argument("--alt", action="store_true", help="the alt model's shapes and palette")
    parser.add_argument("--init", help="start from this checkpoint's UNet, text encoder and VAE (no VAE training)")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--vae-init", help="a VAE file (save_ldm_vae) to use instead of training one")
    parser.add_argument("--vae-only", action="store_true",
                        help="only train the VAE: write WORK_DIR/vae.safetensors and stop")
    parser.add_argument("--assemble", metavar="CKPT",
                        help="write --out as CKPT with its VAE replaced by --vae-init (if given) and "
                             "--guidance-rescale (for staged runs)")
    parser.add_argument("--images", type=int, default=48000)
    parser.add_argument("--unet-steps", type=int, default=1750)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--empty-fraction", type=float, default=0.1)
    parser.add_argument("--max-steps", type=int, default=0,
                        help="stop after this many steps; the learning-rate schedule still spans --unet-steps")
    parser.add_argument("--time-limit", type=float, default=0.0, help="stop UNet training after this many minutes")
    parser.add_argument("--guidance-rescale", type=float, default=1.0,
                        help="the CFG rescale factor the checkpoint declares for sampling (0 to 1)")
    parser.add_argument("--cfg-scale", type=float, default=4.0,
                        help="the CFG scale the checkpoint recommends (Serena's UI and CLI start with it)")
    parser.add_argument("--work-dir", default="/tmp/serena-train")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; use 1 when other work shares the CPU (2 contended threads wait on each "
                             "other and run several times slower)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.work_dir, exist_ok=True)
    t_start = time.time()
    data_kw = dict(shapes=ds.ALT_SHAPES, foregrounds=ds.ALT_FOREGROUNDS, backgrounds=ds.ALT_BACKGROUNDS) \
        if args.alt else {}
    import prompt_adherence
    exclude = frozenset(c.prompt for c in prompt_adherence.prompt_set(alt=args.alt))
    tokenizer = sd_models_loader.load_tokenizer()
    sampling = {"guidance_rescale": args.guidance_rescale, "cfg_scale": args.cfg_scale}

    if args.assemble:
        from modules.checkpoint_info import CheckpointInfo
        info = CheckpointInfo(args.assemble, os.path.basename(args.assemble), "0" * 64)
        model = sd_models_loader.load_checkpoint(info)
        _, meta = sd_models_loader.read_state_dict(args.assemble)
        training = json.loads(meta.get("serena_training", "{}"))
        if args.vae_init:
            training["vae"] = os.path.basename(args.vae_init)
        sd_models_writer.save_ldm_checkpoint(
            args.out, unet=model.unet, vae=sd_models_loader.load_vae(args.vae_init) if args.vae_init else model.vae,
            text_encoder=model.text_encoder, scheduler_config=scheduler_config(), dtype=torch.float16,
            sampling=sampling, extra_metadata={"serena_training": json.dumps(training, sort_keys=True)})
        log(f"wrote {args.out} ({os.path.getsize(args.out):,} B)")
        return 0

    init = None
    if args.init:
        from modules.checkpoint_info import CheckpointInfo
        init = sd_models_loader.load_checkpoint(CheckpointInfo(args.init, os.path.basename(args.init), "0" * 64))
        vae = init.vae
        log(f"initialised from {args.init}")
    else:
        if args.vae_init:
            vae = sd_models_loader.load_vae(args.vae_init)
        else:
            vae = train_vae(args, data_kw)
            sd_models_writer.save_ldm_vae(os.path.join(args.work_dir, "vae.safetensors"), vae, dtype=torch.float32)
        if args.vae_only:
            return 0
    vae.requires_grad_(False).eval()

    unet, text_encoder, raw_unet, raw_text, steps = train_unet(args, vae, tokenizer, data_kw, exclude, init)
    meta = {
        "serena_training": json.dumps({
            "tool": "tools/train_default_model.py", "seed": args.seed, "alt": args.alt,
            "init": os.path.basename(args.init) if args.init else None,
            "vae": os.path.basename(args.vae_init) if args.vae_init else None,
            "vae_steps": 0 if args.init or args.vae_init else args.vae_steps,
            "unet_steps": steps, "batch": args.batch, "lr": args.lr, "images": args.images, "ema": args.ema,
        }, sort_keys=True),
    }
    sd_models_writer.save_ldm_checkpoint(args.out, unet=unet, vae=vae, text_encoder=text_encoder,
                                         scheduler_config=scheduler_config(), dtype=torch.float16,
                                         extra_metadata=meta, sampling=sampling)
    raw = os.path.join(args.work_dir, "raw-" + os.path.basename(args.out))
    sd_models_writer.save_ldm_checkpoint(raw, unet=raw_unet, vae=vae, text_encoder=raw_text,
                                         scheduler_config=scheduler_config(), dtype=torch.float16,
                                         extra_metadata=meta, sampling=sampling)
    log(f"wrote {args.out} ({os.path.getsize(args.out):,} B; non-EMA weights in {raw}); "
        f"total {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
