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


# ------------------------------------------------------------- train / eval / reproduce
TINY_TRAIN = ["--iterations", "3", "--hidden", "8", "--meta-batch", "2", "--eval-tasks", "10", "--val-tasks", "5",
              "--eval-steps", "3", "--no-progress"]


@pytest.mark.slow
def test_train_then_eval_print_the_table_and_write_the_plots(tmp_path):
    run_dir = tmp_path / "run"
    done = _run("train", "--algo", "fomaml", "--out", str(run_dir), "--set", "inner_lr=0.02", *TINY_TRAIN)
    assert done.returncode == 0, done.stderr
    assert "trained 3 iterations" in done.stdout and "fomaml" in done.stdout
    for name in ("checkpoint.npz", "log.jsonl", "config.json"):
        assert (run_dir / name).exists()
    for name in ("eval_5shot.json", "training_curve.png", "adaptation.png", "error_vs_steps_5shot.png"):
        assert (run_dir / name).exists() and str(run_dir / name) in done.stdout
    assert '"inner_lr": 0.02' in (run_dir / "config.json").read_text()
    done = _run("eval", str(run_dir), "--shots", "10", "--steps", "2", "--no-plots")
    assert done.returncode == 0, done.stderr
    header, rule, row = done.stdout.splitlines()[:3]
    assert header.split()[:3] == ["algo", "seed", "shots"] and row.split()[:3] == ["fomaml", "0", "10"]
    assert (run_dir / "eval_10shot.json").exists()


def test_eval_of_several_runs_prints_one_table_and_one_comparison(tmp_path, capsys):
    for algo in ("maml", "fomaml"):
        assert main(["train", "--algo", algo, "--out", str(tmp_path / algo), *TINY_TRAIN, "--no-plots"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "maml"), str(tmp_path / "fomaml"), "--tasks", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("maml") and lines[3].startswith("fomaml")
    assert (tmp_path / "comparison_5shot.png").stat().st_size > 10_000


def _fails(capsys, *args):
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_train_refuses_bad_settings_and_resume_with_options(tmp_path, capsys):
    out = str(tmp_path / "a")
    assert "outer_lr must be > 0" in _fails(capsys, "train", "--out", out, "--outer-lr", "-1", *TINY_TRAIN)
    assert "--set takes NAME=VALUE" in _fails(capsys, "train", "--out", out, "--set", "step=3", *TINY_TRAIN)
    assert "expected true or false" in _fails(capsys, "train", "--out", out, "--set", "first_order=maybe")
    assert "drop seed" in _fails(capsys, "train", "--resume", "--out", out, "--seed", "2")
    assert "holds no checkpoint" in _fails(capsys, "eval", str(tmp_path / "nothing"))


def test_an_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--out", str(run_dir), *TINY_TRAIN, "--no-plots"]) == 0
    err = _fails(capsys, "train", "--out", str(run_dir), *TINY_TRAIN)
    assert "--resume" in err and "--overwrite" in err
    assert main(["train", "--resume", "--out", str(run_dir), "--no-progress", "--no-plots"]) == 0
    assert "trained 3 iterations" in capsys.readouterr().out
    assert main(["train", "--out", str(run_dir), "--overwrite", "--seed", "4", *TINY_TRAIN, "--no-plots"]) == 0
    assert '"seed": 4' in (run_dir / "config.json").read_text()


def test_help_lists_every_algorithm_and_every_default():
    from tinymeta import registry

    done = _run("train", "--help")
    assert done.returncode == 0
    for name in registry.ALGORITHMS:
        assert f"\n  {name} " in done.stdout
    assert "(default: 70000)" in done.stdout and "(default: 25)" in done.stdout and "inner_lr=0.01" in done.stdout


def test_reproduce_smoke(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["reproduce", "sinusoid", "--out", str(out), "--iterations", "2", "--seeds", "0",
                 "--algorithms", "fomaml", "--eval-tasks", "10", "--val-tasks", "5", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "[finished] fomaml-K10-seed0" in printed and "report:" in printed
    text = (out / "REPRODUCTION.md").read_text()
    assert "Command: `tinymeta reproduce sinusoid --out" in text and "| fomaml, ours |" in text
