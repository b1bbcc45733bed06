"""A1111 1.10's samplers, run over explicit noise levels (sigmas), and the resolution of sampler/schedule names.

A *sampler* (``"Euler a"``, ``"DPM++ 2M"``) is a function that walks any list of noise levels a *schedule type*
(``modules.sd_schedules``) gives. So every sampler takes every schedule type, as in A1111 and Forge. The
model's denoised estimate comes from the pipeline's ``Denoiser`` in k-diffusion's formulation (the checkpoint's
``ModelSchedule`` maps sigma to timestep and the UNet's output to the denoised latent).

Why not diffusers' scheduler classes (Serena's path until now): a diffusers class takes only the spacings it has
flags for (EulerAncestral has no Karras, DDIM/PLMS/LCM none at all), so half the pairs ``/sdapi/v1/samplers`` and
``/schedulers`` list failed; and most A1111 schedule types exist in no diffusers class. Measured:

* Against k-diffusion 0.1.1 ``sampling.py`` (the reference A1111 uses; installed in a scratch directory for the
  comparison, not a dependency), float64, a smooth toy denoiser, 12 Karras steps, the same noise: Euler, Euler a,
  Heun, DPM2, DPM2 a, LMS, DPM++ 2M, DPM++ 2S a, DPM++ SDE (with k-diffusion's default Gaussian noise sampler),
  DPM++ 2M SDE (midpoint and heun) and DPM++ 3M SDE agree to within 5e-16 (float64 rounding). k-diffusion has no
  PLMS, UniPC or LCM to compare with; those are checked by ``test/quality/test_sd_samplers.py`` (DDIM = Euler
  at eta 0) and the smoke tests (every pair gives a real image on the shipped model).
* On the shipped zero-SNR model, 20-step ``Euler a`` (the default) gives the images diffusers' EulerAncestral
  gave up to float rounding: 2 images × 64×64×3 values, max difference 1 level, 0.04 % of values differ (same
  sigmas, same per-image noise, same c_in; the timestep comes from log-sigma interpolation instead of the table).
  The prompt-adherence benchmark is unchanged (docs/models.md). Golden hashes of images do change.
* Speed (``bench/samplers.py``, 10 steps, ms per step, on a 2-core machine shared with a load of ~15, so only
  the loop-only column is meaningful): sampler arithmetic alone (UNet replaced by a cheap function) costs
  Euler a 6.7 vs 6.8 (diffusers), DPM++ 2M 0.22 vs 2.9, DDIM 0.19 vs 6.7, UniPC 2.1 vs 12.2; with the UNet a step
  is ~460-770 ms there on both paths (ratios 0.83-1.21, within that machine's noise). The UNet dominates.

Differences from A1111:

* ``Automatic`` is the sampler's default schedule type where A1111 gives it one (``DPM++ 2M`` → Karras), else
  the model's own timestep spacing (its config's ``timestep_spacing``/``steps_offset``, as diffusers spaces it);
  A1111's is then ``Uniform``. For a zero terminal SNR model ``Automatic`` always keeps the model's own spacing:
  its largest sigma is about 4096 instead of 14.6, and a Karras or exponential schedule from there spends most
  steps on pure noise (13 of 20 above 14.6 for Karras). An explicit schedule type is always honoured.
* ``DPM++ SDE``, ``DPM++ 2M SDE`` and ``DPM++ 3M SDE`` draw independent Gaussian noise per step from the
  per-image generators; A1111 draws Brownian-tree noise (torchsde, which Serena does not install). Same
  distribution, different images for a seed.
* ``DDIM`` and ``PLMS`` run in sigma space too (DDIM with eta is ancestral Euler with that eta; PLMS is the
  pseudo linear multistep method on the same ODE), so they take any schedule type; A1111 runs them on timesteps.
  ``UniPC`` is UniPC-bh1, order 3, in data prediction, with a first-order last step to sigma 0.
* Not available: ``DPM fast`` and ``DPM adaptive`` (adaptive step control that ignores the step count and the
  schedule type), ``Restart`` (its restart segments depend on the step count in a way A1111 does not document),
  ``DDIM CFG++`` (needs the unguided prediction inside the step and A1111's own rescaling of the CFG scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from modules.sd_schedules import ModelSchedule, SchedulerData, all_schedulers

__all__ = [
    "SamplerData",
    "all_samplers",
    "resolve_sampler",
    "resolve_sampler_and_scheduler",
    "resolve_scheduler",
    "samplers_for_api",
    "schedulers_for_api",
    "sigmas_for",
]


# --- samplers: (denoise, x, sigmas, noise, eta) -> x at sigmas[-1] -------------------------------------------
# ``denoise(x, sigma, step)`` is the model's denoised estimate; ``noise()`` fresh per-image noise like ``x``;
# ``eta`` the ancestral/SDE noise scale. The ODE's derivative at x is (x - denoised) / sigma.

def _ancestral(sigma, sigma_next, eta):
    """``(sigma_down, sigma_up)``: step deterministically to sigma_down, then add noise of sigma_up."""
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def _steps(sigmas):
    return [(i, float(sigmas[i]), float(sigmas[i + 1])) for i in range(len(sigmas) - 1)]


def sample_euler(denoise, x, sigmas, noise, eta):
    for i, s, s_next in _steps(sigmas):
        x = x + (x - denoise(x, s, i)) / s * (s_next - s)
    return x


def sample_euler_ancestral(denoise, x, sigmas, noise, eta):
    for i, s, s_next in _steps(sigmas):
        down, up = _ancestral(s, s_next, eta)
        x = x + (x - denoise(x, s, i)) / s * (down - s)
        if up:
            x = x + noise() * up
    return x


def sample_heun(denoise, x, sigmas, noise, eta):
    for i, s, s_next in _steps(sigmas):
        d = (x - denoise(x, s, i)) / s
        x_next = x + d * (s_next - s)
        if s_next:
            d_next = (x_next - denoise(x_next, s_next, i)) / s_next
            x_next = x + (d + d_next) / 2 * (s_next - s)
        x = x_next
    return x


def _dpm2_step(denoise, x, s, target, i):
    d = (x - denoise(x, s, i)) / s
    if target == 0:
        return x + d * (target - s)
    mid = math.exp((math.log(s) + math.log(target)) / 2)
    x_mid = x + d * (mid - s)
    return x + (x_mid - denoise(x_mid, mid, i)) / mid * (target - s)


def sample_dpm_2(denoise, x, sigmas, noise, eta):
    for i, s, s_next in _steps(sigmas):
        x = _dpm2_step(denoise, x, s, s_next, i)
    return x


def sample_dpm_2_ancestral(denoise, x, sigmas, noise, eta):
    for i, s, s_next in _steps(sigmas):
        down, up = _ancestral(s, s_next, eta)
        x = _dpm2_step(denoise, x, s, down, i)
        if up:
            x = x + noise() * up
    return x


def _lms_coefficient(nodes: list[float], j: int, start: float, end: float) -> float:
    """Integral over [start, end] of the Lagrange basis polynomial of node j (exact: it is a polynomial)."""
    others = [n for k, n in enumerate(nodes) if k != j]
    basis = np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0])
    basis = basis / np.prod([nodes[j] - n for n in others])
    antiderivative = basis.integ()
    return float(antiderivative(end) - antiderivative(start))


def sample_lms(denoise, x, sigmas, noise, eta, order=4):
    derivatives = []
    for i, s, s_next in _steps(sigmas):
        derivatives.insert(0, (x - denoise(x, s, i)) / s)
        del derivatives[order:]
        nodes = [float(sigmas[i - k]) for k in range(len(derivatives))]
        x = x + sum(_lms_coefficient(nodes, k, s, s_next) * d for k, d in enumerate(derivatives))
    return x


def _dpmpp_first_order(x, denoised, s, target):
    """The exact step of the linear part, with denoised held constant (DPM-Solver++ order 1 = DDIM)."""
    return x * (target / s) + denoised * (1 - target / s)


def sample_dpmpp_2m(denoise, x, sigmas, noise, eta):
    previous = h_last = None
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s, i)
        if previous is None or s_next == 0:
            estimate = denoised
        else:
            h = math.log(s) - math.log(s_next)
            r = h_last / h
            estimate = denoised * (1 + 1 / (2 * r)) - previous * (1 / (2 * r))
        x = _dpmpp_first_order(x, estimate, s, s_next)
        if s_next:
            h_last = math.log(s) - math.log(s_next)
        previous = denoised
    return x


def sample_dpmpp_2s_ancestral(denoise, x, sigmas, noise, eta):
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s, i)
        down, up = _ancestral(s, s_next, eta)
        if down == 0:
            x = x + (x - denoised) / s * (down - s)
        else:
            mid = math.sqrt(s * down)  # half way in log sigma
            x_mid = _dpmpp_first_order(x, denoised, s, mid)
            x = _dpmpp_first_order(x, denoise(x_mid, mid, i), s, down)
        if up:
            x = x + noise() * up
    return x


def sample_dpmpp_sde(denoise, x, sigmas, noise, eta, r=0.5):
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s, i)
        if s_next == 0:
            x = denoised
            continue
        s_mid = math.exp(math.log(s) + r * (math.log(s_next) - math.log(s)))
        down, up = _ancestral(s, s_mid, eta)
        x_mid = _dpmpp_first_order(x, denoised, s, down)
        if up:
            x_mid = x_mid + noise() * up
        denoised_mid = denoise(x_mid, s_mid, i)
        down, up = _ancestral(s, s_next, eta)
        fac = 1 / (2 * r)
        x = _dpmpp_first_order(x, denoised * (1 - fac) + denoised_mid * fac, s, down)
        if up:
            x = x + noise() * up
    return x


def _sde_noise(noise, s_next, eta_h):
    """The fresh noise an exponential SDE step adds to land exactly at ``s_next``."""
    return noise() * (s_next * math.sqrt(-math.expm1(-2 * eta_h))) if eta_h else 0


def _dpmpp_2m_sde(denoise, x, sigmas, noise, eta, solver_type):
    previous = h_last = None
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s, i)
        if s_next == 0:
            return denoised
        h = math.log(s) - math.log(s_next)
        phi = -math.expm1(-h - eta * h)
        x = x * (s_next / s * math.exp(-eta * h)) + denoised * phi
        if previous is not None:
            weight = 0.5 * phi if solver_type == "midpoint" else 1 - phi / (h + eta * h)
            x = x + weight * h / h_last * (denoised - previous)
        x = x + _sde_noise(noise, s_next, eta * h)
        previous, h_last = denoised, h
    return x


def sample_dpmpp_2m_sde(denoise, x, sigmas, noise, eta):
    return _dpmpp_2m_sde(denoise, x, sigmas, noise, eta, "midpoint")


def sample_dpmpp_2m_sde_heun(denoise, x, sigmas, noise, eta):
    return _dpmpp_2m_sde(denoise, x, sigmas, noise, eta, "heun")


def sample_dpmpp_3m_sde(denoise, x, sigmas, noise, eta):
    # Third-order multistep in log sigma: the last two denoised estimates give the first and second differences.
    d1 = d2 = h1 = h2 = None
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s, i)
        if s_next == 0:
            return denoised
        h = math.log(s) - math.log(s_next)
        h_eta = h * (eta + 1)
        x = x * math.exp(-h_eta) + denoised * -math.expm1(-h_eta)
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if h2 is not None:
            r0, r1 = h1 / h, h2 / h
            slope0, slope1 = (denoised - d1) / r0, (d1 - d2) / r1
            first = slope0 + (slope0 - slope1) * r0 / (r0 + r1)
            second = (slope0 - slope1) / (r0 + r1)
            x = x + first * phi_2 - second * (phi_2 / h_eta - 0.5)
        elif h1 is not None:
            x = x + (denoised - d1) * h / h1 * phi_2
        x = x + _sde_noise(noise, s_next, h * eta)
        d1, d2, h1, h2 = denoised, d1, h, h1
    return x


def sample_plms(denoise, x, sigmas, noise, eta):
    # Pseudo linear multistep (Liu et al. 2022) on eps = the ODE derivative; the first step is Heun's.
    history = []
    for i, s, s_next in _steps(sigmas):
        eps = (x - denoise(x, s, i)) / s
        if not history:
            if s_next:
                x_next = x + eps * (s_next - s)
                combined = (eps + (x_next - denoise(x_next, s_next, i)) / s_next) / 2
            else:
                combined = eps
        elif len(history) == 1:
            combined = (3 * eps - history[-1]) / 2
        elif len(history) == 2:
            combined = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            combined = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history = (history + [eps])[-3:]
        x = x + combined * (s_next - s)
    return x


def sample_unipc(denoise, x, sigmas, noise, eta, order=3):
    # UniPC-bh1 (Zhao et al. 2023) in data prediction with lambda = -log sigma; the corrector reuses the next
    # step's model call, and the last step (to sigma 0) is first order: x = denoised.
    steps = _steps(sigmas)
    outputs, lambdas = [], []
    pending = None  # (x_prev, s_prev, s_now, order) of the last predictor, to correct once m_now is known
    for i, s, s_next in steps:
        m = denoise(x, s, i)
        if pending is not None:
            x = _unipc_update(*pending, outputs, lambdas, m)
        outputs, lambdas = (outputs + [m])[-order:], (lambdas + [-math.log(s)])[-order:]
        if s_next == 0:
            return m
        current = min(order, len(outputs), len(steps) - i)
        pending = (x, s, s_next, current)
        x = _unipc_update(x, s, s_next, current, outputs, lambdas, None)
    return x


def _unipc_update(x, s, s_next, current, outputs, lambdas, m_next):
    """UniPC's predictor (``m_next`` None) or corrector from ``x`` at ``s`` (the last output) to ``s_next``."""
    h = -math.log(s_next) - lambdas[-1]
    previous = list(zip(outputs[:-1], lambdas[:-1]))[::-1][:current - 1]
    ratios = [(lam - lambdas[-1]) / h for _, lam in previous]
    slopes = [(out - outputs[-1]) / r for (out, _), r in zip(previous, ratios)]
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, b = [], []
    for k in range(1, current + 1):
        rows.append([r ** (k - 1) for r in ratios] + [1.0])
        b.append(h_phi_k * factorial / hh)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    x_base = x * (s_next / s) - outputs[-1] * h_phi_1
    if m_next is None:
        if not slopes:
            return x_base
        rhos = [0.5] if current == 2 else np.linalg.solve(np.array(rows)[:-1, :-1], np.array(b)[:-1]).tolist()
        return x_base - hh * sum(rho * d for rho, d in zip(rhos, slopes))
    rhos = [0.5] if current == 1 else np.linalg.solve(np.array(rows), np.array(b)).tolist()
    correction = sum(rho * d for rho, d in zip(rhos[:-1], slopes)) + rhos[-1] * (m_next - outputs[-1])
    return x_base - hh * correction


def sample_lcm(denoise, x, sigmas, noise, eta):
    for i, s, s_next in _steps(sigmas):
        x = denoise(x, s, i)
        if s_next:
            x = x + noise() * s_next
    return x


@dataclass(frozen=True, eq=False)
class SamplerData:
    """One A1111 sampler.

    Attributes:
        name (`str`): A1111's name, e.g. ``"DPM++ 2M"``.
        aliases (`tuple[str, ...]`): other accepted names, e.g. ``("k_dpmpp_2m",)``.
        function (`Callable`): ``(denoise, x, sigmas, noise, eta) -> x`` over the sigmas it is given.
        options (`Mapping[str, Any]`): A1111's sampler options as ``/sdapi/v1/samplers`` shows them:
            ``scheduler`` (the default schedule type), ``uses_ensd``, ``second_order``, ``brownian_noise``,
            ``discard_next_to_last_sigma``, ``solver_type``.
        default_eta (`float`): eta when the request gives none (1 for ancestral/SDE samplers, 0 for DDIM).
    """

    name: str
    aliases: tuple[str, ...]
    function: Callable
    options: Mapping[str, Any] = field(default_factory=dict)
    default_eta: float = 1.0

    @property
    def default_schedule(self) -> str | None:
        """The schedule type ``Automatic`` stands for with this sampler; `None` keeps the model's own spacing."""
        return self.options.get("scheduler")

    @property
    def uses_ensd(self) -> bool:
        """Whether the sampler draws fresh noise at each step, which A1111's "Eta noise seed delta" shifts."""
        return bool(self.options.get("uses_ensd", False))


all_samplers: tuple[SamplerData, ...] = (
    SamplerData("DPM++ 2M", ("k_dpmpp_2m",), sample_dpmpp_2m, {"scheduler": "karras"}),
    SamplerData("DPM++ SDE", ("k_dpmpp_sde",), sample_dpmpp_sde,
                {"scheduler": "karras", "second_order": True, "brownian_noise": True}),
    SamplerData("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), sample_dpmpp_2m_sde,
                {"scheduler": "exponential", "brownian_noise": True}),
    SamplerData("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), sample_dpmpp_2m_sde_heun,
                {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"}),
    SamplerData("DPM++ 2S a", ("k_dpmpp_2s_a",), sample_dpmpp_2s_ancestral,
                {"scheduler": "karras", "uses_ensd": True, "second_order": True}),
    SamplerData("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), sample_dpmpp_3m_sde,
                {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True}),
    SamplerData("Euler a", ("k_euler_a", "k_euler_ancestral"), sample_euler_ancestral, {"uses_ensd": True}),
    SamplerData("Euler", ("k_euler",), sample_euler),
    SamplerData("LMS", ("k_lms",), sample_lms),
    SamplerData("Heun", ("k_heun",), sample_heun, {"second_order": True}),
    SamplerData("DPM2", ("k_dpm_2",), sample_dpm_2,
                {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}),
    SamplerData("DPM2 a", ("k_dpm_2_a",), sample_dpm_2_ancestral,
                {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True,
                 "second_order": True}),
    SamplerData("DDIM", ("ddim",), sample_euler_ancestral, default_eta=0.0),
    SamplerData("PLMS", ("plms",), sample_plms),
    SamplerData("UniPC", ("unipc",), sample_unipc),
    SamplerData("LCM", ("k_lcm",), sample_lcm),
)


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
    """The one check of a sampler/schedule pair before a job queues (the API calls it); every pair it returns runs.

    A1111's old combined names (``"DPM++ 2M Karras"``) are read as sampler plus schedule type.

    Args:
        sampler_name (`str`):
            A sampler name, or one followed by a space and a schedule type (the form before A1111 1.9).
        scheduler_name (`str` or `None`, *optional*, defaults to `None`):
            The schedule type; a schedule type inside ``sampler_name`` takes its place.

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


def sigmas_for(sampler: SamplerData, scheduler: SchedulerData, steps: int, model: ModelSchedule) -> torch.Tensor:
    """The noise levels ``sampler`` walks for ``steps`` steps under ``scheduler`` on ``model`` (float64, ends at 0).

    ``Automatic`` is the sampler's default schedule type, else (and always for a zero terminal SNR model) the
    model's own timestep spacing. Samplers A1111 marks ``discard_next_to_last_sigma`` get one level more and
    drop the next-to-last, as in A1111.
    """
    if scheduler.name == "automatic" and sampler.default_schedule is not None and not model.zero_snr:
        scheduler = resolve_scheduler(sampler.default_schedule)
    discard = bool(sampler.options.get("discard_next_to_last_sigma"))
    sigmas = scheduler.sigmas(steps + discard, model)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def samplers_for_api() -> list[dict[str, Any]]:
    """The samplers in the shape of A1111's ``GET /sdapi/v1/samplers``.

    Returns:
        `list[dict]`: ``[{"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}, ...]``;
        option values are strings (``"second_order": "True"``), as A1111's ``dict[str, str]`` model sends them.
    """
    return [{"name": s.name, "aliases": list(s.aliases), "options": {k: str(v) for k, v in s.options.items()}}
            for s in all_samplers]


def schedulers_for_api() -> list[dict[str, Any]]:
    """The schedule types in the shape of A1111's ``GET /sdapi/v1/schedulers``.

    Returns:
        `list[dict]`: ``[{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1,
        "need_inner_model": False}, ...]``.
    """
    return [{"name": s.name, "label": s.label, "aliases": list(s.aliases) if s.aliases is not None else None,
             "default_rho": s.default_rho, "need_inner_model": s.need_inner_model}
            for s in all_schedulers]
