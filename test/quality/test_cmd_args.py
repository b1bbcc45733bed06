"""Flags: A1111 names and defaults, Serena's additions, and a clear error for unknown flags."""

from __future__ import annotations

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
    for flag in ("--data-dir", "--port", "--listen", "--api", "--nowebui", "--ckpt", "--freeze-settings",
                 "--ui-settings-file", "--api-auth", "--use-cpu", "--disable-all-extensions",
                 "--disable-extra-extensions", "--skip-install", "--strict-hooks", "--list-hooks"):
        assert flag in out


def test_paths_follow_data_dir(tmp_path):
    p = paths.from_cmd_opts(cmd_args.parse_args(["--data-dir", str(tmp_path)]))
    assert p.config_file == str(tmp_path / "config.json")
    assert p.models_dir == str(tmp_path / "models") and p.resolve("outputs") == str(tmp_path / "outputs")
    p2 = paths.from_cmd_opts(cmd_args.parse_args(["--ui-settings-file", str(tmp_path / "other.json")]))
    assert p2.config_file == str(tmp_path / "other.json")
