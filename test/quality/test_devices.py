"""The GPU path's decisions (issue 17, item 7) as pure functions of the flags and ``TorchFacts``, tested on the CPU
by passing facts in; and their execution on a real tiny model (attention processors, offload, compile, VAE dtype).
"""

from __future__ import annotations

import copy
import itertools
import os

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from modules import cmd_args, devices, model_placement, paths, sd_models_loader as loader
from modules.checkpoint_info import CheckpointInfo
from modules.devices import Placement, TorchFacts

CPU_ONLY = TorchFacts()
ONE_GPU = TorchFacts(cuda_devices=1)
AMPERE = TorchFacts(cuda_devices=2, cuda_bf16=True)
MAC = TorchFacts(mps=True)


def flags(*argv):
    return cmd_args.parse_args(list(argv))


@pytest.mark.parametrize("argv, facts, device", [
    ([], CPU_ONLY, "cpu"), ([], ONE_GPU, "cuda:0"), ([], MAC, "mps"),
    (["--device-id", "1"], AMPERE, "cuda:1"), (["--use-cpu", "SD"], AMPERE, "cpu"),
    (["--use-cpu", "all"], MAC, "cpu"), (["--use-cpu", "interrogate"], ONE_GPU, "cuda:0"),
    (["--device-id", "3"], MAC, "mps"),  # no CUDA: the id means nothing
])
def test_the_device_follows_the_flags_and_the_machine(argv, facts, device):
    assert devices.choose_device(flags(*argv), facts) == device


def test_a_device_id_past_the_last_gpu_is_named(capsys):
    with pytest.raises(devices.DeviceFlagError, match=r"--device-id 1: this machine has 1 CUDA device\(s\), 0 to 0"):
        devices.choose_device(flags("--device-id", "1"), ONE_GPU)
    assert flags("--device-id", "1").device_id == "1"  # a string, as A1111's cmd-flags shows it
    with pytest.raises(SystemExit):
        flags("--device-id", "-1")
    assert "expected a CUDA device number" in capsys.readouterr().err


@pytest.mark.parametrize("argv, facts, dtypes", [
    ([], CPU_ONLY, ("float32", "float32")),
    (["--precision", "half"], CPU_ONLY, ("float32", "float32")),       # the CPU always runs float32
    ([], ONE_GPU, ("float16", "float16")),
    ([], AMPERE, ("float16", "bfloat16")),                               # the VAE in bf16: float32's range
    (["--no-half-vae"], AMPERE, ("float16", "float32")),
    (["--no-half"], AMPERE, ("float32", "float32")),
    (["--precision", "full"], ONE_GPU, ("float32", "float32")),
    (["--precision", "autocast"], ONE_GPU, ("float16", "float16")),
    ([], MAC, ("float16", "float16")),
    (["--no-half-vae"], MAC, ("float16", "float32")),
])
def test_precision_follows_the_rule(argv, facts, dtypes):
    where = devices.placement(flags(*argv), facts)
    assert (where.dtype, where.vae_dtype) == dtypes


def test_every_flag_combination_gives_a_consistent_placement():
    options = [[], ["--no-half"], ["--no-half-vae"], ["--medvram"], ["--lowvram"], ["--opt-sdp-no-mem-attention"],
               ["--use-cpu", "all"], ["--precision", "full"]]
    for facts in (CPU_ONLY, ONE_GPU, AMPERE, MAC):
        for a, b in itertools.combinations(options, 2):
            where = devices.placement(flags(*a, *b), facts)
            assert where.device == devices.choose_device(flags(*a, *b), facts)
            assert (where.dtype == "float32") <= (where.vae_dtype == "float32" or where.device == "cpu")
            assert where.offload is None or where.device.startswith("cuda")
            assert where.load_device == ("cpu" if where.offload else where.device)
            if where.device == "cpu":
                assert (where.dtype, where.vae_dtype, where.offload) == ("float32", "float32", None)


@pytest.mark.parametrize("argv, facts, offload", [
    (["--medvram"], ONE_GPU, "model"), (["--lowvram"], ONE_GPU, "sequential"),
    (["--medvram", "--lowvram"], ONE_GPU, "sequential"), (["--medvram"], CPU_ONLY, None), (["--lowvram"], MAC, None),
    ([], ONE_GPU, None),
])
def test_offload_only_on_cuda(argv, facts, offload):
    assert devices.placement(flags(*argv), facts).offload == offload


def test_attention_flags():
    assert devices.placement(flags("--opt-sdp-attention"), ONE_GPU).attention == "sdp"
    assert devices.placement(flags(), ONE_GPU).attention == "sdp"
    assert devices.placement(flags("--opt-sdp-no-mem-attention"), ONE_GPU).attention == "sdp-no-mem"


def test_probe_reads_this_machine():
    facts = TorchFacts.probe()
    assert facts.cuda_devices == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert devices.placement_for(flags("--use-cpu", "all")) == Placement()


# --- carrying a placement out on a real tiny model -----------------------------------------------------------------

TINY = CheckpointInfo(os.path.join(paths.script_path, "models", "Stable-diffusion", "serena-tiny-v1.safetensors"),
                      "tiny", "0" * 64)


@pytest.fixture(scope="module")
def loaded():
    return loader.load_checkpoint(TINY)


@pytest.fixture
def tiny(loaded):
    return copy.deepcopy(loaded)  # each test places its own copy


def run_networks(model):
    """One call of each network the way the pipeline makes them; returns their outputs."""
    with torch.inference_mode():
        ids = torch.tensor([[49406, 320, 49407] + [49407] * 74])
        hidden = model.text_encoder(ids).last_hidden_state
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        pred = model.unet(latents, torch.tensor([500.0]), encoder_hidden_states=hidden).sample
        image = model.vae.decode(latents.to(model.vae.dtype)).sample
    return hidden, pred, image


def test_sdp_attention_is_set_everywhere_and_the_no_mem_variant_gives_the_same_numbers(tiny):
    before = run_networks(tiny)
    model_placement.apply(tiny, Placement())
    processors = list(tiny.unet.attn_processors.values()) + list(tiny.vae.attn_processors.values())
    assert processors and all(type(p) is AttnProcessor2_0 for p in processors)
    model_placement.apply(tiny, Placement(attention="sdp-no-mem"))
    assert all(isinstance(p, model_placement.SdpNoMemProcessor) for p in tiny.unet.attn_processors.values())
    for a, b in zip(before, run_networks(tiny)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_model_offload_keeps_one_network_on_the_device_at_a_time(tiny):
    before = run_networks(tiny)
    model_placement.apply(tiny, Placement(offload="model"))
    after = run_networks(tiny)
    run_networks(tiny)
    assert tiny.offload.moves == ["text_encoder", "unet", "vae", "text_encoder", "unet", "vae"]
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b)


def test_sequential_offload_gives_the_same_numbers(tiny):
    before = run_networks(tiny)
    model_placement.apply(tiny, Placement(offload="sequential"))
    assert any(hasattr(m, "_hf_hook") for m in tiny.unet.modules())
    for a, b in zip(before, run_networks(tiny)):
        torch.testing.assert_close(a, b)


def test_the_vae_runs_in_its_own_dtype_and_an_external_vae_follows(tiny, loaded):
    model_placement.apply(tiny, Placement(vae_dtype="bfloat16"))
    assert tiny.vae.dtype == torch.bfloat16 and tiny.unet.dtype == torch.float32
    assert tiny.facts == loader.inspect_checkpoint(TINY.filename)  # the model's own VAE is the one cast
    other = copy.deepcopy(loaded.vae)
    tiny.apply_vae(other, "other.safetensors")
    assert tiny.vae.dtype == torch.bfloat16
    with torch.inference_mode():
        assert tiny.vae.decode(torch.zeros(1, 4, 8, 8, dtype=torch.bfloat16)).sample.dtype == torch.bfloat16


def test_compile_is_opt_in_and_in_place(tiny):
    unet = tiny.unet
    model_placement.apply(tiny, Placement())
    assert tiny.unet._compiled_call_impl is None
    model_placement.apply(tiny, Placement(), compile_unet=True)
    assert tiny.unet is unet and tiny.unet._compiled_call_impl is not None and tiny.unet.config.in_channels == 4


def test_a_dtype_name_that_is_not_one_is_refused():
    assert model_placement.torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="not a torch dtype: 'cuda'"):
        model_placement.torch_dtype("cuda")
