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
def test_a_checkout_records_its_commit_and_whether_the_package_changed(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("docs\n")
    (tmp_path / ".gitignore").write_text("__pycache__/\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert code_version(tmp_path, "pkg") == {"rccsnn": __version__, "commit": head, "modified": False}
    # outside the package (docs, tests) and ignored files (byte code) are not the code that ran
    (tmp_path / "README.md").write_text("more docs\n")
    (tmp_path / "notes.py").write_text("y = 2\n")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert code_version(tmp_path, "pkg")["modified"] is False
    (tmp_path / "pkg" / "b.py").write_text("z = 3\n")  # a new module in the package is
    assert code_version(tmp_path, "pkg")["modified"] is True
    (tmp_path / "pkg" / "b.py").unlink()
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")  # and so is an edit
    assert code_version(tmp_path, "pkg") == {"rccsnn": __version__, "commit": head, "modified": True}
    assert code_label(code_version(tmp_path, "pkg")) == f"{__version__}+{head[:7]}.modified"


def test_an_installed_package_records_its_version_only(tmp_path):
    assert code_version(tmp_path) == {"rccsnn": __version__, "commit": None, "modified": None}
    assert code_label(code_version(tmp_path)) == __version__


def test_a_broken_checkout_is_no_error(tmp_path):
    (tmp_path / ".git").write_text("gitdir: /nowhere\n")  # git refuses it: the run still finishes
    assert code_version(tmp_path) == {"rccsnn": __version__, "commit": None, "modified": None}


def test_labels():
    assert code_label(None) == "unknown" and code_label({}) == "unknown" and code_label("0.1.0") == "unknown"
    assert code_label({"rccsnn": "0.1.0", "commit": "0123456789abcdef", "modified": False}) == "0.1.0+0123456"


def test_the_environment_is_plain_data_that_a_checkpoint_can_hold(monkeypatch):
    import torch

    from rccsnn import provenance

    monkeypatch.setattr(provenance, "LIBRARIES", ("snntorch", "no-such-library-here"))
    env = provenance.environment(torch.device("cpu"), processes=2)
    assert env["torch"] == torch.__version__ and type(env["torch"]) is str  # not torch's TorchVersion class
    assert env["no-such-library-here"] is None and env["snntorch"]
    assert (env["threads"], env["device"], env["processes"]) == (torch.get_num_threads(), "cpu", 2)
    assert all(type(v) in (str, int) or v is None for v in env.values())


def test_a_cuda_device_adds_the_card_and_its_libraries(monkeypatch):
    import torch

    from rccsnn import provenance

    # no GPU here: the card's name and cuDNN's version are what torch would report on one
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    env = provenance.environment(torch.device("cuda", 0))
    assert (env["device"], env["gpu"], env["cudnn"], env["cuda"]) == ("cuda:0", "NVIDIA H200", "91002",
                                                                      str(torch.version.cuda))
    assert "gpu" not in provenance.environment("cpu")
