"""Run Serena's test suite: ``python scripts/run_tests.py [PYTEST ARGS ...]``.

Prepares the environment as launch.py does (venv, runtime and test pins, no pip when nothing changed), then runs
pytest inside it with coverage and strict hooks. Extra arguments go to pytest; when they name test paths, those
replace ``test/`` and the coverage floor (meant for the whole suite) is not applied.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import launch  # noqa: E402  (needs ROOT on sys.path)

COVERAGE_FLOOR = 80
PYTEST_OPTIONS = ["-p", "no:cacheprovider", "--cov=modules", "--cov-report=xml:coverage.xml", "--cov-report=term"]
NO_TESTS_COLLECTED = 5


SELECTING_OPTIONS = ("-k", "-m", "--lf", "--last-failed", "--deselect", "--ignore")


def names_paths(extra: list[str]) -> bool:
    """Whether ``extra`` selects tests by path (``test/quality``, ``test/x.py::test_y``)."""
    return any(not arg.startswith("-") and (ROOT / arg.split("::")[0]).exists() for arg in extra)


def selects_subset(extra: list[str]) -> bool:
    """Whether ``extra`` runs only part of the suite (paths, ``-k``, ``-m``, ...): the floor is for the whole."""
    return names_paths(extra) or any(arg.split("=")[0] in SELECTING_OPTIONS for arg in extra)


def pytest_command(python: Path, extra: list[str]) -> list[str]:
    if names_paths(extra):
        return [str(python), "-m", "pytest", *PYTEST_OPTIONS, *extra]
    floor = [] if selects_subset(extra) else [f"--cov-fail-under={COVERAGE_FLOOR}"]
    return [str(python), "-m", "pytest", "test/", *PYTEST_OPTIONS, *floor, *extra]


def main(argv=None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    try:
        python = launch.prepare_environment(launch.cmd_args.defaults(), with_tests=True)
    except launch.InstallError as error:
        print(f"run_tests: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    command = pytest_command(python, extra)
    print("run_tests: " + " ".join(command), flush=True)
    process = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, SERENA_STRICT_HOOKS="1"))
    try:
        code = process.wait()
    except KeyboardInterrupt:
        code = process.wait()
    if code == NO_TESTS_COLLECTED:
        print("run_tests: pytest collected no tests (exit 5); that counts as a failure", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
