"""The ``tinymeta`` command.

    tinymeta gradcheck [--sizes 3,8,6,4] [--seed 0] [--tol 1e-6]
    tinymeta train --algo maml --task sinusoid [--iterations 70000] [--out RUN_DIR] [--resume] ...
    tinymeta eval RUN_DIR [RUN_DIR ...] [--shots 5] [--steps 10]
    tinymeta reproduce sinusoid [--iterations 70000] [--seeds 0,1,2] [--jobs 2]
    tinymeta reproduce omniglot [--quick] [--dry-run] [--jobs 2]   (see cli_images.py)
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from pathlib import Path

from . import cli_images

EXIT_INTERRUPTED = 130


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout and appends "(default: ...)" where the help does not say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default:" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def _sizes(text: str) -> tuple:
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated integers like 3,8,6,4, got {text!r}")
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes needs at least two positive widths, got {text!r}")
    return sizes


def _ints(text: str) -> tuple:
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 40,40, got {text!r}")


def _budget(text: str) -> tuple:
    from .reproduce import parse_budget

    try:
        return parse_budget(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err))


def _names(text: str) -> tuple:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _cmd_gradcheck(args) -> int:
    from . import gradcheck

    rows = gradcheck.engine_report(sizes=args.sizes, seed=args.seed, tol=args.tol)
    header = ("quantity", "activation", "loss", "batchnorm", "dtype", "backend", "rel. error", "tolerance", "result")
    table = [header] + [(r.quantity, r.activation, r.loss, "yes" if r.batchnorm else "no", r.dtype, r.backend,
                         f"{r.rel_error:.2e}", f"{r.tol:.0e}", "pass" if r.passed else "FAIL") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for k, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    failed = sum(not r.passed for r in rows)
    print(f"\n{len(rows) - failed} of {len(rows)} checks passed (sizes {','.join(map(str, args.sizes))}, seed {args.seed})")
    return 1 if failed else 0


# ------------------------------------------------------------------ train
# (option, TrainConfig field, type, help); every default shown is TrainConfig's.
TRAIN_OPTIONS = [
    ("--iterations", "iterations", int, "meta-training iterations"),
    ("--meta-batch", "meta_batch", int, "tasks per meta-batch"),
    ("--shots", "shots", int, "support points (K) per training task"),
    ("--query", "query", int, "query points per training task"),
    ("--seed", "seed", int, "seed of the initialisation and of the training tasks"),
    ("--optimizer", "optimizer", str, "outer optimizer"),
    ("--outer-lr", "outer_lr", float, "outer learning rate"),
    ("--schedule", "schedule", str, "outer learning-rate schedule: constant, linear (annealed to 0 at the "
                                    "last iteration) or step (times --lr-step-factor every --lr-step-every)"),
    ("--lr-step-every", "lr_step_every", int, "schedule step: iterations between decays"),
    ("--lr-step-factor", "lr_step_factor", float, "schedule step: factor of each decay"),
    ("--clip-norm", "clip_norm", float, "clip the meta-gradient's global norm to this"),
    ("--hidden", "hidden", _ints, "hidden layer widths, comma-separated"),
    ("--activation", "activation", str, "hidden activation: relu, tanh, sigmoid, softplus"),
    ("--batchnorm", "batchnorm", bool, "normalise each hidden layer with the batch's own statistics"),
    ("--init", "init", str, "theta's init scheme (algorithm: the algorithm's own init_params)"),
    ("--dtype", "dtype", str, "floating type"),
    ("--backend", "backend", str, "engine backend"),
    ("--eval-shots", "eval_shots", int, "support points of the test tasks"),
    ("--eval-steps", "eval_steps", int, "adaptation steps evaluated (0..N)"),
    ("--eval-tasks", "eval_tasks", int, "fixed test tasks"),
    ("--val-tasks", "val_tasks", int, "fixed validation tasks (monitoring, tuning)"),
    ("--eval-every", "eval_every", int, "validate every N iterations (0: never)"),
    ("--checkpoint-every", "checkpoint_every", int, "checkpoint every N iterations"),
    ("--log-every", "log_every", int, "log the running meta-loss every N iterations"),
] + cli_images.TRAIN_OPTIONS


CHOICES = {"optimizer": ("adam", "sgd"), "schedule": ("constant", "linear", "step"), "dtype": ("float64", "float32"),
           "backend": ("numba", "numpy"), "init": ("maml", "he", "glorot", "algorithm"), **cli_images.CHOICES}


def _field_default(name):
    from .config import BASE_DEFAULTS, OUTER_FIELDS, TrainConfig

    f = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    if name in cli_images.FIELD_DEFAULTS:
        return cli_images.FIELD_DEFAULTS[name]
    if f.default is None and name in OUTER_FIELDS:
        return f"{BASE_DEFAULTS[name]}, unless the algorithm sets its own"
    if f.default is None and name in BASE_DEFAULTS:  # the sinusoid's; the task list below gives the others
        return BASE_DEFAULTS[name]
    return {"clip_norm": "no clipping", "hidden": "the task's, 40,40 for sinusoid",
            "init": "the task's, maml for sinusoid (truncated normal, std 0.01)"}.get(name, f.default)


def _algorithms_epilog() -> str:
    from . import registry

    lines = ["algorithms (--algo) and their options (--set NAME=VALUE):"]
    for name, a in registry.ALGORITHMS.items():
        config = a.config()
        options = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items())
        outer = a.outer_settings(config)
        outer = f"; outer loop: {', '.join(f'{k}={v}' for k, v in outer.items())}" if outer else ""
        lines.append(f"  {name:11s} {a.doc}\n              {options}{outer}")
    lines.append("tasks (--task):")
    lines += [f"  {name:11s} {t.doc}" for name, t in registry.TASKS.items()]
    return "\n".join(lines)


def _parse_value(text, default):
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def _algo_options(algo, pairs) -> dict:
    from . import registry

    defaults = dataclasses.asdict(registry.algorithm(algo).config())
    options = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in defaults:
            raise ValueError(f"--set takes NAME=VALUE with NAME among {sorted(defaults)} for {algo}, got {pair!r}")
        try:
            options[name] = _parse_value(text, defaults[name])
        except ValueError as err:
            raise ValueError(f"--set {name}: {err}") from None
    return options


def _report(run_dir, evaluation, paths):
    from .reproduce import PUBLISHED_TABLE2, TEST_SHOTS
    from .runs import format_table

    print(format_table([evaluation]))
    published = PUBLISHED_TABLE2.get(evaluation["algo"])
    if published and evaluation["task"] == "sinusoid" and (evaluation["train_shots"], evaluation["shots"]) == (10, TEST_SHOTS):
        print(f"published, Finn et al. 2017, Table 2 ({evaluation['algo']}, 70 000 iterations): "
              + ", ".join(f"{s} step{'s' * (s != 1)} {v:.2f}" for s, v in published.items()))
    if evaluation.get("tuned"):
        t = evaluation["tuned"]
        print(f"({t['field']} = {t['value']}, chosen by {t['criterion']})")
    for line in cli_images.report_lines(evaluation):
        print(line)
    print(f"\nevaluation: {Path(run_dir) / ('eval_%dshot.json' % evaluation['shots'])}")
    for p in paths:
        print(f"plot: {p}")


def _cmd_train(args) -> int:
    from . import runs
    from .config import TrainConfig
    from .train import TrainingStopped, train

    given = {field: getattr(args, field) for _, field, _, _ in TRAIN_OPTIONS if getattr(args, field) is not None}
    if args.resume:
        extra = sorted(given) + [k for k in ("algo", "task") if getattr(args, k) is not None] + \
            (["set"] if args.set else [])
        if extra:
            raise ValueError(f"--resume continues the saved configuration; drop {', '.join(extra)}")
        if args.out is None:
            raise ValueError("--resume needs --out RUN_DIR")
        run_dir, config = Path(args.out), None
    else:
        algo = args.algo or "maml"
        task = args.task or cli_images.default_task(algo)
        config = TrainConfig(algo=algo, task=task, algo_options=_algo_options(algo, args.set), **given)
        run_dir = Path(args.out or f"runs/{algo}-{task}-seed{config.seed}")
    try:
        result = train(run_dir, config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    except TrainingStopped as err:
        print(f"tinymeta train: {err}", file=sys.stderr)
        return 1
    if result.status == "interrupted":
        by = " by SIGTERM" if result.signum == signal.SIGTERM else ""
        print(f"\ninterrupted{by} at iteration {result.iteration}; checkpoint saved in {run_dir / 'checkpoint.npz'}.\n"
              f"continue with: tinymeta train --resume --out {run_dir}", file=sys.stderr)
        return 128 + signal.SIGTERM if by else EXIT_INTERRUPTED
    print(f"trained {result.iteration} iterations in {result.seconds:.1f} s; run directory {run_dir}")
    evaluation = runs.evaluate_run(run_dir)
    _report(run_dir, evaluation, [] if args.no_plots else runs.plot_run(run_dir, evaluation))
    return 0


def _cmd_eval(args) -> int:
    from . import runs

    if len(args.run_dirs) == 1:
        run_dir = args.run_dirs[0]
        evaluation = runs.evaluate_run(run_dir, shots=args.shots, steps=args.steps, n_tasks=args.tasks)
        _report(run_dir, evaluation, [] if args.no_plots else runs.plot_run(run_dir, evaluation))
        return 0
    evaluations = [runs.evaluate_run(d, shots=args.shots, steps=args.steps, n_tasks=args.tasks) for d in args.run_dirs]
    print(runs.format_table(evaluations))
    if not args.no_plots:
        path = args.compare or args.run_dirs[0].parent / f"comparison_{evaluations[0]['shots']}shot.png"
        print(f"\nplot: {runs.plot_comparison(path, evaluations)}")
    return 0


def _cmd_reproduce(args) -> int:
    from .reproduce import reproduce_sinusoid

    if args.benchmark == "omniglot":
        return cli_images.cmd_reproduce(args, EXIT_INTERRUPTED)
    args.out = args.out or Path("runs/reproduce-sinusoid")
    args.iterations = args.iterations or 70_000
    args.seeds = args.seeds or (0, 1, 2)

    statuses = []

    def done(r):
        statuses.append(r)
        shots = ", ".join(f"{k}-shot MSE after 1 step {e['mean'][1]:.3f}" for k, e in sorted(r["evaluations"].items())
                          if len(e["mean"]) > 1 and e["mean"][1] is not None)
        print(f"[{r['status']}] {r['name']}" + (f": {shots}" if shots else ""), flush=True)

    try:
        path = reproduce_sinusoid(args.out, algorithms=args.algorithms, seeds=args.seeds, iterations=args.iterations,
                                  budgets=args.budget, eval_tasks=args.eval_tasks, val_tasks=args.val_tasks,
                                  jobs=args.jobs, on_result=done, command=" ".join(["tinymeta", *args.argv]))
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished runs and checkpoints are kept in {args.out}. "
              "Run the same command again to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"\nreport: {path}")
    if args.report is not None:
        from .report import publish_section

        print(f"section sinusoid of {publish_section(args.report, 'sinusoid', path)} updated")
    print(path.read_text().split("## Every run")[0])
    failed = [r["name"] for r in statuses if r["status"] != "finished"]
    if failed:
        print(f"{len(failed)} run(s) did not finish: {', '.join(failed)} (see the report)", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    from .config import TrainConfig

    formatter = _Formatter
    parser = argparse.ArgumentParser(prog="tinymeta", description=__doc__.split("\n")[0], formatter_class=formatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("gradcheck", help="check every derivative of the engine against finite differences",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=_sizes, default=(3, 8, 6, 4), help="layer widths of the test nets")
    p.add_argument("--seed", type=int, default=0, help="seed of the random nets and points")
    p.add_argument("--tol", type=float, default=1e-6, help="relative tolerance against finite differences")
    p.set_defaults(run=_cmd_gradcheck)

    epilog = _algorithms_epilog()
    p = sub.add_parser("train", help="meta-train an algorithm on a task, then test it and plot",
                       description="Meta-train, then evaluate on the fixed test tasks and write plots. "
                                   "Ctrl-C saves a checkpoint; --resume continues it exactly.",
                       epilog=epilog, formatter_class=formatter)
    from . import registry

    p.add_argument("--algo", choices=sorted(registry.ALGORITHMS), help="algorithm (default: maml)")
    p.add_argument("--task", choices=sorted(registry.TASKS), help="task family (default: sinusoid; for the metric "
                                                                  "learners omniglot if its archives are found, "
                                                                  "else glyphs)")
    p.add_argument("--out", help="run directory (default: runs/ALGO-TASK-seedSEED)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="an option of the algorithm's Config, repeatable; see the list below (default: none)")
    for option, field, kind, text in TRAIN_OPTIONS:
        extra = {"choices": CHOICES[field]} if field in CHOICES else {}
        # a bool option is a flag: None (TrainConfig's default) unless given
        extra.update({"action": "store_const", "const": True} if kind is bool else {"type": kind})
        p.add_argument(option, dest=field, help=f"{text} (default: {_field_default(field)})", **extra)
    p.add_argument("--clip-grad", dest="clip_norm", type=float, help="the same as --clip-norm")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("eval", help="test trained runs on the fixed test tasks and plot them",
                       description="Test one run (table, eval_<k>shot.json and its plots), or several "
                                   "(one table and one figure comparing them).", formatter_class=formatter)
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run directories written by tinymeta train")
    p.add_argument("--compare", type=Path, help="with several runs: where to write the comparison figure "
                                                "(default: comparison_<k>shot.png next to the first run)")
    p.add_argument("--shots", type=int, help="support points per test task (default: the run's eval_shots, "
                                             f"{TrainConfig.eval_shots})")
    p.add_argument("--steps", type=int, help=f"adaptation steps 0..N (default: the run's, {TrainConfig.eval_steps})")
    p.add_argument("--tasks", type=int, help=f"fixed test tasks (default: the run's, {TrainConfig.eval_tasks})")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.set_defaults(run=_cmd_eval)

    p = sub.add_parser("reproduce", help="run a paper's protocol and write REPRODUCTION.md", formatter_class=formatter)
    p.add_argument("benchmark", choices=["sinusoid", "omniglot"], help="which protocol")
    p.add_argument("--out", type=Path, default=None, help="output directory (resumable; default: "
                                                          "runs/reproduce-sinusoid, runs/reproduce-<images>)")
    p.add_argument("--iterations", type=int, default=None, help="meta-iterations per run (default: the "
                                                                "protocol's, 70000 for sinusoid)")
    p.add_argument("--seeds", type=_ints, default=None, help="training seeds, comma-separated (default: 0,1,2 "
                                                             "for sinusoid, 0 for omniglot)")
    p.add_argument("--budget", type=_budget, action="append", default=[], metavar="ALGO[@SETTING]=N[xS]",
                   help="give ALGO N iterations (and only the first S seeds) instead of the protocol's, for the "
                        "slow ones on a small machine; omniglot: @SETTING (e.g. maml@20w5s=500) for one setting "
                        "only; repeatable; the report says so")
    p.add_argument("--algorithms", type=_names, default=None,
                   help=f"comma-separated subset of {','.join(sorted(registry.ALGORITHMS))} (default: all of them)")
    p.add_argument("--eval-tasks", type=int, default=600, help="fixed test tasks")
    p.add_argument("--val-tasks", type=int, default=100, help="fixed validation tasks (monitoring, baseline tuning)")
    p.add_argument("--jobs", type=int, default=None, help="runs at a time, one process each (default: all cores "
                                                          "for sinusoid, 1 for omniglot)")
    cli_images.add_reproduce_arguments(p)
    p.set_defaults(run=_cmd_reproduce)
    return parser


# Numeric options checked after parsing, for whichever command has them: dest -> smallest value allowed.
MINIMA = {"iterations": 1, "eval_tasks": 1, "val_tasks": 1, "jobs": 1, "shots": 1, "steps": 0, "tasks": 1,
          "seed": 0, "seeds": 0}


def check_args(args) -> None:
    """Refuse out-of-range numbers naming the option (``--jobs must be >= 1, got 0``) before any work."""
    for dest, minimum in MINIMA.items():
        value = getattr(args, dest, None)
        for v in (value if isinstance(value, tuple) else () if value is None else (value,)):
            if v < minimum:
                raise ValueError(f"--{dest.replace('_', '-')} must be >= {minimum}, got {v}")
    tol = getattr(args, "tol", None)
    if tol is not None and not (tol > 0 and tol != float("inf")):
        raise ValueError(f"--tol must be a finite number > 0, got {tol}")


def _name_option(message: str) -> str:
    """Prefix a TrainConfig error ("outer_lr must be > 0 ...") with its option ("--outer-lr: ")."""
    options = {field: option for option, field, _, _ in TRAIN_OPTIONS}
    field = message.split(" ", 1)[0]
    return f"{options[field]}: {message}" if field in options and message.startswith(f"{field} must") else message


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        check_args(args)
        return args.run(args)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError) as err:
        parser.exit(2, f"tinymeta {args.command}: error: {_name_option(str(err))}\n")
    except KeyboardInterrupt:  # outside the training loop, which saves and returns on its own
        parser.exit(EXIT_INTERRUPTED, f"\ntinymeta {args.command}: interrupted\n")
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame):
    """SIGTERM outside the training loop (which saves a checkpoint first) stops like Ctrl-C: reproduce
    asks its running runs to checkpoint, and the process exits with code 130."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
