"""Check that every requirement line is an exact ``==`` pin and that the running interpreter has exactly that version.

Usage: ``python scripts/verify_pinned_deps.py [FILE ...]`` (default: requirements_versions.txt,
requirements-test.txt and requirements-scale-out.txt beside this script's parent). Prints one line per problem and exits 1, or a one-line summary
and exits 0. Standard library only: launch.py runs it inside a fresh venv that has nothing else installed yet.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILES = (ROOT / "requirements_versions.txt", ROOT / "requirements-test.txt", ROOT / "requirements-scale-out.txt")

# name, optional [extras], "==", version; no markers, wildcards or other operators.
_PIN = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*==\s*([A-Za-z0-9._+!-]+)$")
_RELEASE = re.compile(r"^v?(\d+(?:\.\d+)*)(.*)$")


def normalize_name(name: str) -> str:
    """PEP 503 name: ``Pillow``, ``huggingface_hub`` and ``huggingface-hub`` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _strip_comment(line: str) -> str:
    # pip treats "#" as a comment at the start of a line or after whitespace.
    return re.sub(r"(^|\s)#.*$", "", line).strip()


def parse_requirements(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Return ``([(name, version), ...], problems)`` for one requirements file."""
    pins, problems = [], []
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = _strip_comment(raw)
        if not line:
            continue
        match = _PIN.match(line)
        if match is None:
            problems.append(f"{Path(path).name}:{number}: not an exact '==' pin: {raw.strip()}")
        else:
            pins.append((match.group(1), match.group(2)))
    return pins, problems


def versions_match(pinned: str, installed: str) -> bool:
    """PEP 440 ``==`` without a local label in the pin: ``2.13.0`` matches ``2.13.0+cpu``; ``1.0`` matches ``1.0.0``."""
    if "+" not in pinned:
        installed = installed.split("+", 1)[0]

    def key(version: str):
        match = _RELEASE.match(version.lower())
        if match is None:
            return (), version.lower()
        release = [int(part) for part in match.group(1).split(".")]
        while len(release) > 1 and release[-1] == 0:
            release.pop()
        return tuple(release), match.group(2)

    return key(pinned) == key(installed)


def installed_versions() -> dict[str, str]:
    """Normalised distribution name -> version, the first one on ``sys.path`` winning as it does for imports."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize_name(name), dist.version)
    return found


def check(files=DEFAULT_FILES, installed: dict[str, str] | None = None) -> tuple[list[str], int]:
    """Return ``(problems, number_of_pins)`` for ``files`` against ``installed`` (default: this interpreter's)."""
    installed = installed_versions() if installed is None else installed
    problems, count = [], 0
    for path in files:
        pins, file_problems = parse_requirements(path)
        problems += file_problems
        count += len(pins)
        for name, version in pins:
            have = installed.get(normalize_name(name))
            if have is None:
                problems.append(f"{Path(path).name}: {name}=={version} is not installed")
            elif not versions_match(version, have):
                problems.append(f"{Path(path).name}: {name}=={version} is pinned but {have} is installed")
    return problems, count


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    files = [Path(arg) for arg in argv] or list(DEFAULT_FILES)
    problems, count = check(files)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"verify_pinned_deps: {count} pins in {len(files)} files, all installed at the pinned version ({sys.prefix})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
