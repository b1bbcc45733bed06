"""Noise levels in sigma space: a checkpoint's own schedule (``ModelSchedule``) and A1111 1.10's schedule types.

A *schedule type* (``"Karras"``, ``"Normal"``) is a function giving the noise levels ``sigma_0 > ... > 0`` for a
step count; the samplers of ``modules.sd_samplers`` walk any such list. This is the k-diffusion formulation A1111
uses: a ``ModelSchedule`` built from the checkpoint's own scheduler config (prediction type, betas, zero terminal
SNR, timestep spacing) maps a sigma to the UNet's timestep by log-sigma interpolation of the model's
alphas_cumprod, and turns the UNet's output (eps, v or sample) into the denoised latent with A1111's
c_in/c_out/c_skip. How ``Automatic`` is chosen, and the measurements behind this formulation, are in
``modules.sd_samplers``.

Differences from A1111:

* ``KL Optimal`` ends with a step to sigma 0 like every other schedule type (A1111's stops at sigma_min).
* ``Beta`` uses A1111's default alpha = beta = 0.6 (Serena has no ``beta_dist_alpha``/``beta_dist_beta``
  options); ``Align Your Steps`` always uses the published SD1.5 table (Serena runs SD1.x models only).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["ModelSchedule", "SchedulerData", "all_schedulers"]

# The finite floor diffusers' zero-SNR schedulers put on the last alpha_cumprod, so sigma_max stays finite (~4096).
_ZERO_SNR_LAST_ALPHA_CUMPROD = 2.0**-24
# "Align Your Steps" SD1.5 noise levels (NVIDIA, https://research.nvidia.com/labs/toronto-ai/AlignYourSteps/).
_AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
# A1111's defaults for the Beta schedule's distribution (its options beta_dist_alpha / beta_dist_beta).
_BETA_ALPHA = _BETA_BETA = 0.6


class ModelSchedule:
    """A checkpoint's noise schedule in sigma space, from its own scheduler config.

    Args:
        config (`Mapping[str, Any]`):
            The model's scheduler config (``model.scheduler_config``): betas, ``prediction_type``,
            ``rescale_betas_zero_snr``, ``timestep_spacing``, ``steps_offset``.

    Raises:
        `TypeError`: when ``config`` is not a mapping. `ValueError`: when it is empty or its prediction type is
        not ``epsilon``, ``v_prediction`` or ``sample``.
    """

    def __init__(self, config: Mapping[str, Any]):
        if not isinstance(config, Mapping):
            raise TypeError(f"the scheduler config must be a mapping, got {type(config).__name__}")
        if not config:
            raise ValueError("the scheduler config is empty; pass the model's own (model.scheduler_config)")
        from diffusers import DDPMScheduler  # builds betas from every beta_schedule diffusers knows

        keys = set(inspect.signature(DDPMScheduler.__init__).parameters)
        reference = DDPMScheduler.from_config({k: v for k, v in config.items() if k in keys})
        alphas_cumprod = reference.alphas_cumprod.to(torch.float64).clone()
        if config.get("rescale_betas_zero_snr"):
            alphas_cumprod[-1] = _ZERO_SNR_LAST_ALPHA_CUMPROD
        self.prediction_type = reference.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        self.timestep_spacing = reference.config.timestep_spacing
        self.steps_offset = int(reference.config.steps_offset)
        self.zero_snr = bool(config.get("rescale_betas_zero_snr"))
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()  # index = timestep, increasing
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma) -> torch.Tensor:
        """The (fractional) timestep of ``sigma``, by linear interpolation in log sigma (k-diffusion's)."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64).log()
        high = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, len(self.log_sigmas) - 1)
        low = high - 1
        w = ((log_sigma - self.log_sigmas[low]) / (self.log_sigmas[high] - self.log_sigmas[low])).clamp(0, 1)
        return low + w

    def t_to_sigma(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        low = t.floor().long().clamp(0, len(self.sigmas) - 1)
        high = t.ceil().long().clamp(0, len(self.sigmas) - 1)
        w = t - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def own_timesteps(self, n: int) -> torch.Tensor:
        """The model's own spacing of ``n`` timesteps (diffusers' ``timestep_spacing`` rules), largest first."""
        total = len(self.sigmas)
        if self.timestep_spacing == "linspace":
            return torch.linspace(total - 1, 0, n, dtype=torch.float64)
        if self.timestep_spacing == "trailing":
            return (torch.arange(total, 0, -total / n, dtype=torch.float64).round() - 1)[:n]
        ratio = total // n  # "leading"
        return (torch.arange(n - 1, -1, -1, dtype=torch.float64) * ratio + self.steps_offset).clamp(max=total - 1)

    def scalings(self, sigma: float) -> tuple[float, float, float]:
        """``(c_in, c_skip, c_out)``: UNet input scale, and ``denoised = c_skip * x + c_out * model_output``."""
        c_in = 1 / math.sqrt(sigma**2 + 1)
        if self.prediction_type == "epsilon":
            return c_in, 1.0, -sigma
        if self.prediction_type == "v_prediction":
            return c_in, 1 / (sigma**2 + 1), -sigma * c_in
        return c_in, 0.0, 1.0


# --- schedule types: (n, sigma_min, sigma_max, model) -> n + 1 sigmas, decreasing, ending at 0 ---------------

def _with_zero(sigmas) -> torch.Tensor:
    return torch.cat([torch.as_tensor(sigmas, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])


def _own_spacing(n, sigma_min, sigma_max, model):
    return _with_zero(model.t_to_sigma(model.own_timesteps(n)))


def _uniform(n, sigma_min, sigma_max, model):
    return _with_zero(model.t_to_sigma(torch.linspace(len(model.sigmas) - 1, 0, n, dtype=torch.float64)))


def _karras(n, sigma_min, sigma_max, model, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return _with_zero((sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho)


def _exponential(n, sigma_min, sigma_max, model):
    return _with_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def _polyexponential(n, sigma_min, sigma_max, model, rho=1.0):
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    return _with_zero((ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)).exp())


def _sgm_uniform(n, sigma_min, sigma_max, model):
    t = torch.linspace(float(model.sigma_to_t(sigma_max)), float(model.sigma_to_t(sigma_min)), n + 1,
                       dtype=torch.float64)[:-1]
    return _with_zero(model.t_to_sigma(t))


def _kl_optimal(n, sigma_min, sigma_max, model):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return _with_zero(torch.tan(ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)))


def _align_your_steps(n, sigma_min, sigma_max, model):
    # Log-linear interpolation of the published table to n levels (A1111's and NVIDIA's recipe).
    table = np.log(np.array(_AYS_SD15[::-1]))
    interpolated = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), table)
    return _with_zero(np.exp(interpolated)[::-1].copy())


def _simple(n, sigma_min, sigma_max, model):
    stride = len(model.sigmas) / n
    return _with_zero([float(model.sigmas[-(1 + int(x * stride))]) for x in range(n)])


def _normal(n, sigma_min, sigma_max, model):
    t = torch.linspace(float(model.sigma_to_t(sigma_max)), float(model.sigma_to_t(sigma_min)), n,
                       dtype=torch.float64)
    return _with_zero(model.t_to_sigma(t))


def _ddim(n, sigma_min, sigma_max, model):
    # A1111's: every (T // n)-th training sigma from index 1 (so it may give a level more than n).
    stride = max(len(model.sigmas) // n, 1)
    return _with_zero(model.sigmas[1::stride].flip(0))


def _beta(n, sigma_min, sigma_max, model):
    from scipy import stats

    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, n), _BETA_ALPHA, _BETA_BETA)
    return _with_zero(sigma_min + quantiles * (sigma_max - sigma_min))


@dataclass(frozen=True, eq=False)
class SchedulerData:
    """One A1111 schedule type (the spacing of noise levels).

    Attributes:
        name (`str`): A1111's API name, e.g. ``"karras"``.
        label (`str`): the name shown and written to infotext, e.g. ``"Karras"``.
        function (`Callable`): ``(n, sigma_min, sigma_max, model) -> n + 1 sigmas`` (``None`` for Automatic).
        aliases (`tuple[str, ...]` or `None`): other accepted names.
        default_rho (`float`): A1111's ``default_rho`` (-1 when unused), shown by ``/sdapi/v1/schedulers``.
        need_inner_model (`bool`): A1111's ``need_inner_model``, shown by ``/sdapi/v1/schedulers``.
    """

    name: str
    label: str
    function: Callable | None
    aliases: tuple[str, ...] | None = None
    default_rho: float = -1
    need_inner_model: bool = False

    def sigmas(self, n: int, model: ModelSchedule) -> torch.Tensor:
        """``n + 1`` noise levels on ``model``, decreasing, ending at 0; ``Automatic`` is the model's own spacing."""
        return (self.function or _own_spacing)(n, model.sigma_min, model.sigma_max, model)


all_schedulers: tuple[SchedulerData, ...] = (
    SchedulerData("automatic", "Automatic", None),
    SchedulerData("uniform", "Uniform", _uniform, need_inner_model=True),
    SchedulerData("karras", "Karras", _karras, default_rho=7.0),
    SchedulerData("exponential", "Exponential", _exponential),
    SchedulerData("polyexponential", "Polyexponential", _polyexponential, default_rho=1.0),
    SchedulerData("sgm_uniform", "SGM Uniform", _sgm_uniform, aliases=("SGMUniform",), need_inner_model=True),
    SchedulerData("kl_optimal", "KL Optimal", _kl_optimal),
    SchedulerData("align_your_steps", "Align Your Steps", _align_your_steps),
    SchedulerData("simple", "Simple", _simple, need_inner_model=True),
    SchedulerData("normal", "Normal", _normal, need_inner_model=True),
    SchedulerData("ddim", "DDIM", _ddim, need_inner_model=True),
    SchedulerData("beta", "Beta", _beta, need_inner_model=True),
)
