"""The two test tiers are wired: ``python -m pytest -m "not slow"`` (small exact tests, under two minutes on 2 CPU
cores) and ``-m slow`` (subprocesses: the CLI as a real process, torchrun, the benchmarks, sweeps); CI runs both.

Two guards keep tests that start processes out of the fast tier: a static one here (every test that calls
``subprocess`` or ``os.system``, itself or through a helper or fixture of its module, of ``helpers.py`` or of
``conftest.py``, is marked slow) and one at run time in conftest.py (a test outside the slow tier that starts a
Python process fails), which also sees the processes rccsnn starts, e.g. a sweep's points.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

from conftest import FAST_TIER_MESSAGE, REPO_ROOT, TESTS_DIR, starts_python

#: subprocess's functions that start a process, and os's.
SUBPROCESS_STARTS = {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"}
OS_STARTS = re.compile(r"system|popen|spawn\w*|exec\w*|posix_spawn\w*|fork\w*")
SHARED_MODULES = ("helpers", "conftest")


# ---------------------------------------------------------------------------------------------------- the marker
def test_slow_marker_is_registered_and_markers_are_strict(pytestconfig):
    markers = {line.split(":", 1)[0].strip() for line in pytestconfig.getini("markers")}
    assert "slow" in markers
    # With --strict-markers a misspelt @pytest.mark.slwo is an error, not a test silently left in the fast tier.
    assert pytestconfig.option.strict_markers or "--strict-markers" in pytestconfig.getini("addopts")


# ---------------------------------------------------------------------------------------------------- static check
def is_slow_mark(node: ast.AST) -> bool:
    """``pytest.mark.slow`` (or a call of it) anywhere in ``node``."""
    return any(isinstance(n, ast.Attribute) and n.attr == "slow" and isinstance(n.value, ast.Attribute)
               and n.value.attr == "mark" for n in ast.walk(node))


def starts_a_process(call: ast.Call, from_subprocess: Set[str]) -> bool:
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.value.id == "subprocess" and func.attr in SUBPROCESS_STARTS:
            return True
        if func.value.id == "os" and OS_STARTS.fullmatch(func.attr):
            return True
    return isinstance(func, ast.Name) and func.id in from_subprocess


def is_fixture(fn: ast.FunctionDef) -> bool:
    return any("fixture" in ast.unparse(d) for d in fn.decorator_list)


class Module:
    """The functions of one test module: which start processes, which are fixtures, which tests are marked slow."""

    def __init__(self, source: str, shared: Dict[str, "Module"] = None):
        tree = ast.parse(source)
        self.functions: Dict[str, ast.FunctionDef] = {}
        self.slow_tests: Set[str] = set()
        module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in n.targets)
                          and is_slow_mark(n.value) for n in tree.body)
        for node in tree.body:
            members = [(node, module_slow)]
            if isinstance(node, ast.ClassDef):
                class_slow = module_slow or any(is_slow_mark(d) for d in node.decorator_list) or any(
                    isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in n.targets)
                    and is_slow_mark(n.value) for n in node.body)
                members = [(n, class_slow) for n in node.body]
            for fn, inherited_slow in members:
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.functions[fn.name] = fn
                    if inherited_slow or any(is_slow_mark(d) for d in fn.decorator_list):
                        self.slow_tests.add(fn.name)
        from_subprocess = {alias.asname or alias.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                           and n.module == "subprocess" for alias in n.names}
        # Names bound to a shared module's process-starting functions and fixtures (from helpers import x as y).
        imported_starters: Set[str] = set()
        self.fixtures = {name for name, fn in self.functions.items() if is_fixture(fn)}
        starting_fixtures: Set[str] = set()
        for other in (shared or {}).values():
            starting_fixtures |= other.starters & other.fixtures
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in (shared or {}):
                for alias in node.names:
                    if alias.name in shared[node.module].starters:
                        imported_starters.add(alias.asname or alias.name)
        self.starters = self.close_over(from_subprocess, imported_starters, starting_fixtures)

    def close_over(self, from_subprocess, imported_starters, shared_starting_fixtures) -> Set[str]:
        """Functions that start a process: directly, by naming a function that does, or through a fixture."""
        direct: Set[str] = set()
        uses: Dict[str, Set[str]] = {}
        for name, fn in self.functions.items():
            names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
            params = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
            if any(isinstance(n, ast.Call) and starts_a_process(n, from_subprocess) for n in ast.walk(fn)):
                direct.add(name)
            if (names | params) & imported_starters or params & (shared_starting_fixtures - self.functions.keys()):
                direct.add(name)
            fixture_params = {p for p in params if p in self.fixtures}
            uses[name] = ((names - {name}) & self.functions.keys()) | fixture_params
        starters = set(direct)
        changed = True
        while changed:
            grown = {name for name, used in uses.items() if used & starters} | starters
            changed, starters = grown != starters, grown
        return starters

    def unmarked(self) -> List[str]:
        """Tests that start a process but are not marked slow."""
        return sorted(name for name in self.starters
                      if name.startswith("test") and name not in self.slow_tests and name not in self.fixtures)


def shared_modules() -> Dict[str, Module]:
    out: Dict[str, Module] = {}
    for name in SHARED_MODULES:  # conftest may use helpers, not the other way round
        out[name] = Module((TESTS_DIR / f"{name}.py").read_text(), dict(out))
    return out


TEST_FILES = sorted(p.name for p in TESTS_DIR.glob("test_*.py"))
#: Tests that call subprocess but start nothing: the run-time guard refuses before a process exists.
NOTHING_STARTED = {"test_tiers.py": ["test_a_fast_test_cannot_start_python"]}


@pytest.mark.parametrize("name", TEST_FILES)
def test_every_test_that_starts_a_process_is_marked_slow(name):
    module = Module((TESTS_DIR / name).read_text(), shared_modules())
    assert module.unmarked() == NOTHING_STARTED.get(name, []), \
        f"{name}: these tests start processes; mark them @pytest.mark.slow"


CHECKER_CASES = {
    "direct call": ("import subprocess\ndef test_a():\n    subprocess.run(['x'])\n", ["test_a"]),
    "through a helper": ("import subprocess\ndef go():\n    return subprocess.Popen(['x'])\n"
                         "def test_a():\n    go()\n", ["test_a"]),
    "through a fixture": ("import pytest, subprocess\n@pytest.fixture\ndef proc():\n    subprocess.call('x')\n"
                          "def test_a(proc):\n    pass\n", ["test_a"]),
    "through a shared helper": ("from helpers import start as s\ndef test_a():\n    s()\n", ["test_a"]),
    "through a shared fixture": ("def test_a(shared_proc):\n    pass\n", ["test_a"]),
    "from-import": ("from subprocess import check_output as co\ndef test_a():\n    co('x')\n", ["test_a"]),
    "os.system": ("import os\nclass TestA:\n    def test_a(self):\n        os.system('x')\n", ["test_a"]),
    "marked": ("import pytest, subprocess\n@pytest.mark.slow\ndef test_a():\n    subprocess.run('x')\n", []),
    "module marked": ("import pytest, subprocess\npytestmark = [pytest.mark.slow]\n"
                      "def test_a():\n    subprocess.run('x')\n", []),
    "patched, not started": ("import subprocess\ndef test_a(monkeypatch):\n"
                             "    monkeypatch.setattr(subprocess, 'Popen', None)\n", []),
}


@pytest.mark.parametrize("case", sorted(CHECKER_CASES))
def test_the_static_check_finds_unmarked_starts(case):
    source, expected = CHECKER_CASES[case]
    helpers = Module("import subprocess\ndef start():\n    subprocess.run(['x'])\n")
    conftest = Module("import pytest, subprocess\n@pytest.fixture\ndef shared_proc():\n    subprocess.run('x')\n")
    assert Module(source, {"helpers": helpers, "conftest": conftest}).unmarked() == expected


# ---------------------------------------------------------------------------------------------------- run-time guard
@pytest.mark.parametrize("args, expected", [
    ([sys.executable, "-m", "rccsnn"], True), (f"{sys.executable} -c pass", True), (["python3", "x.py"], True),
    ([Path("/usr/bin/python3.11"), "x.py"], True), (["torchrun", "--nproc_per_node=2", "x.py"], True),
    (["git", "status"], False), ("uname -p", False), ([], False),
])
def test_starts_python(args, expected):
    assert starts_python(args) is expected


def test_a_fast_test_cannot_start_python():
    with pytest.raises(AssertionError, match=re.escape(FAST_TIER_MESSAGE)):
        subprocess.run([sys.executable, "-c", "raise SystemExit(3)"])


# ---------------------------------------------------------------------------------------------------- CI
def readme_test_command() -> str:
    """The README's test command: the shell line that installs the test extras."""
    (line,) = [l.strip() for l in (REPO_ROOT / "README.md").read_text().splitlines()
               if l.strip().startswith('pip install -e ".[test]"')]
    return line


def test_ci_runs_the_readme_test_command_and_both_tiers():
    ci = REPO_ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    commands = [l.strip() for l in ci.read_text().splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert readme_test_command() in commands[-1]
    assert '-m "not slow"' in commands[-1] and "-m slow" in commands[-1]
    # No exit code is excused: pytest's 5 (no tests collected) fails the build like any other failure.
    assert not any(re.search(r"\$\?|\brc\b|\|\||exit 0", c) for c in commands), commands
