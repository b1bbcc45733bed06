"""modules.sd_samplers: every sampler and schedule type from an SD1.5-like and a zero-SNR v-prediction config."""

import importlib.util
import inspect

import pytest
import torch

from modules import sd_samplers
from modules.sd_samplers import (
    all_samplers,
    all_schedulers,
    create_scheduler,
    resolve_sampler,
    resolve_sampler_and_scheduler,
    resolve_scheduler,
    samplers_for_api,
    schedulers_for_api,
    schedulers_for_sampler,
)

SD15 = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
        "steps_offset": 1, "prediction_type": "epsilon"}
# Serena's embedded model: zero terminal SNR, v-prediction, trailing spacing (a PNDM/DDPM-style config).
ZERO_SNR = dict(SD15, prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
                steps_offset=0, skip_prk_steps=True, _class_name="DDPMScheduler")
CONFIGS = {"sd15": SD15, "zero_snr": ZERO_SNR}

# diffusers' sigma code trips NumPy 2 deprecations tens of thousands of times; they are not Serena's to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")

AVAILABLE = [s.name for s in all_samplers if s.is_available()]


def _accepted(scheduler):
    return set(inspect.signature(type(scheduler).__init__).parameters)


def _reference_alphas_cumprod(config):
    from diffusers import DDPMScheduler

    keys = set(inspect.signature(DDPMScheduler.__init__).parameters)
    return DDPMScheduler.from_config({k: v for k, v in config.items() if k in keys}).alphas_cumprod


def test_the_brief_samplers_are_in_the_table():
    names = {s.name for s in all_samplers}
    assert {"Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "DDIM", "PLMS", "LMS", "Heun", "UniPC", "DPM2", "DPM2 a",
            "DPM++ 2M SDE"} <= names
    assert [s.label for s in all_schedulers][:4] == ["Automatic", "Uniform", "Karras", "Exponential"]


@pytest.mark.parametrize("sampler_name", AVAILABLE)
def test_sampler_arguments_are_accepted_by_its_class(sampler_name):
    sampler = resolve_sampler(sampler_name)
    cls = sd_samplers._scheduler_class(sampler)
    assert set(sampler.config) <= set(inspect.signature(cls.__init__).parameters)
    if sampler.default_schedule is not None:
        assert resolve_scheduler(sampler.default_schedule).label in schedulers_for_sampler(sampler_name)


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("sampler_name", AVAILABLE)
def test_every_sampler_and_schedule_type_builds_and_sets_timesteps(sampler_name, config_name):
    config = CONFIGS[config_name]
    for label in schedulers_for_sampler(sampler_name):
        scheduler = create_scheduler(sampler_name, label, config)
        assert type(scheduler).__name__ == resolve_sampler(sampler_name).scheduler_class
        assert scheduler.config.prediction_type == config["prediction_type"]
        scheduler.set_timesteps(20)
        assert len(scheduler.timesteps) >= 20
        if getattr(scheduler, "sigmas", None) is not None:
            assert torch.isfinite(scheduler.sigmas).all()
        if "timestep_spacing" in _accepted(scheduler):
            expected = "trailing" if label == "SGM Uniform" else config.get("timestep_spacing", None)
            if expected is not None:
                assert scheduler.config.timestep_spacing == expected


@pytest.mark.parametrize("sampler_name", AVAILABLE)
def test_zero_terminal_snr_is_kept(sampler_name):
    scheduler = create_scheduler(sampler_name, "Automatic", ZERO_SNR)
    reference = _reference_alphas_cumprod(ZERO_SNR)
    got = scheduler.alphas_cumprod.to(torch.float64)
    assert float(got[-1]) <= 2.0**-24 * 1.01
    torch.testing.assert_close(got[:-1], reference[:-1].to(torch.float64), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("sampler_name", AVAILABLE)
def test_sd15_betas_are_kept(sampler_name):
    scheduler = create_scheduler(sampler_name, "Automatic", SD15)
    torch.testing.assert_close(scheduler.alphas_cumprod.to(torch.float64),
                               _reference_alphas_cumprod(SD15).to(torch.float64), rtol=1e-5, atol=1e-7)


def _karras(sigma_min, sigma_max, n, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def test_karras_sets_karras_sigmas():
    uniform = create_scheduler("Euler", "Uniform", SD15)
    karras = create_scheduler("Euler", "Karras", SD15)
    assert karras.config.use_karras_sigmas is True and uniform.config.use_karras_sigmas is False
    uniform.set_timesteps(20)
    karras.set_timesteps(20)
    sigmas = karras.sigmas[:-1].to(torch.float64)
    expected = _karras(float(sigmas[-1]), float(sigmas[0]), 20)
    torch.testing.assert_close(sigmas, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(karras.sigmas, uniform.sigmas)


def test_exponential_and_uniform_override_the_model_config():
    config = dict(SD15, use_karras_sigmas=True)
    assert create_scheduler("Euler", "Exponential", config).config.use_exponential_sigmas is True
    assert create_scheduler("Euler", "Exponential", config).config.use_karras_sigmas is False
    assert create_scheduler("Euler", "Uniform", config).config.use_karras_sigmas is False
    assert create_scheduler("Euler", "Automatic", config).config.use_karras_sigmas is True


def test_automatic_uses_the_sampler_default_except_for_zero_snr():
    assert create_scheduler("DPM++ 2M", "Automatic", SD15).config.use_karras_sigmas is True
    assert create_scheduler("DPM++ 2M SDE", None, SD15).config.use_exponential_sigmas is True
    assert create_scheduler("DPM++ 2M", "Automatic", ZERO_SNR).config.use_karras_sigmas is False
    assert create_scheduler("DPM++ 2M", "Karras", ZERO_SNR).config.use_karras_sigmas is True


def test_sampler_arguments_override_the_model_config():
    config = dict(SD15, algorithm_type="dpmsolver", solver_order=3, clip_sample=True)
    dpm = create_scheduler("DPM++ 2M", "Automatic", config)
    assert (dpm.config.algorithm_type, dpm.config.solver_order) == ("dpmsolver++", 2)
    assert create_scheduler("DPM++ 2M SDE", "Automatic", config).config.algorithm_type == "sde-dpmsolver++"
    assert create_scheduler("DDIM", "Automatic", config).config.clip_sample is False
    assert create_scheduler("PLMS", "Automatic", SD15).config.skip_prk_steps is True


def test_unsupported_schedule_type_is_an_error_listing_the_supported_ones():
    with pytest.raises(ValueError) as e:
        create_scheduler("Euler a", "Karras", SD15)
    message = str(e.value)
    assert "'Euler a'" in message and "'Karras'" in message and "use_karras_sigmas" in message
    assert "supported: Automatic, Uniform, SGM Uniform" in message
    with pytest.raises(ValueError, match="SGM Uniform"):
        create_scheduler("DPM++ SDE", "SGM Uniform", SD15)


@pytest.mark.parametrize("name, expected", [
    ("Euler a", "Euler a"), ("euler a", "Euler a"), ("EULER A", "Euler a"), ("euler_a", "Euler a"),
    ("k_euler_a", "Euler a"), ("k_euler_ancestral", "Euler a"), (" Euler ", "Euler"), ("k_dpmpp_2m", "DPM++ 2M"),
    ("dpm++_2m_sde", "DPM++ 2M SDE"), ("ddim", "DDIM"), ("plms", "PLMS"), ("k_dpm_2_a", "DPM2 a"),
])
def test_resolve_sampler(name, expected):
    assert resolve_sampler(name).name == expected


@pytest.mark.parametrize("name, expected", [
    ("automatic", "Automatic"), ("Karras", "Karras"), ("karras", "Karras"), ("EXPONENTIAL", "Exponential"),
    ("sgm_uniform", "SGM Uniform"), ("SGMUniform", "SGM Uniform"), ("sgm uniform", "SGM Uniform"),
    (None, "Automatic"),
])
def test_resolve_scheduler(name, expected):
    assert resolve_scheduler(name).label == expected


@pytest.mark.parametrize("sampler_name, scheduler_name, expected", [
    ("DPM++ 2M Karras", None, ("DPM++ 2M", "Karras")),
    ("DPM++ 2M SDE Exponential", "Automatic", ("DPM++ 2M SDE", "Exponential")),
    ("DPM++ 2M SDE", None, ("DPM++ 2M SDE", "Automatic")),
    ("Euler a", "karras", ("Euler a", "Karras")),
])
def test_resolve_sampler_and_scheduler(sampler_name, scheduler_name, expected):
    sampler, scheduler = resolve_sampler_and_scheduler(sampler_name, scheduler_name)
    assert (sampler.name, scheduler.label) == expected


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError) as e:
        resolve_sampler("Euler b")
    assert "'Euler b'" in str(e.value)
    for name in ("Euler a", "DPM++ 2M", "DDIM", "UniPC"):
        assert name in str(e.value)
    with pytest.raises(ValueError, match="Automatic, Uniform, Karras, Exponential"):
        resolve_scheduler("Polyexponential")
    with pytest.raises(ValueError, match="valid samplers"):
        resolve_sampler(None)
    with pytest.raises(ValueError, match="valid samplers"):
        resolve_sampler_and_scheduler("Euler b Karras")
    with pytest.raises(ValueError, match="valid samplers"):
        create_scheduler("nope", None, SD15)


def test_base_config_is_checked():
    with pytest.raises(TypeError, match="base_config"):
        create_scheduler("Euler", None, None)
    with pytest.raises(ValueError, match="base_config"):
        create_scheduler("Euler", None, {})


def test_config_keys_the_class_does_not_take_are_left_out():
    scheduler = create_scheduler("Euler", None, dict(SD15, skip_prk_steps=True, something_else=1))
    assert "skip_prk_steps" not in scheduler.config and "something_else" not in scheduler.config


def test_lms_needs_scipy():
    lms = resolve_sampler("k_lms")
    has_scipy = importlib.util.find_spec("scipy") is not None
    assert lms.is_available() is has_scipy
    assert ("LMS" in [s["name"] for s in samplers_for_api()]) is has_scipy
    if has_scipy:
        create_scheduler("LMS", "Karras", SD15).set_timesteps(20)
    else:
        with pytest.raises(ValueError, match="scipy"):
            create_scheduler("LMS", None, SD15)


def test_samplers_for_api_shape():
    samplers = samplers_for_api()
    by_name = {s["name"]: s for s in samplers}
    assert by_name["Euler a"] == {"name": "Euler a", "aliases": ["k_euler_a", "k_euler_ancestral"],
                                  "options": {"uses_ensd": True}}
    assert by_name["DPM++ 2M"]["options"] == {"scheduler": "karras"}
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)


def test_schedulers_for_api_shape():
    schedulers = schedulers_for_api()
    assert schedulers[0] == {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1,
                             "need_inner_model": False}
    karras = next(s for s in schedulers if s["name"] == "karras")
    assert karras["default_rho"] == 7.0
    assert next(s for s in schedulers if s["name"] == "sgm_uniform")["aliases"] == ["SGMUniform"]


def test_sampler_flags():
    assert resolve_sampler("Euler a").uses_ensd and not resolve_sampler("Euler").uses_ensd
    assert resolve_sampler("DPM++ 2M").default_schedule == "karras"
    assert resolve_sampler("Euler").default_schedule is None
