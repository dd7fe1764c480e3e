from __future__ import annotations

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

