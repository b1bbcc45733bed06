"""A1111 sampler names and schedule types, built on diffusers schedulers.

A *sampler* (``"Euler a"``, ``"DPM++ 2M"``) is a diffusers scheduler class plus the settings that make it behave
as A1111's sampler of that name. A *schedule type* (``"Karras"``, ``"Exponential"``) chooses how the noise
levels are spaced. ``create_scheduler`` combines both with the model's own scheduler config, so prediction type,
betas, zero terminal SNR and timestep spacing always come from the model.

Differences from A1111 (its samplers are k-diffusion's; these are diffusers'):

* ``DPM++ SDE`` is ``DPMSolverSinglestepScheduler`` with ``algorithm_type="sde-dpmsolver++"`` (second order,
  stochastic). diffusers' ``DPMSolverSDEScheduler`` needs torchsde, which Serena does not install, and the
  mapping should not change with what happens to be installed. It calls the model once per step, where A1111's
  calls it twice.
* ``DPM2`` and ``DPM2 a`` keep the next-to-last noise level, which A1111 drops.
* ``LMS`` needs scipy (diffusers' ``LMSDiscreteScheduler`` imports it). Without it the sampler is left out of
  ``samplers_for_api`` and ``create_scheduler`` says what is missing.
* A sampler whose diffusers class cannot rescale betas to zero terminal SNR still gets the model's zero-SNR
  schedule: its betas are computed from the model's config and passed as ``trained_betas``.
* Not available: ``DPM++ 2S a``, ``DPM fast``, ``DPM adaptive``, ``Restart``, ``DDIM CFG++`` (no diffusers
  equivalent), and the schedule types other than the ones in ``all_schedulers``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SamplerData",
    "SchedulerData",
    "all_samplers",
    "all_schedulers",
    "create_scheduler",
    "resolve_sampler",
    "resolve_sampler_and_scheduler",
    "resolve_scheduler",
    "samplers_for_api",
    "schedulers_for_api",
    "schedulers_for_sampler",
]


@dataclass(frozen=True, eq=False)
class SamplerData:
    """One A1111 sampler on a diffusers scheduler class.

    Attributes:
        name (`str`): A1111's name, e.g. ``"DPM++ 2M"``.
        aliases (`tuple[str, ...]`): other accepted names, e.g. ``("k_dpmpp_2m",)``.
        scheduler_class (`str`): the diffusers class, e.g. ``"DPMSolverMultistepScheduler"``.
        config (`Mapping[str, Any]`): arguments of that class that make it this sampler; they override the
            model's config.
        options (`Mapping[str, Any]`): A1111's sampler options as ``/sdapi/v1/samplers`` shows them:
            ``scheduler`` (the default schedule type), ``uses_ensd``, ``second_order``, ``brownian_noise``.
        requires (`tuple[str, ...]`): Python packages the diffusers class needs beyond Serena's own.
    """

    name: str
    aliases: tuple[str, ...]
    scheduler_class: str
    config: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()

    @property
    def default_schedule(self) -> str | None:
        """The schedule type ``Automatic`` stands for with this sampler; `None` keeps the model's own spacing."""
        return self.options.get("scheduler")

    @property
    def uses_ensd(self) -> bool:
        """Whether the sampler draws fresh noise at each step, which A1111's "Eta noise seed delta" shifts."""
        return bool(self.options.get("uses_ensd", False))

    def is_available(self) -> bool:
        """Whether the packages the diffusers class needs are installed."""
        return all(importlib.util.find_spec(package) is not None for package in self.requires)


@dataclass(frozen=True, eq=False)
class SchedulerData:
    """One A1111 schedule type (the spacing of noise levels).

    Attributes:
        name (`str`): A1111's API name, e.g. ``"karras"``.
        label (`str`): the name shown and written to infotext, e.g. ``"Karras"``.
        config (`Mapping[str, Any]`): diffusers scheduler arguments that select it; every one of them must be
            accepted by the sampler's class.
        aliases (`tuple[str, ...]` or `None`): other accepted names.
        default_rho (`float`): A1111's ``default_rho`` (-1 when unused), shown by ``/sdapi/v1/schedulers``.
        need_inner_model (`bool`): A1111's ``need_inner_model``, shown by ``/sdapi/v1/schedulers``.
    """

    name: str
    label: str
    config: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


all_samplers: tuple[SamplerData, ...] = (
    SamplerData("DPM++ 2M", ("k_dpmpp_2m",), "DPMSolverMultistepScheduler",
                {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
                {"scheduler": "karras"}),
    # lower_order_final: the class would switch it on at set_timesteps anyway (with a warning), as a final
    # sigma of zero needs it.
    SamplerData("DPM++ SDE", ("k_dpmpp_sde",), "DPMSolverSinglestepScheduler",
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                 "lower_order_final": True},
                {"scheduler": "karras", "second_order": True, "brownian_noise": True}),
    SamplerData("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "DPMSolverMultistepScheduler",
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
                {"scheduler": "exponential", "brownian_noise": True}),
    SamplerData("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), "DPMSolverMultistepScheduler",
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
                {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"}),
    SamplerData("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), "DPMSolverMultistepScheduler",
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "midpoint"},
                {"scheduler": "exponential", "brownian_noise": True}),
    SamplerData("Euler a", ("k_euler_a", "k_euler_ancestral"), "EulerAncestralDiscreteScheduler",
                {}, {"uses_ensd": True}),
    SamplerData("Euler", ("k_euler",), "EulerDiscreteScheduler"),
    SamplerData("LMS", ("k_lms",), "LMSDiscreteScheduler", requires=("scipy",)),
    SamplerData("Heun", ("k_heun",), "HeunDiscreteScheduler", {}, {"second_order": True}),
    SamplerData("DPM2", ("k_dpm_2",), "KDPM2DiscreteScheduler",
                {}, {"scheduler": "karras", "second_order": True}),
    SamplerData("DPM2 a", ("k_dpm_2_a",), "KDPM2AncestralDiscreteScheduler",
                {}, {"scheduler": "karras", "uses_ensd": True, "second_order": True}),
    # A1111's DDIM never clips the predicted sample; diffusers' default would clip latents to [-1, 1].
    SamplerData("DDIM", ("ddim",), "DDIMScheduler", {"clip_sample": False}),
    # A1111's PLMS has no Runge-Kutta warm-up steps.
    SamplerData("PLMS", ("plms",), "PNDMScheduler", {"skip_prk_steps": True}),
    # A1111's UniPC defaults: variant bh1, order 3.
    SamplerData("UniPC", ("unipc",), "UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3}),
    SamplerData("LCM", ("k_lcm",), "LCMScheduler"),
)

all_schedulers: tuple[SchedulerData, ...] = (
    SchedulerData("automatic", "Automatic"),
    SchedulerData("uniform", "Uniform", need_inner_model=True),
    SchedulerData("karras", "Karras", {"use_karras_sigmas": True}, default_rho=7.0),
    SchedulerData("exponential", "Exponential", {"use_exponential_sigmas": True}),
    SchedulerData("sgm_uniform", "SGM Uniform", {"timestep_spacing": "trailing"}, aliases=("SGMUniform",),
                  need_inner_model=True),
)

# Arguments that pick a noise-level spacing; an explicit schedule type turns off the ones it does not set.
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
# The finite floor diffusers' own zero-SNR schedulers put on the last alpha_cumprod, so sigma_max stays finite.
_ZERO_SNR_LAST_ALPHA_CUMPROD = 2.0**-24


def _normalize(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def _names_of(item) -> list[str]:
    if isinstance(item, SamplerData):
        return [item.name, *item.aliases]
    return [item.name, item.label, *(item.aliases or ())]


def _find(items, name):
    if not isinstance(name, str):
        return None
    wanted = name.strip().lower()
    for item in items:
        if any(n.lower() == wanted for n in _names_of(item)):
            return item
    wanted = _normalize(name)
    for item in items:
        if any(_normalize(n) == wanted for n in _names_of(item)):
            return item
    return None


def resolve_sampler(name: str) -> SamplerData:
    """The sampler called ``name``: its A1111 name or an alias, any case, ``_`` read as a space.

    Args:
        name (`str`):
            E.g. ``"Euler a"``, ``"euler_a"``, ``"k_euler_a"``, ``"DPM++ 2M"``.

    Returns:
        `SamplerData`: the sampler (possibly not available, see ``SamplerData.is_available``).

    Raises:
        `ValueError`: for an unknown name; the message lists the valid names.
    """
    sampler = _find(all_samplers, name)
    if sampler is None:
        valid = ", ".join(s.name for s in all_samplers)
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {valid}")
    return sampler


def resolve_scheduler(name: str | None) -> SchedulerData:
    """The schedule type called ``name``: its API name, label or an alias, any case; `None` is ``Automatic``.

    Args:
        name (`str` or `None`):
            E.g. ``"karras"``, ``"Karras"``, ``"SGMUniform"``.

    Returns:
        `SchedulerData`: the schedule type.

    Raises:
        `ValueError`: for an unknown name; the message lists the valid names.
    """
    if name is None:
        return all_schedulers[0]
    scheduler = _find(all_schedulers, name)
    if scheduler is None:
        valid = ", ".join(s.label for s in all_schedulers)
        raise ValueError(f"unknown schedule type {name!r}; valid schedule types: {valid}")
    return scheduler


def resolve_sampler_and_scheduler(sampler_name: str, scheduler_name: str | None = None
                                  ) -> tuple[SamplerData, SchedulerData]:
    """Both at once, reading A1111's old combined names (``"DPM++ 2M Karras"``) as sampler plus schedule type.

    Args:
        sampler_name (`str`):
            A sampler name, or one followed by a space and a schedule type (the form before A1111 1.9).
        scheduler_name (`str` or `None`, *optional*, defaults to `None`):
            The schedule type; a schedule type inside ``sampler_name`` takes its place.

    Returns:
        `tuple[SamplerData, SchedulerData]`.

    Raises:
        `ValueError`: when either name is unknown.
    """
    sampler = _find(all_samplers, sampler_name)
    if sampler is None and isinstance(sampler_name, str):
        for scheduler in all_schedulers[1:]:
            for suffix in _names_of(scheduler):
                if sampler_name.lower().endswith(" " + suffix.lower()):
                    found = _find(all_samplers, sampler_name[:-len(suffix) - 1])
                    if found is not None:
                        return found, scheduler
    return resolve_sampler(sampler_name), resolve_scheduler(scheduler_name)


def _scheduler_class(sampler: SamplerData):
    if not sampler.is_available():
        missing = [p for p in sampler.requires if importlib.util.find_spec(p) is None]
        available = ", ".join(s.name for s in all_samplers if s.is_available())
        raise ValueError(f"sampler {sampler.name!r} needs the Python package(s) {', '.join(missing)}, which are not "
                         f"installed; install them or choose one of: {available}")
    diffusers = importlib.import_module("diffusers")
    return getattr(diffusers, sampler.scheduler_class)


def _init_args(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def schedulers_for_sampler(sampler_name: str) -> list[str]:
    """The labels of the schedule types a sampler supports (its diffusers class accepts their arguments).

    Args:
        sampler_name (`str`):
            A sampler name or alias.

    Returns:
        `list[str]`: e.g. ``["Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform"]``.
    """
    accepted = _init_args(_scheduler_class(resolve_sampler(sampler_name)))
    return [s.label for s in all_schedulers if set(s.config) <= accepted]


def _zero_snr_betas(base_config: Mapping[str, Any]) -> list[float]:
    """The model's betas rescaled to zero terminal SNR, for a class that cannot rescale them itself."""
    import torch
    from diffusers import DDPMScheduler

    accepted = _init_args(DDPMScheduler)
    reference = DDPMScheduler.from_config({k: v for k, v in base_config.items() if k in accepted})
    alphas_cumprod = reference.alphas_cumprod.to(torch.float64).clone()
    alphas_cumprod[-1] = _ZERO_SNR_LAST_ALPHA_CUMPROD
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return (1.0 - alphas_cumprod / previous).tolist()


def create_scheduler(sampler_name: str, scheduler_name: str | None, base_config: Mapping[str, Any]):
    """Build the diffusers scheduler for a sampler and schedule type from the model's scheduler config.

    Args:
        sampler_name (`str`):
            A sampler name or alias (see ``resolve_sampler``).
        scheduler_name (`str` or `None`):
            A schedule type (see ``resolve_scheduler``). ``Automatic`` (or `None`) means the sampler's default
            schedule type where A1111 gives it one (``DPM++ 2M`` → Karras), else the model's own spacing. For a
            zero terminal SNR model ``Automatic`` always keeps the model's own spacing: its largest noise level
            is about 4096 instead of 14.6, and a Karras or exponential schedule from there spends most steps on
            pure noise (13 of 20 steps above 14.6 for Karras). ``Uniform`` turns Karras, exponential and beta
            spacing off.
        base_config (`Mapping[str, Any]`):
            The model's own scheduler config (``pipe.scheduler.config``). Its prediction type, betas, zero
            terminal SNR and timestep spacing are kept; keys the sampler's class does not take are left out.

    Returns:
        `diffusers.SchedulerMixin`: a new scheduler; call ``set_timesteps`` on it.

    Raises:
        `ValueError`: for an unknown name, a sampler whose packages are missing, a schedule type the sampler
        does not support (the message lists the ones it does), or an empty ``base_config``.
        `TypeError`: when ``base_config`` is not a mapping.
    """
    # 1. Check inputs
    sampler = resolve_sampler(sampler_name)
    scheduler = resolve_scheduler(scheduler_name)
    if not isinstance(base_config, Mapping):
        raise TypeError(f"`base_config` must be the model's scheduler config (a mapping), got "
                        f"{type(base_config).__name__}")
    if not base_config:
        raise ValueError("`base_config` is empty; pass the model's own scheduler config (pipe.scheduler.config), "
                         "not the class defaults")
    cls = _scheduler_class(sampler)
    accepted = _init_args(cls)

    # 2. The model's config, limited to what the class takes
    config = {k: v for k, v in base_config.items() if k in accepted}
    zero_snr = bool(base_config.get("rescale_betas_zero_snr"))
    if zero_snr and "rescale_betas_zero_snr" not in accepted:
        config["trained_betas"] = _zero_snr_betas(base_config)

    # 3. The sampler's own arguments, then the schedule type's
    kwargs = dict(sampler.config)
    if scheduler.name == "automatic" and sampler.default_schedule is not None and not zero_snr:
        scheduler = resolve_scheduler(sampler.default_schedule)
    if scheduler.name != "automatic":
        unsupported = sorted(set(scheduler.config) - accepted)
        if unsupported:
            supported = ", ".join(schedulers_for_sampler(sampler.name))
            raise ValueError(
                f"sampler {sampler.name!r} does not support schedule type {scheduler.label!r} "
                f"({sampler.scheduler_class} has no {', '.join(unsupported)}); supported: {supported}")
        kwargs.update({flag: False for flag in _SIGMA_FLAGS if flag in accepted})
        kwargs.update(scheduler.config)

    # 4. Build
    return cls.from_config(config, **kwargs)


def samplers_for_api() -> list[dict[str, Any]]:
    """The installed samplers in the shape of A1111's ``GET /sdapi/v1/samplers``.

    Returns:
        `list[dict]`: ``[{"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}, ...]``.
    """
    return [{"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)}
            for s in all_samplers if s.is_available()]


def schedulers_for_api() -> list[dict[str, Any]]:
    """The schedule types in the shape of A1111's ``GET /sdapi/v1/schedulers``.

    Returns:
        `list[dict]`: ``[{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1,
        "need_inner_model": False}, ...]``.
    """
    return [{"name": s.name, "label": s.label, "aliases": list(s.aliases) if s.aliases is not None else None,
             "default_rho": s.default_rho, "need_inner_model": s.need_inner_model}
            for s in all_schedulers]
