"""Serena's launcher: pick the Python environment, install the pinned requirements when needed, then run webui.py.

Runs with any Python 3.11 and imports nothing heavy (only the flag parser and the folder rules), so a fresh clone
starts with ``python launch.py``. The install check is a stamp file inside the environment plus a version check
of every pin, so a run with everything in place never calls pip.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from modules import cmd_args, paths
from modules.extension_discovery import Enablement, find
from scripts import verify_pinned_deps

ROOT = Path(__file__).resolve().parent
RUNTIME_REQUIREMENTS = ROOT / "requirements_versions.txt"
TEST_REQUIREMENTS = ROOT / "requirements-test.txt"
# Ray Serve, for --workers/--ray-address only (and for the tests, which start real workers).
SCALE_OUT_REQUIREMENTS = ROOT / "requirements-scale-out.txt"
WEBUI = ROOT / "webui.py"
VERIFY_SCRIPT = Path(verify_pinned_deps.__file__)
STAMP_NAME = ".serena-requirements.sha256"
CONSTRAINTS_NAME = ".serena-constraints.txt"


class InstallError(RuntimeError):
    """The environment could not be prepared; the message says which step failed."""


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def choose_environment(venv_dir: Path = ROOT / "venv", create: bool = True) -> tuple[Path, Path]:
    """Return ``(interpreter, prefix)``: the running venv if there is one, else ``venv_dir`` (created if asked)."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.executable), Path(sys.prefix)
    python = venv_python(venv_dir)
    if python.exists():
        return python, venv_dir
    if not create:
        return Path(sys.executable), Path(sys.prefix)
    print(f"Serena: creating the virtual environment {venv_dir}", flush=True)
    if subprocess.call([sys.executable, "-m", "venv", str(venv_dir)]) != 0:
        raise InstallError(f"'{sys.executable} -m venv {venv_dir}' failed (on Debian: apt-get install python3-venv)")
    return python, venv_dir


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_stamp(prefix: Path) -> dict[str, str]:
    """Stamp lines are ``<sha256>  <key>``; keys are ``requirements:<file name>`` and ``install.py:<extension dir>``."""
    try:
        lines = (Path(prefix) / STAMP_NAME).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    return {key: digest for digest, _, key in (line.partition("  ") for line in lines) if key}


def write_stamp(prefix: Path, stamp: dict[str, str]) -> None:
    text = "".join(f"{digest}  {key}\n" for key, digest in sorted(stamp.items()))
    (Path(prefix) / STAMP_NAME).write_text(text, encoding="utf-8")


def requirements_satisfied(python: Path, prefix: Path, files: list[Path]) -> tuple[bool, list[str]]:
    """Return ``(satisfied, reasons)``: every file's hash is in the stamp and every pin is installed at its version.

    The version check runs verify_pinned_deps.py inside ``python`` (about 0.1 s), since that is the environment
    webui.py will import from.
    """
    stamp = read_stamp(prefix)
    changed = []
    for path in map(Path, files):
        installed = stamp.get(f"requirements:{path.name}")
        if installed is None:
            changed.append(f"{path.name} was never installed here")
        elif installed != file_digest(path):
            changed.append(f"{path.name} changed since the last install")
    if changed:
        return False, changed
    result = subprocess.run([str(python), str(VERIFY_SCRIPT), *map(str, files)], capture_output=True, text=True)
    if result.returncode != 0:
        return False, (result.stdout + result.stderr).strip().splitlines() or [f"check exited {result.returncode}"]
    return True, []


def run_pip(python: Path, args: list[str]) -> None:
    command = [str(python), "-m", "pip", *args]
    print("Serena: " + " ".join(command), flush=True)
    code = subprocess.call(command)
    if code != 0:
        raise InstallError(f"pip {' '.join(args)} failed with exit code {code}")


def write_constraints(prefix: Path, files: list[Path]) -> Path:
    """Pin torch for every pip run of the install step, so no package can pull a different (e.g. CUDA) build."""
    pins = {verify_pinned_deps.normalize_name(name): version
            for path in files for name, version in verify_pinned_deps.parse_requirements(path)[0]}
    path = Path(prefix) / CONSTRAINTS_NAME
    path.write_text(f"torch=={pins['torch']}\n" if "torch" in pins else "", encoding="utf-8")
    return path


def install_requirements(python: Path, prefix: Path, files: list[Path]) -> None:
    """torch first on its own, then every file with the torch constraint."""
    constraints = write_constraints(prefix, files)
    torch_pin = constraints.read_text(encoding="utf-8").strip()
    if torch_pin:
        run_pip(python, ["install", torch_pin, "-c", str(constraints)])
    requirement_args = [arg for path in files for arg in ("-r", str(path))]
    run_pip(python, ["install", *requirement_args, "-c", str(constraints)])


def _raw_settings(args) -> dict:
    # The options store imports more than launch.py may; A1111 reads the raw JSON here too.
    try:
        with open(paths.from_cmd_opts(args).config_file, encoding="utf-8") as file:
            settings = json.load(file)
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def extension_installers(args) -> list[Path]:
    """``install.py`` of each enabled extension: built-in ones, then ``<data-dir>/extensions/``, in folder order.

    Enabled by the loader's own rule (``extension_discovery.find`` with ``Enablement.configured``), so a disabled
    extension's installer never runs.
    """
    data_paths = paths.from_cmd_opts(args)
    found = find(data_paths.extensions_builtin_dir, data_paths.extensions_dir,
                 Enablement.configured(args, _raw_settings(args)), entry_points=False)
    return [Path(ext.path) / "install.py" for ext in found if ext.enabled and Path(ext.path, "install.py").is_file()]


def run_extension_installers(python: Path, installers: list[Path], constraints: Path) -> list[Path]:
    """Run each installer in ``python``, reporting a failure by extension name; return the installers that failed.

    As in A1111 the installer runs from Serena's folder with it on PYTHONPATH; PIP_CONSTRAINT keeps torch pinned
    for any pip it starts.
    """
    env = dict(os.environ, PIP_CONSTRAINT=str(constraints),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    failed = []
    for installer in installers:
        name = installer.parent.name
        print(f"Serena: running install.py of extension '{name}'", flush=True)
        result = subprocess.run([str(python), str(installer)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            failed.append(installer)
            print(f"Serena: install.py of extension '{name}' failed with exit code {result.returncode}:\n"
                  f"{result.stdout.rstrip()}", file=sys.stderr, flush=True)
    return failed


def requirement_files(args, with_tests: bool = False) -> list[Path]:
    """The pinned requirement files this run needs: the runtime's, the tests', Ray Serve's when scaling out."""
    files = [RUNTIME_REQUIREMENTS]
    if with_tests:
        files.append(TEST_REQUIREMENTS)
    if with_tests or cmd_args.scales_out(args):
        files.append(SCALE_OUT_REQUIREMENTS)
    return files


def prepare_environment(args, with_tests: bool = False, venv_dir: Path = ROOT / "venv") -> Path:
    """Make the environment ready and return the interpreter that must run webui.py (or the tests)."""
    start = time.perf_counter()
    python, prefix = choose_environment(venv_dir, create=not args.skip_install)
    if args.skip_install:
        return python
    files = requirement_files(args, with_tests)
    satisfied, reasons = requirements_satisfied(python, prefix, files)
    stamp = read_stamp(prefix)
    if not satisfied:
        more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        print(f"Serena: installing the pinned requirements into {prefix}: {reasons[0]}{more}", flush=True)
        install_requirements(python, prefix, files)
        # Requirement files not installed now may no longer hold after this install: forget them.
        stamp = {key: digest for key, digest in stamp.items() if not key.startswith("requirements:")}
        stamp.update({f"requirements:{path.name}": file_digest(path) for path in files})
        write_stamp(prefix, stamp)

    pending = [path for path in extension_installers(args)
               if stamp.get(f"install.py:{path.parent}") != file_digest(path)]
    if pending:
        failed = run_extension_installers(python, pending, write_constraints(prefix, files))
        stamp.update({f"install.py:{path.parent}": file_digest(path)
                      for path in pending if path not in failed})
        write_stamp(prefix, stamp)
        if failed:
            names = ", ".join(path.parent.name for path in failed)
            print(f"Serena: extension installers failed: {names} (they run again next start)", flush=True)

    elapsed = time.perf_counter() - start
    if satisfied and not pending:
        print(f"Serena: requirements satisfied ({elapsed:.1f} s)", flush=True)
    else:
        print(f"Serena: environment ready in {elapsed:.1f} s ({python})", flush=True)
    return python


def run_webui(python: Path, argv: list[str], script: Path = WEBUI) -> int:
    """Run ``script`` with ``argv`` in ``python`` and return its exit code.

    On POSIX the launcher becomes that process, so Ctrl-C and kill signals go straight to webui.py.
    """
    command = [str(python), str(script), *argv]
    if not Path(script).is_file():
        print(f"Serena: {script} not found", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execv(command[0], command)
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        # The console sent Ctrl-C to webui.py as well; let it finish shutting down.
        return process.wait()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = cmd_args.parse_args(argv)
    try:
        python = prepare_environment(args)
    except InstallError as error:
        print(f"Serena: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Serena: interrupted", file=sys.stderr)
        return 130
    return run_webui(python, argv)


if __name__ == "__main__":
    sys.exit(main())
