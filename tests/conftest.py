from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


@pytest.fixture
def user_models(monkeypatch):
    """Make ``tests/user_models.py`` importable as ``user_models`` (as a user's own package would be)."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    import user_models

    return user_models


# ---------------------------------------------------------------------------------------------------- test tiers
# ``python -m pytest -m "not slow"`` is the fast tier. A new Python process costs seconds here (it imports torch),
# so a test that starts one - rccsnn in a subprocess, torchrun, a benchmark, a sweep's points - must be marked
# ``@pytest.mark.slow``. Outside the slow tier such a start fails the test, with the message below, wherever it is
# started from (the test, a fixture it sets up, or rccsnn itself, as the sweep runner does).
FAST_TIER_MESSAGE = "starts a Python process; a test that does belongs to the slow tier: mark it @pytest.mark.slow"


def starts_python(args) -> bool:
    """Whether the ``Popen`` command ``args`` runs a Python interpreter (``sys.executable``, ``python*``) or torchrun."""
    if isinstance(args, (str, bytes, os.PathLike)):
        words = os.fsdecode(args).split()
    else:
        words = [os.fsdecode(a) for a in args]
    if not words:
        return False
    program = Path(words[0]).name
    return words[0] == sys.executable or program.startswith("python") or program == "torchrun"


def fast_tier_popen(popen_init, nodeid: str):
    """``Popen.__init__`` that refuses to start a Python process (see FAST_TIER_MESSAGE) and runs anything else."""

    def init(self, args, *rest, **kwargs):
        if starts_python(args):
            raise AssertionError(f"{nodeid} {FAST_TIER_MESSAGE} (command: {args!r})")
        popen_init(self, args, *rest, **kwargs)

    return init


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Guard every test outside the slow tier, its fixtures' setup and teardown included."""
    if item.get_closest_marker("slow") is not None:
        yield
        return
    popen_init = subprocess.Popen.__init__
    subprocess.Popen.__init__ = fast_tier_popen(popen_init, item.nodeid)
    try:
        yield
    finally:
        subprocess.Popen.__init__ = popen_init
