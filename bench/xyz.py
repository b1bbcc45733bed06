"""Cost of the X/Y/Z plot against the same generations run one by one, in the same run, on the two shipped tiny
checkpoints.

Run: ``venv/bin/python bench/xyz.py [--repeat N]``. The grid is 3x3: X is the seed (3 values), Y the checkpoint
(``serena-tiny-v1, serena-tiny-alt, serena-tiny-v1``: two distinct, one repeated). "one by one" is the same nine
``process_images`` calls, each with its checkpoint as an override, in the order the grid runs them.

Two measurements:
- loads: from a cold cache holding one checkpoint (``sd_checkpoints_limit`` 1), the checkpoint loads of the grid,
  and of the nine generations in the grid's layout order (X fastest, what a plain loop does);
- time: both checkpoints cached (limit 2), the best of ``--repeat`` alternating runs of the grid and of the nine
  generations in the grid's run order. The ratio is grid over one by one; target <= 1.05 (what the script adds
  is parsing, checks and drawing the grid, not sampling).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from timing import best_times  # noqa: E402

from modules import cmd_args, initialize, jobs, processing, scripts, sd_models, shared  # noqa: E402

REQUEST = dict(prompt="a red circle on a blue background", negative_prompt="blurry", steps=8, seed=1234, width=64,
               height=64, sampler_name="Euler", do_not_save_samples=True)
SEEDS = (1, 2, 3)
CHECKPOINTS = ("serena-tiny-v1", "serena-tiny-alt", "serena-tiny-v1")
SEED_AXIS, CHECKPOINT_AXIS = 1, 11  # A1111's txt2img indices
ARGS = [SEED_AXIS, ", ".join(map(str, SEEDS)), [], CHECKPOINT_AXIS, ", ".join(CHECKPOINTS), [], 0, "", [], True, False,
        False, False, False, False, False, 0, False]


def grid() -> None:
    p = processing.StableDiffusionProcessingTxt2Img(**REQUEST)
    selected, errors = scripts.select("txt2img", "X/Y/Z plot", ARGS)
    assert not errors, errors
    p.scripts = selected
    processed = jobs.run_job("bench", scripts.run, p)
    assert len(processed.images) == 1 and not processed.warnings, processed.warnings


def cells(run_order: bool) -> list[tuple[int, str]]:
    """(seed, checkpoint) of the nine cells: in the order the grid runs them (checkpoint outermost, its repeat
    with its first), or in the layout's (X fastest)."""
    if run_order:
        names = sorted(range(len(CHECKPOINTS)), key=lambda i: CHECKPOINTS.index(CHECKPOINTS[i]))
        return [(seed, CHECKPOINTS[i]) for i in names for seed in SEEDS]
    return [(seed, name) for name in CHECKPOINTS for seed in SEEDS]


def one_by_one(run_order: bool = True) -> None:
    for seed, name in cells(run_order):
        p = processing.StableDiffusionProcessingTxt2Img(**{**REQUEST, "seed": seed},
                                                         override_settings={"sd_model_checkpoint": name})
        jobs.run_job("bench", processing.process_images, p)


def loads_of(fn) -> int:
    sd_models.model_manager.unload_all()
    before = sd_models.model_manager.loads
    fn()
    return sd_models.model_manager.loads - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    initialize.initialize(cmd_args.parse_args(["--data-dir", tempfile.mkdtemp()]))
    shared.opts.sd_checkpoints_limit = 1
    grid_loads, loop_loads = loads_of(grid), loads_of(lambda: one_by_one(run_order=False))
    shared.opts.sd_checkpoints_limit = 2
    grid(), one_by_one()  # warm: both checkpoints cached, caches filled
    g, o = best_times((grid, one_by_one), args.repeat)
    print(f"{'case':<44}{'value':>10}")
    print(f"{'3x3 grid, best s':<44}{g:>10.3f}")
    print(f"{'the nine generations one by one, best s':<44}{o:>10.3f}")
    print(f"{'ratio (target <= 1.05)':<44}{g / o:>10.3f}")
    print(f"{'checkpoint loads, grid (cold, limit 1)':<44}{grid_loads:>10}")
    print(f"{'checkpoint loads, layout order (cold, limit 1)':<44}{loop_loads:>10}")
    print(f"{'distinct checkpoints':<44}{len(set(CHECKPOINTS)):>10}")


if __name__ == "__main__":
    main()
