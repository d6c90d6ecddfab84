"""The ``tinymeta`` command, run as a user runs it."""
import subprocess
import sys

import pytest

from tinymeta.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "tinymeta.cli", *args], capture_output=True, text=True)


def test_gradcheck_prints_a_passing_table():
    done = _run("gradcheck", "--sizes", "2,6,3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["quantity", "activation", "loss"]
    assert "FAIL" not in done.stdout
    assert "checks passed" in lines[-1]


def test_gradcheck_exits_nonzero_when_a_check_fails(capsys):
    # A tolerance no finite difference can meet makes every comparison fail.
    assert main(["gradcheck", "--sizes", "2,3,2", "--tol", "1e-30"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_bad_sizes_are_reported():
    done = _run("gradcheck", "--sizes", "3,x")
    assert done.returncode == 2 and "comma-separated integers" in done.stderr


def test_help_lists_the_commands():
    done = _run("--help")
    assert done.returncode == 0 and "gradcheck" in done.stdout
