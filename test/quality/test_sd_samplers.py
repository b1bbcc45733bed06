"""modules.sd_schedules and modules.sd_samplers: schedule types, samplers over explicit sigmas, name resolution."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from modules.sd_samplers import (
    resolve_sampler,
    resolve_sampler_and_scheduler,
    resolve_scheduler,
    samplers_for_api,
    schedulers_for_api,
    sigmas_for,
)
from modules.sd_schedules import ModelSchedule, all_schedulers

SD15 = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
        "steps_offset": 1, "prediction_type": "epsilon"}
# Serena's embedded model: zero terminal SNR, v-prediction, trailing spacing (a PNDM/DDPM-style config).
ZERO_SNR = dict(SD15, prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
                steps_offset=0, skip_prk_steps=True, _class_name="DDPMScheduler")
CONFIGS = {"sd15": SD15, "zero_snr": ZERO_SNR}

A1111_SCHEDULERS = [  # (name, label, aliases, default_rho, need_inner_model) as A1111 1.10 lists them
    ("automatic", "Automatic", None, -1, False), ("uniform", "Uniform", None, -1, True),
    ("karras", "Karras", None, 7.0, False), ("exponential", "Exponential", None, -1, False),
    ("polyexponential", "Polyexponential", None, 1.0, False), ("sgm_uniform", "SGM Uniform", ["SGMUniform"], -1, True),
    ("kl_optimal", "KL Optimal", None, -1, False), ("align_your_steps", "Align Your Steps", None, -1, False),
    ("simple", "Simple", None, -1, True), ("normal", "Normal", None, -1, True), ("ddim", "DDIM", None, -1, True),
    ("beta", "Beta", None, -1, True),
]
A1111_SAMPLERS = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
                  "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DDIM", "PLMS", "UniPC", "LCM"]
EULER = resolve_sampler("Euler")


def _model(name):
    return ModelSchedule(CONFIGS[name])


def test_schedulers_for_api_are_a1111s():
    assert [tuple(s.values()) for s in schedulers_for_api()] == A1111_SCHEDULERS
    assert all(list(s) == ["name", "label", "aliases", "default_rho", "need_inner_model"] for s in schedulers_for_api())


def test_samplers_for_api_shape():
    by_name = {s["name"]: s for s in samplers_for_api()}
    assert list(by_name) == A1111_SAMPLERS
    assert by_name["Euler a"] == {"name": "Euler a", "aliases": ["k_euler_a", "k_euler_ancestral"],
                                  "options": {"uses_ensd": "True"}}
    assert by_name["DPM++ 2M"]["options"] == {"scheduler": "karras"}
    assert by_name["DPM2"]["options"]["discard_next_to_last_sigma"] == "True"
    # A1111's SamplerItem.options is dict[str, str]: clients that check types (aaa1111) refuse anything else.
    assert all(isinstance(v, str) for s in by_name.values() for v in s["options"].values())
    assert all(set(s) == {"name", "aliases", "options"} for s in by_name.values())


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("scheduler", [s.label for s in all_schedulers])
@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_every_schedule_is_decreasing_finite_and_ends_at_zero(scheduler, steps, config_name):
    model = _model(config_name)
    sigmas = sigmas_for(EULER, resolve_scheduler(scheduler), steps, model)
    assert sigmas.dtype == torch.float64 and torch.isfinite(sigmas).all()
    assert float(sigmas[-1]) == 0.0 and (sigmas[:-1] > 0).all()
    assert (sigmas[1:] < sigmas[:-1]).all(), sigmas
    # A1111's DDIM schedule takes every (1000 // n)-th level, which can give one level more than asked for.
    assert len(sigmas) == steps + 1 or (scheduler == "DDIM" and len(sigmas) == steps + 2)
    if scheduler in ("Karras", "Exponential", "Polyexponential", "KL Optimal", "Beta", "Normal", "SGM Uniform",
                     "Uniform", "Simple"):
        assert math.isclose(float(sigmas[0]), model.sigma_max, rel_tol=1e-9)
    if scheduler == "Align Your Steps" and steps > 1:  # one step is the table's last level, as in A1111
        assert math.isclose(float(sigmas[0]), 14.615, rel_tol=1e-9)


def test_karras_and_exponential_match_their_formulas():
    model = _model("sd15")
    lo, hi, n = model.sigma_min, model.sigma_max, 10
    karras = sigmas_for(EULER, resolve_scheduler("karras"), n, model)[:-1]
    expected = [(hi ** (1 / 7) + i / (n - 1) * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7 for i in range(n)]
    torch.testing.assert_close(karras, torch.tensor(expected, dtype=torch.float64))
    exponential = sigmas_for(EULER, resolve_scheduler("exponential"), n, model)[:-1]
    ratio = exponential[1:] / exponential[:-1]
    torch.testing.assert_close(ratio, torch.full_like(ratio, (lo / hi) ** (1 / (n - 1))))
    assert math.isclose(float(exponential[-1]), lo, rel_tol=1e-9)


def test_align_your_steps_is_the_published_table_at_ten_steps():
    sigmas = sigmas_for(EULER, resolve_scheduler("Align Your Steps"), 11, _model("sd15"))
    torch.testing.assert_close(sigmas[:-1], torch.tensor([14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652,
                                                          0.399, 0.152, 0.029], dtype=torch.float64))


def test_automatic_is_the_sampler_default_or_the_models_own_spacing():
    sd15, zero = _model("sd15"), _model("zero_snr")
    auto = resolve_scheduler("automatic")
    dpm = resolve_sampler("DPM++ 2M")
    assert torch.equal(sigmas_for(dpm, auto, 20, sd15), sigmas_for(EULER, resolve_scheduler("karras"), 20, sd15))
    # A zero-SNR model keeps its own (trailing) spacing: timesteps 999, 949, ..., 49.
    expected = zero.t_to_sigma(torch.arange(999, 0, -50, dtype=torch.float64))
    torch.testing.assert_close(sigmas_for(dpm, auto, 20, zero)[:-1], expected)
    assert math.isclose(float(expected[0]), (1 - 2**-24) ** 0.5 / 2**-12, rel_tol=1e-6)  # sigma_max ~ 4096
    # SD1.5's leading spacing with steps_offset 1: timesteps 951, 901, ..., 1.
    torch.testing.assert_close(sigmas_for(EULER, auto, 20, sd15)[:-1],
                               sd15.t_to_sigma(torch.arange(951, 0, -50, dtype=torch.float64)))


def test_discard_next_to_last_sigma():
    model = _model("sd15")
    karras = resolve_scheduler("karras")
    full = sigmas_for(EULER, karras, 21, model)
    assert torch.equal(sigmas_for(resolve_sampler("DPM2"), karras, 20, model), torch.cat([full[:-2], full[-1:]]))


@settings(max_examples=50, deadline=None)
@given(sigma=st.floats(0.03, 14.0))
def test_sigma_and_timestep_round_trip(sigma):
    model = _model("sd15")
    t = model.sigma_to_t(sigma)
    assert 0 <= float(t) <= 999
    assert math.isclose(float(model.t_to_sigma(t)), sigma, rel_tol=1e-9)


def test_training_sigmas_map_to_their_timesteps():
    model = _model("zero_snr")
    torch.testing.assert_close(model.sigma_to_t(model.sigmas[[0, 49, 500, 999]]),
                               torch.tensor([0, 49, 500, 999], dtype=torch.float64))


@pytest.mark.parametrize("prediction_type, output, expected", [
    ("epsilon", lambda x, s, x0, eps: eps, "x0"), ("v_prediction", lambda x, s, x0, eps: (eps - s * x0) / (1 + s * s) ** 0.5, "x0"),
    ("sample", lambda x, s, x0, eps: x0, "x0"),
])
def test_scalings_recover_the_clean_latent(prediction_type, output, expected):
    model = ModelSchedule(dict(SD15, prediction_type=prediction_type))
    x0, eps, sigma = torch.randn(4), torch.randn(4), 3.0
    x = x0 + eps * sigma  # k-diffusion's scaling: the model sees c_in * x = the VP latent
    c_in, c_skip, c_out = model.scalings(sigma)
    vp = x * c_in
    assert torch.allclose(vp, (x0 + eps * sigma) / (1 + sigma**2) ** 0.5)
    torch.testing.assert_close(x * c_skip + output(vp, sigma, x0, eps) * c_out, x0)


def test_zero_terminal_snr_is_kept():
    model = _model("zero_snr")
    assert model.zero_snr and model.prediction_type == "v_prediction"
    assert math.isclose(model.sigma_max, ((1 - 2**-24) / 2**-24) ** 0.5)
    assert math.isclose(_model("sd15").sigma_max, 14.6146, rel_tol=1e-4)


def _toy_denoiser(x, sigma, step):
    return torch.tanh(x / (1 + sigma**2) ** 0.5) * 0.8


@pytest.mark.parametrize("sampler", A1111_SAMPLERS)
def test_every_sampler_reaches_a_clean_sample_on_any_schedule(sampler):
    data = resolve_sampler(sampler)
    model = _model("sd15")
    for scheduler in all_schedulers:
        sigmas = sigmas_for(data, scheduler, 6, model)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 4, 4, generator=g, dtype=torch.float64) * float(sigmas[0])
        out = data.function(_toy_denoiser, x, sigmas, lambda: torch.randn(1, 4, 4, 4, generator=g,
                                                                         dtype=torch.float64), data.default_eta)
        assert torch.isfinite(out).all(), (sampler, scheduler.label)
        assert float(out.abs().max()) < 1.0, (sampler, scheduler.label)  # a denoised tanh sample, not noise


def test_ddim_with_eta_zero_is_euler():
    sigmas = sigmas_for(EULER, resolve_scheduler("uniform"), 8, _model("sd15"))
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64) * float(sigmas[0])
    ddim = resolve_sampler("DDIM")
    assert ddim.default_eta == 0.0
    torch.testing.assert_close(ddim.function(_toy_denoiser, x, sigmas, None, 0.0),
                               EULER.function(_toy_denoiser, x, sigmas, None, 0.0))


@pytest.mark.parametrize("name, expected", [
    ("Euler a", "Euler a"), ("euler a", "Euler a"), ("EULER A", "Euler a"), ("euler_a", "Euler a"),
    ("k_euler_a", "Euler a"), ("k_euler_ancestral", "Euler a"), (" Euler ", "Euler"), ("k_dpmpp_2m", "DPM++ 2M"),
    ("dpm++_2m_sde", "DPM++ 2M SDE"), ("ddim", "DDIM"), ("plms", "PLMS"), ("k_dpm_2_a", "DPM2 a"),
    ("k_lms", "LMS"), ("k_dpmpp_2s_a", "DPM++ 2S a"),
])
def test_resolve_sampler(name, expected):
    assert resolve_sampler(name).name == expected


@pytest.mark.parametrize("name, label, aliases, rho, inner", A1111_SCHEDULERS)
def test_resolve_scheduler_by_label_and_api_name(name, label, aliases, rho, inner):
    assert resolve_scheduler(name).label == label
    assert resolve_scheduler(label).label == label
    assert resolve_scheduler(label.upper()).label == label
    for alias in aliases or ():
        assert resolve_scheduler(alias).label == label


def test_resolve_scheduler_none_is_automatic():
    assert resolve_scheduler(None).label == "Automatic"
    assert resolve_scheduler("sgm uniform").label == "SGM Uniform"


@pytest.mark.parametrize("sampler_name, scheduler_name, expected", [
    ("DPM++ 2M Karras", None, ("DPM++ 2M", "Karras")),
    ("DPM++ 2M SDE Exponential", "Automatic", ("DPM++ 2M SDE", "Exponential")),
    ("DPM++ 2M SDE", None, ("DPM++ 2M SDE", "Automatic")),
    ("Euler a", "karras", ("Euler a", "Karras")),
    ("DDIM", "exponential", ("DDIM", "Exponential")),
    ("Euler a", "normal", ("Euler a", "Normal")),
])
def test_resolve_sampler_and_scheduler(sampler_name, scheduler_name, expected):
    sampler, scheduler = resolve_sampler_and_scheduler(sampler_name, scheduler_name)
    assert (sampler.name, scheduler.label) == expected


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError) as e:
        resolve_sampler("Euler b")
    assert "'Euler b'" in str(e.value)
    for name in ("Euler a", "DPM++ 2M", "DDIM", "UniPC", "LMS"):
        assert name in str(e.value)
    with pytest.raises(ValueError, match="Automatic, Uniform, Karras, Exponential, Polyexponential") as e:
        resolve_scheduler("Karras Exponential")
    assert "Beta" in str(e.value) and "'Karras Exponential'" in str(e.value)
    with pytest.raises(ValueError, match="valid samplers"):
        resolve_sampler(None)
    with pytest.raises(ValueError, match="valid samplers"):
        resolve_sampler_and_scheduler("Euler b Karras")
    with pytest.raises(ValueError, match="valid schedule types"):
        resolve_sampler_and_scheduler("Euler", "nope")


def test_model_config_is_checked():
    with pytest.raises(TypeError, match="mapping"):
        ModelSchedule(None)
    with pytest.raises(ValueError, match="empty"):
        ModelSchedule({})
    with pytest.raises(ValueError, match="prediction_type"):
        ModelSchedule(dict(SD15, prediction_type="flow"))


def test_sampler_flags():
    assert resolve_sampler("Euler a").uses_ensd and not resolve_sampler("Euler").uses_ensd
    assert resolve_sampler("DPM++ 2M").default_schedule == "karras"
    assert resolve_sampler("Euler").default_schedule is None
