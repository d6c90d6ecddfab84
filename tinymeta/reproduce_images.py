"""``tinymeta reproduce omniglot``: N-way K-shot Omniglot with the non-convolutional network.

The protocol (REPRODUCTION-NOTES, Omniglot): 5-way and 20-way, 1-shot and
5-shot; every image learner on the MLP 784-256-128-64-64-N of Finn et al.
2017 (the metric learners on its 784-256-128-64-64 body as embedding);
tested on ``eval_tasks`` >= 600 fixed test episodes with 95% intervals;
the wall time of each run. Published numbers sit next to ours: MAML and
MANN without convolutions (Finn et al. 2017, Table 1), and, for context
only, the convolutional numbers of the other methods' papers.

Runs reuse the sinusoid machinery (``reproduce.run_plan``): one directory
per run, resumable, ``jobs`` processes. The section is written between the
markers ``<!-- tinymeta:omniglot -->`` of REPRODUCTION.md
(``report.write_section``), so the sinusoid section stays as it is.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from . import __version__, plots, registry
from .config import TrainConfig
from .evaluate import Summary
from .reproduce import RunSpec, run_plan

SECTION = "omniglot"
SETTINGS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}
ALGORITHM_ORDER = ("maml", "fomaml", "metasgd", "anil", "reptile", "protonet", "matching", "matching_fce",
                   "siamese", "relation")
GRADIENT_20WAY = {"meta_batch": 16, "inner_steps": 5, "test_steps": 5}  # Finn et al. reference code, 20-way
QUICK = {"iterations": 100, "eval_tasks": 600, "val_tasks": 20}  # shows the pipeline, not the papers
PROTOCOL_ITERATIONS = 60_000  # Finn et al. reference code, Omniglot
STEP_COLUMNS = (1, 3, 5, 10)  # REPRODUCTION-NOTES: report accuracy after each of 1, 3, 5, 10 steps

# Published test accuracies (%), 5-way 1-shot, 5-way 5-shot, 20-way 1-shot, 20-way 5-shot; None: not reported.
PUBLISHED_MLP = {  # Finn et al. 2017, Table 1, the non-convolutional rows
    "maml": ("MAML (no conv), Finn et al. 2017, Table 1", ("89.7 ± 1.1", "97.5 ± 0.6", None, None)),
    "mann": ("MANN (no conv), Santoro et al. 2016, in Finn et al. 2017, Table 1", ("82.8", "94.9", None, None)),
}
PUBLISHED_CONV = {  # convolutional networks: context only, not the same model as ours
    "maml": ("MAML, Finn et al. 2017, Table 1", ("98.7 ± 0.4", "99.9 ± 0.1", "95.8 ± 0.3", "98.9 ± 0.2")),
    "fomaml": ("first-order MAML with transduction, in Nichol et al. 2018, Table 2", ("98.3 ± 0.5", "99.2 ± 0.2", "89.4 ± 0.5", "97.9 ± 0.1")),
    "metasgd": ("Meta-SGD, Li et al. 2017, Omniglot table", ("99.53 ± 0.26", "99.93 ± 0.09", "95.93 ± 0.38", "98.97 ± 0.19")),
    "anil": ("ANIL, Raghu et al. 2020, Table 2", (None, None, "96.2 ± 0.5", "98.0 ± 0.3")),
    "reptile": ("Reptile without transduction, Nichol et al. 2018 (arXiv v3), Table 2", ("95.39 ± 0.09", "98.90 ± 0.10", "88.14 ± 0.15", "96.65 ± 0.33")),
    "protonet": ("Prototypical Networks, Snell et al. 2017, Table 1", ("98.8", "99.7", "96.0", "98.9")),
    "matching": ("Matching Networks, Vinyals et al. 2016, Table 1", ("98.1", "98.9", "93.8", "98.5")),
    "siamese": ("conv. Siamese Net, fine-tuned, in Vinyals et al. 2016, Table 1", ("97.3", "98.4", "88.1", "97.0")),
    "relation": ("Relation Network, Sung et al. 2018, Table 1", ("99.6 ± 0.2", "99.8 ± 0.1", "97.6 ± 0.2", "99.1 ± 0.1")),
}


def published_accuracy(algo, ways, shots):
    """``{"text", "source"}`` of the published non-convolutional number for this setting, or None."""
    key = next((k for k, v in SETTINGS.items() if v == (ways, shots)), None)
    if algo not in PUBLISHED_MLP or key is None:
        return None
    source, values = PUBLISHED_MLP[algo]
    value = values[list(SETTINGS).index(key)]
    return None if value is None else {"text": f"{value} %", "source": source}


def resolve_source(source="auto", data_root=None) -> str:
    """"omniglot" or "glyphs": ``auto`` is Omniglot when its archives are found (``data_root``,
    ``$TINYMETA_OMNIGLOT`` or the cache folder), else glyphs."""
    if source != "auto":
        return source
    from .tasks import omniglot

    try:
        for which in ("background", "evaluation"):
            omniglot.find_archive(which, data_root)
    except FileNotFoundError:
        return "glyphs"
    return "omniglot"


def image_plan(source="omniglot", algorithms=None, seeds=(0,), settings=None, iterations=None, quick=False,
               eval_tasks=600, val_tasks=100, data_root=None, hidden=None, batchnorm=False, budgets=()) -> list:
    """The runs of the image protocol: every algorithm at every setting and seed.

    ``iterations``: per run (default: ``QUICK`` with ``quick``, else the protocol's 60 000).
    ``budgets``: ``reproduce.Budget`` tuples that give an algorithm, at every setting or at one
    (``Budget.setting``), other iterations (and optionally only the first seeds); a setting's budget
    wins over the algorithm's.
    ``hidden``: other hidden widths than the protocol's (tests use tiny ones).
    ``batchnorm``: the gradient-based learners' network normalises its hidden layers, as Finn et al.'s
    (their inner step then becomes the paper's 2.0 on the mean loss). The metric learners stay without:
    they embed support and query sets in separate passes, which batch statistics would set apart.
    """
    if source not in ("omniglot", "glyphs"):
        raise ValueError(f"source must be 'omniglot' or 'glyphs', got {source!r}")
    algorithms = [a for a in ALGORITHM_ORDER if a in registry.ALGORITHMS] if algorithms is None else list(algorithms)
    for a in algorithms:
        if registry.algorithm(a).kind == "gradient" and a not in ALGORITHM_ORDER:
            raise ValueError(f"algorithms must be among the image learners {ALGORITHM_ORDER}, got {a!r}")
    settings = list(SETTINGS) if settings is None else list(settings)
    for s in settings:
        if s not in SETTINGS:
            raise ValueError(f"settings must be among {list(SETTINGS)}, got {s!r}")
    if quick:
        iterations = QUICK["iterations"] if iterations is None else iterations
        eval_tasks, val_tasks = max(eval_tasks, QUICK["eval_tasks"]), min(val_tasks, QUICK["val_tasks"])
    iterations = PROTOCOL_ITERATIONS if iterations is None else iterations
    for b in budgets:
        if b.setting is not None and b.setting not in SETTINGS:
            raise ValueError(f"a budget's setting must be among {list(SETTINGS)}, got {b.setting!r}")
    budget = {(b.algo, b.setting): (b.iterations, b.n_seeds) for b in budgets}
    specs = []
    for setting in settings:
        ways, shots = SETTINGS[setting]
        for algo in algorithms:
            extra, options = {}, {}
            if ways == 20 and algo in ("maml", "fomaml", "anil", "metasgd"):
                extra = {"meta_batch": GRADIENT_20WAY["meta_batch"],
                         "test_steps": GRADIENT_20WAY["test_steps"] if algo != "metasgd" else 1}
                options = {"inner_steps": GRADIENT_20WAY["inner_steps"]} if algo != "metasgd" else {}
            if batchnorm and registry.algorithm(algo).kind == "gradient":
                extra["batchnorm"] = True
            its, n_seeds = budget.get((algo, setting), budget.get((algo, None), (iterations, None)))
            for seed in seeds[:n_seeds]:
                config = TrainConfig(algo=algo, task=source, ways=ways, shots=shots, seed=seed, iterations=its,
                                     eval_tasks=eval_tasks, val_tasks=val_tasks, data_root=data_root, hidden=hidden,
                                     eval_every=max(1, its // 10), checkpoint_every=max(1, min(1000, its // 10)),
                                     log_every=max(1, min(100, its // 50)), algo_options=options, **extra)
                specs.append(RunSpec(f"{algo}-{setting}-seed{seed}", config, (shots,)))
    return specs


def estimate_seconds(spec: RunSpec, repeats: int = 2) -> float:
    """Wall time of ``spec`` on this machine now: ``repeats`` timed meta-steps (after one warm-up) times
    the iterations, plus the validations and the test evaluation timed on one episode."""
    config = spec.config
    net, algo = config.net(), registry.algorithm(config.algo)
    family, algo_config = config.task_family(), config.algorithm_config()
    rng = np.random.default_rng(0)
    params = algo.module.init_params(net, rng, algo_config)
    batches = [family.sample(rng, config.meta_batch, config.shots, config.query, config.dtype).batch
               for _ in range(repeats + 1)]
    algo.module.meta_step(net, params, batches[0], algo_config)
    start = time.perf_counter()
    for b in batches[1:]:
        algo.module.meta_step(net, params, b, algo_config)
    step = (time.perf_counter() - start) / repeats
    Xs, ys, Xq, _ = family.fixed_tasks("test", config.eval_shots, 1, config.eval_query, config.dtype).batch.task(0)
    start = time.perf_counter()
    algo.module.predict(net, params, Xs, ys, Xq, config.eval_steps, algo_config)
    episode = time.perf_counter() - start
    n_validations = config.iterations // config.eval_every + 1 if config.eval_every else 0
    return step * config.iterations + episode * (config.eval_tasks + n_validations * config.val_tasks)


def format_plan(specs, jobs=1, estimate=True) -> str:
    """The plan as text, one run a line, with the estimated wall time of each and of the whole."""
    lines = [f"{len(specs)} run(s), {jobs} at a time:"]
    total = 0.0
    for spec in specs:
        c = spec.config
        text = (f"  {spec.name}: {c.iterations} iterations, meta-batch {c.meta_batch}, {c.train_ways}-way "
                f"{c.shots}-shot training, test on {c.eval_tasks} {c.ways}-way episodes")
        if estimate:
            seconds = estimate_seconds(spec)
            total += seconds
            text += f", about {_duration(seconds)}"
        lines.append(text)
    if estimate:
        lines.append(f"estimated wall time: about {_duration(total / max(1, min(jobs, len(specs))))} "
                     f"(timed on this machine now, {os.cpu_count()} cores; a busy machine is slower)")
    return "\n".join(lines)


def _duration(seconds) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_images(out_dir, specs, jobs=1, on_result=None) -> tuple:
    """Run (or resume, or reuse) every spec; return ``(results, seconds)``."""
    start = time.perf_counter()
    results = run_plan(out_dir, specs, jobs, on_result)
    return results, time.perf_counter() - start


# ------------------------------------------------------------------ the report
def _cell(e) -> str:
    s = e["test_steps"]
    m, c = e["mean"][s], e["ci95"][s]
    return "–" if m is None else f"{100 * m:.1f} ± {100 * (c or 0):.1f}"


def image_section(specs, results, seconds, jobs, command, figures_dir=None, report_dir=None) -> str:
    """The Markdown of the image section: protocol, our table next to the published one, every run."""
    by = {}
    for spec, r in zip(specs, results):
        e = r["evaluations"].get(spec.config.shots)
        if e is not None:
            setting = next(k for k, v in SETTINGS.items() if v == (spec.config.ways, spec.config.shots))
            by.setdefault(spec.config.algo, {}).setdefault(setting, []).append(e)
    first = specs[0].config
    settings = [s for s in SETTINGS if any(s in v for v in by.values())] or list(SETTINGS)
    budgets = sorted({sp.config.iterations for sp in specs})
    smoke = budgets[0] < PROTOCOL_ITERATIONS
    budget_text = (f"{budgets[0]:,} iterations per run" if len(budgets) == 1 else
                   f"{budgets[0]:,} to {budgets[-1]:,} iterations per run (each run's in the tables)")
    source = first.task
    lines = [f"## Reproduction: {source} few-shot classification, non-convolutional network", ""]
    if smoke:
        lines += [f"**Reduced budget: {budget_text} instead of the protocol's {PROTOCOL_ITERATIONS:,}, to fit "
                  "this machine. These numbers are baselines at that budget, not the papers' protocol.**", ""]
    if source == "glyphs":
        lines += ["**Images: the generated glyphs (the Omniglot archives were not found), so the published "
                  "Omniglot numbers are not comparable.**", ""]
    lines += [f"Command: `{command}`  ",
              f"tinymeta {__version__}, Python {platform.python_version()}, {os.cpu_count()} cores, {jobs} run(s) "
              f"at a time; the runs' training and test times add up to {_duration(_run_seconds(results))} "
              f"(this command: {seconds / 60:.1f} min; finished runs are reused).", "",
              "### Protocol", "",
              f"- Data: {source}; " + ("the MAML split (1200 characters with their 90/180/270-degree rotations as "
                                      "extra classes to meta-train, 100 of them held out unrotated for validation, "
                                      "423 unrotated characters to test), 28x28 by nearest-neighbour resize of the "
                                      "1-bit images (what the reference's Pillow call does), ink = 1."
                                      if source == "omniglot" else
                                      "1200 classes to meta-train, 100 to validate, 423 to test, 28x28."),
              f"- Network: 784-{'-'.join(map(str, first.hidden))}-N, {first.activation}, He initialisation, "
              + ("batch norm with the batch's own statistics after every hidden layer for the gradient-based "
                 "learners, as Finn et al.'s model. " if any(sp.config.batchnorm for sp in specs) else
                 "**no batch norm** (Finn et al.'s model normalises every hidden layer; `--batchnorm` adds it). ")
              + "The metric learners "
              "(ProtoNet, Matching Nets with and without FCE, Siamese, Relation Net) embed with the same network "
              "without its N-way head (784-256-128-64-64).",
              f"- Gradient-based learners: inner step alpha = "
              f"{'/'.join(sorted({str(sp.config.algorithm_config().inner_lr) for sp in specs if sp.config.algo == 'maml'})) or '–'}"
              " on the mean cross-entropy (the reference's 0.4 on its support-summed loss is 2.0 on a mean, used "
              "with batch norm; without batch norm, repeated steps at 2.0 fall to chance and 0.4 is ours, see "
              "registry.IMAGE_ALGORITHM_DEFAULTS), "
              "1 inner step and meta-batch 32 for 5-way, 5 steps and meta-batch 16 for 20-way; MAML, FOMAML and "
              "ANIL tested after 3 steps (5-way) or 5 (20-way) at the same alpha, Meta-SGD after 1; Reptile with "
              "inner Adam (1e-3, 5 steps), outer SGD 1.0 annealed to 0, 5 tasks per batch, tested after 50 steps.",
              f"- ProtoNet: 60-way training episodes with 5 queries per class, one per update, Adam 1e-3 halved "
              "every 2000 (Snell et al. 2017, section 3.1). Matching Nets (with and without FCE), Siamese and "
              "Relation Net: one N-way episode per update with 5 queries per class, Adam 1e-3.",
              f"- Meta-training: {budget_text} (the protocol: {PROTOCOL_ITERATIONS:,}); "
              f"training episodes have K query drawings per class (reference code).",
              f"- Test: {first.eval_tasks} fixed, seeded {source} test episodes per setting (the same for every "
              f"method), {first.eval_query} query drawings per class (at most 20 - K), accuracy with a 95% "
              "interval over episodes (1.96 standard errors).", "",
              "### Test accuracy (%), 95% intervals", "",
              "| method | " + " | ".join(_setting_title(s) for s in settings)
              + " | iterations | training time per run (test) |", "|---|" + "---|" * (len(settings) + 2)]
    for algo, (source_text, values) in PUBLISHED_MLP.items():
        cells = [values[list(SETTINGS).index(s)] or "–" for s in settings]
        its = f"{PROTOCOL_ITERATIONS:,}" if algo == "maml" else "–"
        lines.append(f"| {source_text} | " + " | ".join(cells) + f" | {its} | – |")
    for algo in [a for a in ALGORITHM_ORDER if a in by]:
        cells, secs, tests = [], [], []
        for s in settings:
            es = by[algo].get(s, [])
            cells.append(" / ".join(_cell(e) for e in es) or "–")
            secs += [e["train_seconds"] for e in es]
            tests += [e["eval_seconds"] for e in es]
        steps = sorted({e["test_steps"] for v in by[algo].values() for e in v})
        what = f"after {'/'.join(map(str, steps))} step{'s' * (steps != [1])}" if steps != [0] else "no adaptation"
        its = sorted({e["iteration"] for v in by[algo].values() for e in v})
        lines.append(f"| {algo}, ours, MLP ({what}) | " + " | ".join(cells)
                     + f" | {'/'.join(f'{i:,}' for i in its)} | {_duration(np.mean(secs))} "
                     f"({_duration(np.mean(tests))}) |")
    lines += _steps_table(by, settings)
    lines += ["", "Convolutional networks, for context only (4-layer CNNs, a different model from ours; "
              "transcribed from each paper's Omniglot table and checked against stored copies of the papers' text; "
              "– where a paper has no number):", "",
              "| method | " + " | ".join(_setting_title(s) for s in settings) + " |", "|---|" + "---|" * len(settings)]
    for algo, (source_text, values) in PUBLISHED_CONV.items():
        if algo in by or algo in ("maml",):
            lines.append(f"| {source_text} | " + " | ".join(values[list(SETTINGS).index(s)] or "–" for s in settings)
                         + " |")
    failed = [r for r in results if r["status"] != "finished"]
    for r in failed:
        message = r.get("message", "").strip().splitlines()
        lines += ["", f"Run {r['name']}: {r['status']}." + (f" {message[-1]}" if message else "")]
    if figures_dir is not None:
        names = _figures(Path(figures_dir), by, settings)
        base = Path(report_dir) if report_dir is not None else Path.cwd()
        lines += [""] + [f"![{Path(n).stem}]({os.path.relpath(Path(figures_dir) / n, base)})" for n in names]
    lines += ["", "### Every run", "", "| run | accuracy, 0 steps | headline | diverged | training time | test time |",
              "|---|---|---|---|---|---|"]
    for spec, r in zip(specs, results):
        e = r["evaluations"].get(spec.config.shots)
        if e is None:
            lines.append(f"| {spec.name} | – | {r['status']} | – | – | – |")
            continue
        zero = e["mean"][0]
        lines.append(f"| {spec.name} | {'–' if zero is None else f'{100 * zero:.1f}'} | {_cell(e)} "
                     f"(step {e['test_steps']}) | {max(e['diverged'])} | {_duration(e['train_seconds'])} | "
                     f"{_duration(e['eval_seconds'])} |")
    return "\n".join(lines) + "\n"


def _run_seconds(results) -> float:
    """Training plus test seconds of every evaluated run, whenever it ran."""
    return sum(e["train_seconds"] + e["eval_seconds"] for r in results for e in r["evaluations"].values())


def _steps_table(by, settings, steps=STEP_COLUMNS) -> list:
    """Accuracy of the learners that adapt after each of ``steps`` (REPRODUCTION-NOTES: without batch
    norm, extra test steps at the training step size can hurt)."""
    rows = []
    for algo in ALGORITHM_ORDER:
        for setting in settings:
            for e in by.get(algo, {}).get(setting, []):
                if len(e["mean"]) > 1:
                    cells = ["–" if k >= len(e["mean"]) or e["mean"][k] is None
                             else f"{100 * e['mean'][k]:.1f} ± {100 * (e['ci95'][k] or 0):.1f}" for k in steps]
                    rows.append(f"| {algo} | {_setting_title(setting)} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", "Accuracy (%) of the learners that adapt, after each number of test steps (at the training "
            "step size; Reptile with its inner Adam):", "",
            "| method | setting | " + " | ".join(f"{k} step{'s' * (k != 1)}" for k in steps) + " |",
            "|---|---|" + "---|" * len(steps), *rows]


def _setting_title(setting) -> str:
    ways, shots = SETTINGS[setting]
    return f"{ways}-way {shots}-shot"


def _figures(out_dir, by, settings) -> list:
    """Accuracy against test steps of every learner that adapts, one figure per setting."""
    names = []
    for s in settings:
        curves = []
        for algo in ALGORITHM_ORDER:
            es = by.get(algo, {}).get(s, [])
            if es and len(es[0]["mean"]) > 1:
                summary = Summary.from_json(es[0])
                curves.append({"label": f"{algo} (seed {Path(es[0]['run_dir']).name.rsplit('seed', 1)[-1]})",
                               "mean": summary.mean[:11], "ci95": summary.ci95[:11]})
        if curves:
            names.append(f"accuracy_vs_steps_{s}.png")
            plots.error_vs_steps(out_dir / names[-1], curves, metric="accuracy",
                                 title=f"{_setting_title(s)}: test accuracy against adaptation steps, 95% intervals")
    return names


def write_report(path, text) -> Path:
    """Write ``text`` as the image section of the Markdown file ``path`` (other sections are kept)."""
    from .report import write_section

    return write_section(path, SECTION, text)


def reproduce_images(out_dir, report_path, source="omniglot", jobs=1, on_result=None,
                     command="tinymeta reproduce omniglot", **plan) -> Path:
    """Run the image protocol in ``out_dir`` and write its section of ``report_path``; return that path."""
    specs = image_plan(source, **plan)
    results, seconds = run_images(out_dir, specs, jobs, on_result)
    text = image_section(specs, results, seconds, jobs, command, figures_dir=out_dir,
                         report_dir=Path(report_path).resolve().parent)
    return write_report(report_path, text)

