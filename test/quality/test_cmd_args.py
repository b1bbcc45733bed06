"""Flags: A1111 names and defaults, Serena's additions, and a clear error for unknown flags."""

from __future__ import annotations

import re

import pytest

from modules import cmd_args, paths


def test_defaults_match_a1111():
    args = cmd_args.parse_args([])
    assert args.port is None and args.listen is False and args.nowebui is False
    assert args.data_dir is None and args.use_cpu == [] and args.strict_hooks is False


def test_flags_parse():
    args = cmd_args.parse_args(["--data-dir", "/d", "--port", "9000", "--listen", "--nowebui", "--use-cpu", "all",
                                "--api-auth", "u:p:w", "--freeze-settings", "--strict-hooks", "--list-hooks",
                                "--disable-extra-extensions", "--skip-install", "--ckpt", "m.safetensors"])
    assert (args.data_dir, args.port, args.listen, args.use_cpu) == ("/d", 9000, True, ["all"])
    assert args.api_auth == "u:p:w" and args.freeze_settings and args.strict_hooks and args.list_hooks


def test_unknown_flag_names_the_flag(capsys):
    with pytest.raises(SystemExit) as info:
        cmd_args.parse_args(["--no-such-flag"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--no-such-flag" in err and "--help" in err


def test_abbreviations_are_not_guessed(capsys):
    with pytest.raises(SystemExit):
        cmd_args.parse_args(["--nowebu"])


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        cmd_args.parse_args(["--help"])
    out = capsys.readouterr().out
    # Whole flags only: "--api" must be listed itself, not found inside "--api-auth" or "--api-log".
    listed = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", out))
    for flag in ("--data-dir", "--port", "--listen", "--api", "--nowebui", "--ckpt", "--freeze-settings",
                 "--ui-settings-file", "--api-auth", "--use-cpu", "--disable-all-extensions",
                 "--disable-extra-extensions", "--skip-install", "--strict-hooks", "--list-hooks",
                 "--cors-allow-origins", "--cors-allow-origins-regex", "--api-log", "--share", *cmd_args.NO_EFFECT):
        assert flag in listed, flag


def test_paths_follow_data_dir(tmp_path):
    p = paths.from_cmd_opts(cmd_args.parse_args(["--data-dir", str(tmp_path)]))
    assert p.config_file == str(tmp_path / "config.json")
    assert p.models_dir == str(tmp_path / "models") and p.resolve("outputs") == str(tmp_path / "outputs")
    p2 = paths.from_cmd_opts(cmd_args.parse_args(["--ui-settings-file", str(tmp_path / "other.json")]))
    assert p2.config_file == str(tmp_path / "other.json")


# -- A1111 flags that mean nothing here: accepted, each announced ----------------------------------------------

NO_EFFECT_ARGV = {"--xformers": [], "--upcast-sampling": [], "--skip-torch-cuda-test": [],
                  "--enable-insecure-extension-access": [], "--theme": ["dark"], "--autolaunch": []}


def test_every_no_effect_flag_is_listed_here():
    assert set(NO_EFFECT_ARGV) == set(cmd_args.NO_EFFECT)


@pytest.mark.parametrize("flag", sorted(NO_EFFECT_ARGV))
def test_no_effect_flag_is_accepted_and_announced(flag):
    args = cmd_args.parse_args([flag, *NO_EFFECT_ARGV[flag]])
    [line] = cmd_args.notices(args)
    assert line.startswith(f"serena: notice: {flag} has no effect: ")
    assert cmd_args.notices(cmd_args.parse_args([])) == []


def test_no_effect_flags_with_arguments_check_them(capsys):
    assert cmd_args.parse_args(["--precision", "half", "--theme", "light", "--device-id", "0"]).precision == "half"
    for argv in (["--precision", "double"], ["--theme", "blue"], ["--precision"], ["--device-id", "first"]):
        with pytest.raises(SystemExit):
            cmd_args.parse_args(argv)
        assert argv[0] in capsys.readouterr().err


def test_share_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        cmd_args.parse_args(["--share"])
    assert info.value.code == 2
    assert "--share is not supported" in capsys.readouterr().err


def test_working_a1111_flags_parse():
    args = cmd_args.parse_args(["--cors-allow-origins", "http://a,http://b", "--cors-allow-origins-regex", "x.*",
                                "--api-log"])
    assert (args.cors_allow_origins, args.cors_allow_origins_regex, args.api_log) == ("http://a,http://b", "x.*", True)
    assert cmd_args.notices(args) == []  # these work: nothing to announce


def test_webui_prints_the_notices_at_start(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "webui.py", "--exit", "--xformers", "--theme", "dark", "--data-dir",
                             str(tmp_path), "--disable-all-extensions"], cwd=paths.script_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "serena: notice: --xformers has no effect" in result.stderr
    assert "serena: notice: --theme has no effect" in result.stderr
    share = subprocess.run([sys.executable, "webui.py", "--share", "--data-dir", str(tmp_path)],
                           cwd=paths.script_path, capture_output=True, text=True, timeout=300)
    assert share.returncode == 2 and "never opens a public tunnel" in share.stderr
