"""The image parts of the ``tinymeta`` command: options of ``train`` for classification
episodes, the accuracy line of its report, and ``tinymeta reproduce omniglot``.

    tinymeta train --algo protonet --task glyphs --ways 5 --shots 1 --iterations 200 --out RUN_DIR
    tinymeta train --algo maml --task omniglot --data-root /path/to/archives --ways 5 --shots 1
    tinymeta reproduce omniglot [--quick] [--dry-run] [--jobs 2] [--iterations N] [--report REPRODUCTION.md]
"""
from __future__ import annotations

import sys
from pathlib import Path

# (option, TrainConfig field, type, help), appended to cli.TRAIN_OPTIONS
TRAIN_OPTIONS = [
    ("--ways", "ways", int, "classification: classes per test episode (N, the width of the classifier's head)"),
    ("--train-ways", "train_ways", int, "classification: classes per training episode (ProtoNet: 60)"),
    ("--eval-query", "eval_query", int, "query points per fixed task (images: per class)"),
    ("--test-steps", "test_steps", int, "adaptation steps of the headline test number (MAML on Omniglot: 3)"),
    ("--split", "split", str, "omniglot: maml (1200/423 characters, rotations) or original "
                              "(background/evaluation)"),
    ("--data-root", "data_root", str, "omniglot: folder with images_background.zip and images_evaluation.zip"),
    ("--resize", "resize", str, "omniglot: 105 -> 28 pixel resize, nearest or lanczos"),
]
CHOICES = {"split": ("maml", "original"), "resize": ("nearest", "lanczos")}
FIELD_DEFAULTS = {"train_ways": "--ways; ProtoNet's protocol: 60", "eval_query": "100 on sinusoid, 15 per class on images",
                  "test_steps": "1 on sinusoid; on images the protocol's (MAML 3, Meta-SGD 1, metric 0)",
                  "data_root": "$TINYMETA_OMNIGLOT, else the cache folder"}


def default_task(algo: str) -> str:
    """The task when ``--task`` is not given: sinusoid for the gradient-based learners; for the
    metric learners Omniglot if its archives are found, else the generated glyphs."""
    from . import registry
    from .reproduce_images import resolve_source

    return "sinusoid" if registry.algorithm(algo).kind == "gradient" else resolve_source("auto")


def report_lines(evaluation) -> list:
    """The headline accuracy of a classification run, and the published number it compares with."""
    from .reproduce_images import published_accuracy

    if evaluation.get("metric") != "accuracy" or "ways" not in evaluation:
        return []
    s = evaluation["test_steps"]
    mean, ci = evaluation["mean"][s], evaluation["ci95"][s] or 0.0
    after = f"after {s} step{'s' * (s != 1)}" if s else "(no adaptation)"
    lines = [f"\n{evaluation['task']}, {evaluation['ways']}-way {evaluation['shots']}-shot: test accuracy {after} "
             f"{100 * mean:.1f} ± {100 * ci:.1f} % ({evaluation['n_tasks']} fixed episodes, 95% interval)"]
    published = published_accuracy(evaluation["algo"], evaluation["ways"], evaluation["shots"])
    if published is not None and evaluation["task"] == "omniglot":
        lines.append(f"published: {published['text']} ({published['source']})")
    return lines


def add_reproduce_arguments(p) -> None:
    """The options of ``tinymeta reproduce omniglot`` (the sinusoid ones are shared)."""
    p.add_argument("--quick", action="store_true", help="omniglot: a small budget that shows the pipeline in "
                                                         "minutes, not the papers' numbers")
    p.add_argument("--dry-run", action="store_true", help="omniglot: print the plan and an estimated wall time, "
                                                           "run nothing")
    p.add_argument("--report", type=Path, default=None,
                   help="the file whose section (sinusoid or omniglot) is written, other sections kept, figures "
                        "copied beside it (default: omniglot REPRODUCTION.md; sinusoid only the output folder's)")
    p.add_argument("--source", choices=("auto", "omniglot", "glyphs"), default="auto",
                   help="omniglot: the images (auto: Omniglot if the archives are found, else glyphs)")
    p.add_argument("--data-root", default=None, help="omniglot: folder of the archives (default: "
                                                     "$TINYMETA_OMNIGLOT, else the cache folder)")
    p.add_argument("--batchnorm", action="store_true", help="omniglot: batch norm in the gradient-based learners' "
                                                              "network, as Finn et al.'s (inner step 2.0)")
    p.add_argument("--settings", type=lambda t: tuple(t.split(",")), default=None,
                   help="omniglot: comma-separated subset of 5w1s,5w5s,20w1s,20w5s (default: all four)")


def cmd_reproduce(args, exit_interrupted: int) -> int:
    """``tinymeta reproduce omniglot``."""
    from . import reproduce_images as rep

    source = rep.resolve_source(args.source, args.data_root)
    specs = rep.image_plan(source, algorithms=args.algorithms, seeds=args.seeds or (0,), settings=args.settings,
                           iterations=args.iterations, quick=args.quick, eval_tasks=args.eval_tasks,
                           val_tasks=args.val_tasks, data_root=args.data_root, batchnorm=args.batchnorm,
                           budgets=args.budget)
    jobs = args.jobs or 1
    print(rep.format_plan(specs, jobs, estimate=args.dry_run))  # the estimate times every run: dry runs only
    if args.dry_run:
        return 0

    def done(r):
        e = next(iter(r["evaluations"].values()), None)
        text = f": {100 * e['mean'][e['test_steps']]:.1f} % accuracy" if e else ""
        print(f"[{r['status']}] {r['name']}{text}", flush=True)

    out = args.out or Path(f"runs/reproduce-{source}")
    args.report = args.report or Path("REPRODUCTION.md")
    try:
        results, seconds = rep.run_images(out, specs, jobs, on_result=done)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished runs and checkpoints are kept in {out}. "
              "Run the same command again to continue.", file=sys.stderr)
        return exit_interrupted
    from .report import publish_section

    command = " ".join(["tinymeta", *args.argv])
    text = rep.image_section(specs, results, seconds, jobs, command, figures_dir=out, report_dir=out)
    own = rep.write_report(Path(out) / "REPRODUCTION.md", text)  # the output folder's own copy
    path = publish_section(args.report, rep.SECTION, own)  # figures copied beside the shared file
    print(f"\nreport: {path} (section omniglot, figures in {path.parent / 'reproduction'}); runs: {out}")
    failed = [r["name"] for r in results if r["status"] != "finished"]
    if failed:
        print(f"{len(failed)} run(s) did not finish: {', '.join(failed)} (see the report)", file=sys.stderr)
    return 1 if failed else 0
