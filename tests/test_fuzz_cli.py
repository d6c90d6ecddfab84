"""The command line refuses bad arguments before doing any work, naming the option (exit code 2).

A table of hand-picked bad arguments for every command, then a property-based
test (Hypothesis) that throws random values at every numeric option of
``tinymeta train``: either the run is configured with exactly that value, or
the command exits with code 2 and a one-line error naming the option -- never
a traceback, never a run directory written for a refused command.
"""
import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tinymeta import cli, registry
from tinymeta.config import TrainConfig

EXAMPLES = 150  # random option values; see RELIABILITY.md

BAD = [  # (argv, what the error must name)
    (["train", "--outer-lr", "-1"], "--outer-lr"), (["train", "--outer-lr", "0"], "--outer-lr"),
    (["train", "--outer-lr", "nan"], "--outer-lr"), (["train", "--outer-lr", "inf"], "--outer-lr"),
    (["train", "--iterations", "0"], "--iterations"), (["train", "--iterations", "1.5"], "--iterations"),
    (["train", "--meta-batch", "0"], "--meta-batch"), (["train", "--shots", "0"], "--shots"),
    (["train", "--query", "-1"], "--query"), (["train", "--eval-tasks", "0"], "--eval-tasks"),
    (["train", "--val-tasks", "0"], "--val-tasks"), (["train", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train", "--log-every", "-5"], "--log-every"), (["train", "--eval-every", "-1"], "--eval-every"),
    (["train", "--seed", "-1"], "--seed"), (["train", "--clip-norm", "0"], "--clip-norm"),
    (["train", "--clip-grad", "-2"], "--clip-norm"), (["train", "--clip-norm", "inf"], "--clip-norm"),
    (["train", "--lr-step-factor", "2"], "--lr-step-factor"), (["train", "--lr-step-every", "0"], "--lr-step-every"),
    (["train", "--hidden", "0,40"], "hidden"), (["train", "--hidden", "a,b"], "--hidden"),
    (["train", "--optimizer", "lbfgs"], "--optimizer"), (["train", "--dtype", "float16"], "--dtype"),
    (["train", "--algo", "nosuch"], "--algo"), (["train", "--set", "inner_lr=-1"], "inner_lr"),
    (["train", "--set", "inner_lr=0"], "inner_lr"), (["train", "--set", "inner_lr=abc"], "inner_lr"),
    (["train", "--set", "inner_steps=-1"], "inner_steps"), (["train", "--set", "inner_steps=1.5"], "inner_steps"),
    (["train", "--set", "first_order=maybe"], "first_order"), (["train", "--set", "nosuch=1"], "--set"),
    (["train", "--set", "inner_lr"], "--set"), (["train", "--algo", "imaml", "--set", "lam=-2"], "lam"),
    (["train", "--algo", "reptile", "--set", "inner_steps=0"], "inner_steps"),
    (["train", "--algo", "metasgd", "--set", "alpha_init_low=-1"], "alpha_init_low"),
    (["train", "--resume"], "--out"), (["train", "--resume", "--out", "x", "--iterations", "5"], "--resume"),
    (["eval"], "RUN_DIR"), (["eval", "RUN", "--shots", "0"], "--shots"), (["eval", "RUN", "--steps", "-1"], "--steps"),
    (["eval", "RUN", "--tasks", "0"], "--tasks"), (["eval", "RUN", "--shots", "x"], "--shots"),
    (["reproduce", "sinusoid", "--jobs", "0"], "--jobs"), (["reproduce", "sinusoid", "--iterations", "0"], "--iterations"),
    (["reproduce", "sinusoid", "--seeds", "0,-1"], "--seeds"), (["reproduce", "sinusoid", "--eval-tasks", "0"], "--eval-tasks"),
    (["reproduce", "sinusoid", "--val-tasks", "-3"], "--val-tasks"), (["reproduce", "nosuch"], "benchmark"),
    (["gradcheck", "--tol", "-1"], "--tol"), (["gradcheck", "--tol", "nan"], "--tol"),
    (["gradcheck", "--seed", "-1"], "--seed"), (["gradcheck", "--sizes", "0,1"], "--sizes"),
    (["gradcheck", "--sizes", "3"], "--sizes"),
]


def _exit(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    return exit_info.value.code, err


@pytest.mark.parametrize("argv, named", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_exit_2_naming_the_option_before_any_work(argv, named, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a refused command would write would land here
    argv = [a if a != "RUN" else str(tmp_path / "run") for a in argv]
    if argv[0] == "train" and "--out" not in argv and "--resume" not in argv:
        argv = argv + ["--out", str(tmp_path / "run")]
    if argv[0] == "reproduce":
        argv = argv + ["--out", str(tmp_path / "repro")]
    code, err = _exit(argv, capsys)
    assert code == 2, err
    assert named in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == [], "a refused command wrote files"


def test_more_shots_and_queries_than_a_task_holds_are_refused(tmp_path, capsys, monkeypatch):
    import dataclasses

    small = dataclasses.replace(registry.TASKS["sinusoid"], max_points=20)
    monkeypatch.setitem(registry.TASKS, "sinusoid", small)
    code, err = _exit(["train", "--shots", "15", "--query", "10", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "shots + query must be <= 20" in err and "got 15 + 10" in err


def test_ctrl_c_outside_the_training_loop_exits_130_without_a_traceback(tmp_path, capsys, monkeypatch):
    from tinymeta import runs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "evaluate_run", interrupted)
    code, err = _exit(["eval", str(tmp_path)], capsys)
    assert code == 130 and "interrupted" in err and "Traceback" not in err


def test_sigterm_outside_the_training_loop_stops_like_ctrl_c_and_the_handler_is_restored(tmp_path, capsys,
                                                                                        monkeypatch):
    import os
    import signal

    from tinymeta import runs

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the handler main() installed
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(runs, "evaluate_run", terminated)
    before = signal.getsignal(signal.SIGTERM)
    code, err = _exit(["eval", str(tmp_path)], capsys)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is before


# ------------------------------------------------------------ random values for every numeric train option
NUMERIC = [(option, field, kind) for option, field, kind, _ in cli.TRAIN_OPTIONS if kind in (int, float)]
VALUES = st.one_of(st.integers(-3, 3).map(str), st.sampled_from(["0", "-0.0", "1e-3", "1e300", "nan", "inf", "-inf",
                                                                 "1.5", "2", "abc", "", "0x10", "1_000"]),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr))


class _Accepted(Exception):
    """Raised by the stub trainer: the command built a config and was about to train."""


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(NUMERIC) - 1), value=VALUES)
def test_any_value_of_a_numeric_option_is_used_exactly_or_refused_by_name(which, value, capsys, monkeypatch,
                                                                          tmp_path):
    import tinymeta.train

    option, field, kind = NUMERIC[which]
    seen = []

    def stub(run_dir, config, **kwargs):
        seen.append(config)
        raise _Accepted

    monkeypatch.setattr(tinymeta.train, "train", stub)
    try:
        cli.main(["train", option, value, "--out", str(tmp_path / "run")])
    except _Accepted:
        (config,) = seen
        got = getattr(config, field)
        want = kind(value)
        assert got == want or (math.isnan(got) and math.isnan(want))
        assert TrainConfig.from_dict(config.to_dict()) == config  # a valid config
        event("accepted: used exactly")
        return
    except SystemExit as exit_info:
        err = capsys.readouterr().err
        assert exit_info.code == 2 and option in err and "Traceback" not in err, (option, value, err)
        event("refused, exit 2")
        return
    pytest.fail(f"{option} {value!r}: neither trained nor refused")
