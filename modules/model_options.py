"""The model layer's part of the model options: which checkpoint and VAE names exist, and whether a value fits the
checkpoint it would run with.

``modules.shared_options`` declares ``sd_model_checkpoint``, ``sd_vae`` and ``CLIP_stop_at_last_layers`` without
knowing any model; ``attach`` gives them their choices and checks (``Options.attach``). ``modules.initialize`` calls
it before the settings are loaded, so a stored value is checked as before.

Model-dependent checks (``check_with``): a value is checked against the checkpoint it would run with — the one
in the same request or settings change, else the effective one. A stored value that a checkpoint chosen later
cannot honour is not an error: the generation fits it to the model with a warning (``processing``).
"""

from __future__ import annotations

from modules import sd_models, sd_vae


def _checkpoint_title(value):
    info = sd_models.resolve_checkpoint(value)
    sd_models.model_manager.facts(info)  # a file that cannot load is refused by name before it is chosen
    return info.title


def _vae_name(value):
    name = sd_vae.resolve_vae_name(value)
    if name not in sd_vae.SPECIAL:
        sd_models.model_manager.vae_facts(sd_vae.vae_path(name))
    return name


def _model_of(values):
    if "sd_model_checkpoint" not in values:  # rejected in the same check: that error is the one to report
        return None
    return sd_models.checkpoint_facts(values["sd_model_checkpoint"])


def _clip_skip_fits(value, values):
    found = _model_of(values)
    problem = found and sd_models.clip_skip_problem(value, *found)
    if problem:
        raise ValueError(problem)
    return value


def _vae_fits(value, values):
    found = _model_of(values)
    if found is None or value in sd_vae.SPECIAL:
        return value
    vae_facts = sd_models.model_manager.vae_facts(sd_vae.vae_path(value))
    problem = vae_facts and sd_models.vae_problem(value, vae_facts, *found)
    if problem:
        raise ValueError(problem)
    return value


def _checkpoint_titles():
    return [c.title for c in sd_models.list_checkpoints()]


def attach(opts) -> None:
    """Give ``opts``' model options their choices and checks (the declarations gain them: see ``Options.attach``)."""
    opts.attach("sd_model_checkpoint", validate=_checkpoint_title, choices=_checkpoint_titles)
    opts.attach("sd_vae", validate=_vae_name, choices=sd_vae.vae_choices, check_with=_vae_fits)
    opts.attach("CLIP_stop_at_last_layers", check_with=_clip_skip_fits)
