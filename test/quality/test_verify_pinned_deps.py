"""scripts/verify_pinned_deps.py: exact pins only, and the installed version must be the pinned one."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
verify = importlib.import_module("scripts.verify_pinned_deps")

PLUGGY = importlib.metadata.version("pluggy")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_comments_blank_lines_and_inline_comments_are_accepted(tmp_path):
    path = write(tmp_path, "req.txt", "# header\n\ntorch==2.13.0  # cpu build\nPillow [extra] == 12.3.0\n")
    assert verify.parse_requirements(path) == ([("torch", "2.13.0"), ("Pillow", "12.3.0")], [])


@pytest.mark.parametrize("line", ["numpy", "numpy>=2.0", "numpy~=2.4", "numpy==2.*", "numpy===2.4.6",
                                  "numpy==2.4.6; python_version>'3'", "-r other.txt", "numpy==2.4.6,<3"])
def test_anything_but_an_exact_pin_is_reported_with_file_and_line(tmp_path, line):
    path = write(tmp_path, "req.txt", f"pluggy==1.0\n{line}\n")
    pins, problems = verify.parse_requirements(path)
    assert pins == [("pluggy", "1.0")]
    assert problems == [f"req.txt:2: not an exact '==' pin: {line}"]


@pytest.mark.parametrize("pinned, installed, expected", [
    ("2.13.0", "2.13.0+cpu", True),
    ("2.13.0", "2.13.0", True),
    ("1.0", "1.0.0", True),
    ("2.13.0", "2.13.1+cpu", False),
    ("2.13.0+cpu", "2.13.0+cu121", False),
    ("1.0", "1.0.post1", False),
    ("1.0rc1", "1.0", False),
    ("1.10", "1.1", False),
])
def test_version_comparison_ignores_only_the_local_label(pinned, installed, expected):
    assert verify.versions_match(pinned, installed) is expected


def test_check_reports_missing_and_mismatched_and_accepts_local_label_and_name_spellings(tmp_path):
    path = write(tmp_path, "req.txt", "torch==2.13.0\nhuggingface-hub==2.4.0\nPillow==12.3.0\nnumpy==2.4.6\n")
    installed = {"torch": "2.13.0+cpu", "huggingface-hub": "2.4.0", "pillow": "12.2.0"}
    problems, count = verify.check([path], installed)
    assert count == 4
    assert problems == ["req.txt: Pillow==12.3.0 is pinned but 12.2.0 is installed",
                        "req.txt: numpy==2.4.6 is not installed"]


def test_installed_versions_reads_this_interpreter_under_normalised_names():
    assert verify.installed_versions()["pluggy"] == PLUGGY
    assert verify.normalize_name("Huggingface_Hub") == verify.normalize_name("huggingface-hub") == "huggingface-hub"


def test_the_projects_requirement_files_are_all_exact_pins():
    for path in verify.DEFAULT_FILES:
        pins, problems = verify.parse_requirements(path)
        assert problems == []
        assert pins


def run_cli(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "verify_pinned_deps.py"), *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def test_cli_exits_0_with_a_summary_when_every_pin_is_installed(tmp_path):
    result = run_cli(write(tmp_path, "a.txt", f"pluggy=={PLUGGY}  # pinned\n"), write(tmp_path, "b.txt", "\n"))
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("verify_pinned_deps: 1 pins in 2 files")


def test_cli_exits_1_with_one_line_per_problem(tmp_path):
    result = run_cli(write(tmp_path, "req.txt", "pluggy==0.0.1\nnumpy>=2\nno-such-distribution-xyz==1.0\n"))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "req.txt:2: not an exact '==' pin: numpy>=2",
        f"req.txt: pluggy==0.0.1 is pinned but {PLUGGY} is installed",
        "req.txt: no-such-distribution-xyz==1.0 is not installed",
    ]
