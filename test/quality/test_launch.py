"""launch.py: flag errors, environment choice, the no-reinstall stamp, extension installers, handing over to webui.py.

Nothing here runs pip: ``run_pip`` is replaced by a recorder, and the requirement files are small temporary ones
checked against this interpreter (``pluggy==<installed>`` holds, ``pluggy==0.0.1`` does not).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
launch = importlib.import_module("launch")
run_tests = importlib.import_module("scripts.run_tests")

PLUGGY = importlib.metadata.version("pluggy")
HEAVY = ("torch", "diffusers", "transformers", "gradio", "fastapi", "numpy")


def run_python(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60, **kwargs)


# --- flags, before anything else happens ---------------------------------------------------------------------------

def test_unknown_flag_exits_2_naming_it_without_site_packages():
    # -S: no site-packages, as with a bare system Python on a fresh clone.
    result = run_python("-S", str(ROOT / "launch.py"), "--no-such-flag", cwd="/")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert "--help" in result.stderr


def test_help_lists_the_flags_without_site_packages():
    result = run_python("-S", str(ROOT / "launch.py"), "--help", cwd="/")
    assert result.returncode == 0, result.stderr
    for flag in ("--data-dir", "--skip-install", "--exit", "--list-hooks", "--api-auth"):
        assert flag in result.stdout


def test_importing_launch_loads_nothing_heavy():
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import launch; "
            f"print([m for m in sys.modules if m.split('.')[0] in {HEAVY!r}])")
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- which interpreter ---------------------------------------------------------------------------------------------

def base_python(*code_lines: str) -> subprocess.CompletedProcess:
    """Run code with the interpreter this venv was made from, i.e. not inside a venv."""
    base = Path(sys.base_prefix) / "bin" / "python3"
    code = "\n".join([f"import sys; sys.path.insert(0, {str(ROOT)!r}); import launch", *code_lines])
    return subprocess.run([str(base), "-c", code], capture_output=True, text=True, timeout=60)


def test_inside_a_venv_that_venv_is_used(tmp_path):
    assert launch.choose_environment(tmp_path / "venv") == (Path(sys.executable), Path(sys.prefix))
    assert not (tmp_path / "venv").exists()


def test_outside_a_venv_the_venv_folder_is_used_when_present(tmp_path):
    python = launch.venv_python(tmp_path / "venv")
    python.parent.mkdir(parents=True)
    python.touch()
    result = base_python(f"print(*launch.choose_environment(launch.Path({str(tmp_path / 'venv')!r})))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(python), str(tmp_path / "venv")]


def test_outside_a_venv_without_install_nothing_is_created(tmp_path):
    venv_dir = str(tmp_path / "v")
    result = base_python("import sys",
                         f"python, prefix = launch.choose_environment(launch.Path({venv_dir!r}), create=False)",
                         "print(python == launch.Path(sys.executable), prefix == launch.Path(sys.prefix))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]
    assert not (tmp_path / "v").exists()


# --- the stamp and the version check -------------------------------------------------------------------------------

@pytest.fixture
def requirements(tmp_path):
    path = tmp_path / "requirements_versions.txt"
    path.write_text(f"# fake\npluggy=={PLUGGY}\n", encoding="utf-8")
    return path


@pytest.fixture
def prefix(tmp_path):
    path = tmp_path / "prefix"
    path.mkdir()
    return path


def stamp_as_installed(prefix: Path, *files: Path) -> None:
    launch.write_stamp(prefix, {f"requirements:{f.name}": launch.file_digest(f) for f in files})


def test_never_installed_then_stamped_then_changed(requirements, prefix):
    python = Path(sys.executable)
    assert launch.requirements_satisfied(python, prefix, [requirements]) == (
        False, ["requirements_versions.txt was never installed here"])

    stamp_as_installed(prefix, requirements)
    assert launch.requirements_satisfied(python, prefix, [requirements]) == (True, [])

    requirements.write_text(f"pluggy=={PLUGGY}\ntqdm==4.70.1\n", encoding="utf-8")
    assert launch.requirements_satisfied(python, prefix, [requirements]) == (
        False, ["requirements_versions.txt changed since the last install"])


def test_a_matching_stamp_is_not_enough_when_a_pin_is_not_installed(requirements, prefix):
    requirements.write_text("pluggy==0.0.1\n", encoding="utf-8")
    stamp_as_installed(prefix, requirements)
    satisfied, reasons = launch.requirements_satisfied(Path(sys.executable), prefix, [requirements])
    assert not satisfied
    assert reasons == [f"requirements_versions.txt: pluggy==0.0.1 is pinned but {PLUGGY} is installed"]


def test_every_requested_file_must_be_stamped(requirements, prefix, tmp_path):
    test_requirements = tmp_path / "requirements-test.txt"
    test_requirements.write_text(f"pluggy=={PLUGGY}\n", encoding="utf-8")
    stamp_as_installed(prefix, requirements)
    assert launch.requirements_satisfied(Path(sys.executable), prefix, [requirements, test_requirements]) == (
        False, ["requirements-test.txt was never installed here"])


# --- prepare_environment: pip only when needed ---------------------------------------------------------------------

@pytest.fixture
def pip_calls(monkeypatch, requirements, prefix):
    """Point launch at the fake requirements and prefix, and record pip instead of running it."""
    calls = []
    monkeypatch.setattr(launch, "RUNTIME_REQUIREMENTS", requirements)
    monkeypatch.setattr(launch, "choose_environment", lambda venv_dir, create: (Path(sys.executable), prefix))
    monkeypatch.setattr(launch, "run_pip", lambda python, args: calls.append(args))
    return calls


NO_EXTENSIONS = ["--disable-all-extensions"]


def test_second_run_does_not_call_pip(pip_calls, requirements, prefix, capsys):
    args = launch.cmd_args.parse_args(NO_EXTENSIONS)
    assert launch.prepare_environment(args) == Path(sys.executable)
    constraints = str(prefix / launch.CONSTRAINTS_NAME)
    assert pip_calls == [["install", "-r", str(requirements), "-c", constraints]]
    assert launch.read_stamp(prefix) == {"requirements:requirements_versions.txt": launch.file_digest(requirements)}

    launch.prepare_environment(args)
    assert len(pip_calls) == 1
    assert "Serena: requirements satisfied (" in capsys.readouterr().out


def test_changed_requirements_or_wrong_version_installs_again(pip_calls, requirements, prefix):
    args = launch.cmd_args.parse_args(NO_EXTENSIONS)
    launch.prepare_environment(args)
    requirements.write_text("pluggy==0.0.1\n", encoding="utf-8")
    launch.prepare_environment(args)
    assert len(pip_calls) == 2
    # The stamp now matches, but pluggy 0.0.1 is still not installed (the recorder installed nothing).
    launch.prepare_environment(args)
    assert len(pip_calls) == 3


def test_skip_install_checks_nothing(pip_calls, requirements, prefix):
    launch.prepare_environment(launch.cmd_args.parse_args(["--skip-install", *NO_EXTENSIONS]))
    assert pip_calls == []
    assert launch.read_stamp(prefix) == {}


def test_installing_only_runtime_pins_forgets_the_test_pins(pip_calls, requirements, prefix, monkeypatch, tmp_path):
    test_requirements = tmp_path / "requirements-test.txt"
    test_requirements.write_text(f"pluggy=={PLUGGY}\n", encoding="utf-8")
    monkeypatch.setattr(launch, "TEST_REQUIREMENTS", test_requirements)
    args = launch.cmd_args.parse_args(NO_EXTENSIONS)
    launch.prepare_environment(args, with_tests=True)
    assert pip_calls[0][:4] == ["install", "-r", str(requirements), "-r"]
    assert set(launch.read_stamp(prefix)) == {"requirements:requirements_versions.txt",
                                              "requirements:requirements-test.txt",
                                              "requirements:requirements-scale-out.txt"}

    requirements.write_text(f"pluggy=={PLUGGY}  # touched\n", encoding="utf-8")
    launch.prepare_environment(args)
    assert set(launch.read_stamp(prefix)) == {"requirements:requirements_versions.txt"}


def test_torch_is_installed_first_and_constrained(monkeypatch, tmp_path, prefix):
    calls = []
    monkeypatch.setattr(launch, "run_pip", lambda python, args: calls.append(args))
    runtime = tmp_path / "runtime.txt"
    runtime.write_text("torch==2.13.0\ndiffusers==0.42.1\n", encoding="utf-8")
    tests = tmp_path / "tests.txt"
    tests.write_text("pytest==9.2.0\n", encoding="utf-8")
    launch.install_requirements(Path(sys.executable), prefix, [runtime, tests])
    constraints = prefix / launch.CONSTRAINTS_NAME
    assert constraints.read_text() == "torch==2.13.0\n"
    assert calls == [["install", "torch==2.13.0", "-c", str(constraints)],
                     ["install", "-r", str(runtime), "-r", str(tests), "-c", str(constraints)]]


def test_a_failing_pip_stops_with_an_install_error():
    with pytest.raises(launch.InstallError, match="failed with exit code"):
        launch.run_pip(Path(sys.executable), ["--no-such-pip-option"])


# --- extension installers ------------------------------------------------------------------------------------------

def make_extension(data_dir: Path, name: str, installer: str | None) -> Path:
    folder = data_dir / "extensions" / name
    folder.mkdir(parents=True)
    if installer is not None:
        (folder / "install.py").write_text(installer, encoding="utf-8")
    return folder


def user_installers(args, data_dir: Path) -> list[str]:
    return [path.parent.name for path in launch.extension_installers(args) if data_dir in path.parents]


def test_installers_are_found_in_name_order_and_disabled_ones_skipped(tmp_path):
    for name in ("b-ext", "a-ext", "off-ext"):
        make_extension(tmp_path, name, "")
    make_extension(tmp_path, "no-installer", None)
    (tmp_path / "config.json").write_text(json.dumps({"disabled_extensions": ["off-ext"]}), encoding="utf-8")
    data = ["--data-dir", str(tmp_path)]
    assert user_installers(launch.cmd_args.parse_args(data), tmp_path) == ["a-ext", "b-ext"]
    assert user_installers(launch.cmd_args.parse_args([*data, "--disable-extra-extensions"]), tmp_path) == []
    assert launch.extension_installers(launch.cmd_args.parse_args([*data, "--disable-all-extensions"])) == []

    (tmp_path / "config.json").write_text(json.dumps({"disable_all_extensions": "extra"}), encoding="utf-8")
    assert user_installers(launch.cmd_args.parse_args(data), tmp_path) == []


def test_disabled_extensions_match_metadata_names_case_insensitively_like_the_loader(tmp_path):
    """``disabled_extensions`` holds the names the Extensions tab writes: metadata names, not folder names."""
    named = make_extension(tmp_path, "sd-webui-fancy", "")
    (named / "metadata.ini").write_text("[Extension]\nName = Fancy Thing\n", encoding="utf-8")
    make_extension(tmp_path, "Upper-Folder", "")
    make_extension(tmp_path, "kept", "")
    (tmp_path / "config.json").write_text(json.dumps({"disabled_extensions": ["fancy thing", "upper-folder"]}),
                                          encoding="utf-8")
    args = launch.cmd_args.parse_args(["--data-dir", str(tmp_path)])
    assert user_installers(args, tmp_path) == ["kept"]


def test_extension_discovery_needs_only_the_standard_library():
    """launch.py decides which installers run before the environment exists, with the loader's own rule."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import modules.extension_discovery; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {(*HEAVY, 'pluggy', 'modules')!r}))")
    result = run_python("-S", "-c", code)  # -S: no site-packages at all
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['modules', 'modules.extension_discovery']"  # the namespace package itself


@pytest.mark.parametrize("settings, flags, enabled", [
    ({}, [], ["Upper-Folder", "bi", "kept", "needy", "sd-webui-fancy"]),
    ({"disabled_extensions": ["fancy thing", "UPPER-folder", "bi"]}, [], ["kept", "needy"]),
    ({"disable_all_extensions": "extra"}, [], ["bi"]),
    ({"disable_all_extensions": "all"}, [], []),
    ({}, ["--disable-extra-extensions"], ["bi"]),
    ({"disabled_extensions": ["kept"]}, ["--disable-all-extensions"], []),
])
def test_installers_run_for_exactly_the_extensions_the_loader_enables(tmp_path, data_dir, settings, flags, enabled):
    from modules import extensions, paths, plugins, shared

    builtin = tmp_path / "builtin"
    (builtin / "bi").mkdir(parents=True)
    (builtin / "bi" / "install.py").write_text("", encoding="utf-8")
    named = make_extension(tmp_path, "sd-webui-fancy", "")
    (named / "metadata.ini").write_text("[Extension]\nName = Fancy Thing\n", encoding="utf-8")
    needy = make_extension(tmp_path, "needy", "")  # enabled, though its requirement is missing
    (needy / "metadata.ini").write_text("[Extension]\nRequires = ghost\n", encoding="utf-8")
    for name in ("Upper-Folder", "kept"):
        make_extension(tmp_path, name, "")
    (tmp_path / "config.json").write_text(json.dumps(settings), encoding="utf-8")
    args = launch.cmd_args.parse_args(["--data-dir", str(tmp_path), *flags])
    real = paths.from_cmd_opts(args)
    folders = types.SimpleNamespace(extensions_builtin_dir=str(builtin), extensions_dir=real.extensions_dir,
                                    config_file=real.config_file)
    shared.opts.load()
    host = plugins.Host(strict=True)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(launch.paths, "from_cmd_opts", lambda _: folders)
        installers = [path.parent.name for path in launch.extension_installers(args)]
    exts = extensions.load_configured(host=host, entry_points=False, cmd_opts=args, data_paths=folders)
    try:
        assert sorted(installers) == sorted(e.folder for e in exts if e.enabled) == enabled
        assert [e.folder for e in exts if e.loaded] == [f for f in ("bi", "sd-webui-fancy", "kept", "Upper-Folder")
                                                        if f in enabled]  # needy is enabled, yet cannot load
    finally:
        extensions.unload(exts, host)


def test_installers_run_once_and_a_failure_is_reported_by_name_without_aborting(pip_calls, prefix, tmp_path,
                                                                                 monkeypatch, capsys):
    log = tmp_path / "ran.log"
    good = make_extension(tmp_path, "good-ext", (
        "import os, launch\n"  # A1111 installers import launch: it must be importable from their process.
        f"open({str(log)!r}, 'a').write('good ' + os.environ['PIP_CONSTRAINT'] + '\\n')\n"))
    bad = make_extension(tmp_path, "bad-ext", (
        f"open({str(log)!r}, 'a').write('bad\\n')\nraise SystemExit('bad-ext cannot install')\n"))
    installers = [bad / "install.py", good / "install.py"]
    monkeypatch.setattr(launch, "extension_installers", lambda args: installers)
    args = launch.cmd_args.parse_args([])

    good_line = f"good {prefix / launch.CONSTRAINTS_NAME}\n"  # PIP_CONSTRAINT keeps torch pinned for its pip

    launch.prepare_environment(args)
    err = capsys.readouterr().err
    assert "install.py of extension 'bad-ext' failed with exit code 1" in err
    assert "bad-ext cannot install" in err
    assert log.read_text() == "bad\n" + good_line

    launch.prepare_environment(args)
    assert log.read_text() == "bad\n" + good_line + "bad\n"  # only the failed one runs again

    (good / "install.py").write_text((good / "install.py").read_text() + "# changed\n", encoding="utf-8")
    launch.prepare_environment(args)
    assert log.read_text() == "bad\n" + good_line + "bad\n" + "bad\n" + good_line
    assert len(pip_calls) == 1


# --- handing over to webui.py --------------------------------------------------------------------------------------

def fake_webui(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "webui.py"
    script.write_text(body, encoding="utf-8")
    return script


def start_run_webui(script: Path, argv: list[str]) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import launch; "
            f"sys.exit(launch.run_webui(launch.Path(sys.executable), {argv!r}, script=launch.Path({str(script)!r})))")
    # A shell that starts jobs in the background ignores SIGINT for them; give the child the terminal's default.
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_webui_gets_the_same_argv_and_its_exit_code_is_returned(tmp_path):
    script = fake_webui(tmp_path, "import sys\nprint(sys.argv[1:])\nsys.exit(7)\n")
    process = start_run_webui(script, ["--exit", "--port", "7000"])
    out, err = process.communicate(timeout=60)
    assert process.returncode == 7, err
    assert out.strip() == "['--exit', '--port', '7000']"


def test_missing_webui_is_an_error(tmp_path, capsys):
    assert launch.run_webui(Path(sys.executable), [], script=tmp_path / "webui.py") == 1
    assert "webui.py not found" in capsys.readouterr().err


def test_ctrl_c_reaches_webui_which_stops_cleanly(tmp_path):
    script = fake_webui(tmp_path, (
        "import time\n"
        "try:\n"
        "    print('Serena ready', flush=True)\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('stopped', flush=True)\n"))
    process = start_run_webui(script, [])
    try:
        assert process.stdout.readline().strip() == "Serena ready"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out.strip() == "stopped"


# --- scripts/run_tests.py ------------------------------------------------------------------------------------------

def test_run_tests_runs_the_whole_suite_with_the_coverage_floor():
    command = run_tests.pytest_command(Path("python"), ["-x"])
    assert command[:4] == ["python", "-m", "pytest", "test/"]
    assert "--cov-fail-under=80" in command
    assert command[-1:] == ["-x"]


@pytest.mark.parametrize("extra", [["-k", "launch"], ["-m", "slow"], ["--deselect=test/x.py::t"]])
def test_run_tests_selecting_a_subset_drops_the_floor(extra):
    command = run_tests.pytest_command(Path("python"), extra)
    assert command[:4] == ["python", "-m", "pytest", "test/"]
    assert not any(arg.startswith("--cov-fail-under") for arg in command)


def test_run_tests_with_paths_runs_only_those_without_the_floor():
    command = run_tests.pytest_command(Path("python"), ["test/quality", "-x"])
    assert "test/" not in command
    assert not any(arg.startswith("--cov-fail-under") for arg in command)
    assert command[-2:] == ["test/quality", "-x"]
