"""Which code made a result: rccsnn.provenance on real git checkouts (made here with the git command line)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rccsnn.provenance import code_label, code_version
from rccsnn.version import __version__


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow  # it runs git to make the checkout (the tiers' rule: a test that starts a process is slow)
def test_a_checkout_records_its_commit_and_whether_tracked_files_changed(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert code_version(tmp_path) == {"rccsnn": __version__, "commit": head, "modified": False}
    (tmp_path / "new.py").write_text("y = 2\n")  # an untracked file is not a change to the code that ran
    assert code_version(tmp_path)["modified"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) == {"rccsnn": __version__, "commit": head, "modified": True}
    assert code_label(code_version(tmp_path)) == f"{__version__}+{head[:7]}.modified"


def test_an_installed_package_records_its_version_only(tmp_path):
    assert code_version(tmp_path) == {"rccsnn": __version__, "commit": None, "modified": None}
    assert code_label(code_version(tmp_path)) == __version__


def test_a_broken_checkout_is_no_error(tmp_path):
    (tmp_path / ".git").write_text("gitdir: /nowhere\n")  # git refuses it: the run still finishes
    assert code_version(tmp_path) == {"rccsnn": __version__, "commit": None, "modified": None}


def test_labels():
    assert code_label(None) == "unknown" and code_label({}) == "unknown"
    assert code_label({"rccsnn": "0.1.0", "commit": "0123456789abcdef", "modified": False}) == "0.1.0+0123456"
