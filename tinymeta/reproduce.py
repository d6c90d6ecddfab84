"""``tinymeta reproduce sinusoid``: the sinusoid tables of Finn et al. 2017 and Li et al. 2017.

The protocol (REPRODUCTION-NOTES): a 1-40-40-1 ReLU network, meta-batch 25,
Adam 1e-3, 70 000 iterations, alpha = 0.01, K = 10 at meta-training, tested
5-shot after 1, 5, 10 steps on 600 fixed tasks with 100 query points, 95%
intervals, several training seeds; every available algorithm on the same
protocol, next to the published MAML and pretrained-baseline numbers; and
Meta-SGD against MAML trained and tested at 5, 10, 20 shots, 1 step.

Each run lives in its own directory under the output directory and is
resumable: running the command again continues unfinished runs and reuses
finished ones. Runs execute in ``jobs`` separate processes (the models are
far too small for threads to help inside one run); the parent only
schedules them and collects their results.
"""
from __future__ import annotations

import multiprocessing
import os
from queue import Empty
import signal
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, Optional

from . import registry, runs
from .config import TrainConfig
from .train import CHECKPOINT, TrainingDiverged, TrainingStopped, load_run, train

# Finn et al. 2017, Appendix C, Table 2: 5-shot test MSE after 1 / 5 / 10 steps (trained with K = 10).
PUBLISHED_TABLE2 = {"maml": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}}
TABLE_STEPS = (1, 5, 10)
# Row order of the main table; only the algorithms of the registry are run.
ALGORITHM_ORDER = ("pretrained", "maml", "fomaml", "reptile", "metasgd", "anil", "cavia", "imaml")
SHOT_STUDY = (("maml", "metasgd"), (5, 10, 20))  # Li et al. 2017, Table 1: K-shot training and test, 1 step
TEST_SHOTS = 5  # Finn et al. 2017, Table 2


@dataclass(frozen=True)
class RunSpec:
    """One training run of the plan and the evaluation shots it serves."""

    name: str
    config: TrainConfig
    eval_shots: tuple


class Budget(NamedTuple):
    """An algorithm's iterations instead of the protocol's: ``n_seeds`` keeps only the first seeds
    (sinusoid), ``setting`` limits it to one image setting such as ``"20w5s"`` (omniglot)."""

    algo: str
    iterations: int
    n_seeds: Optional[int] = None
    setting: Optional[str] = None


def parse_budget(text: str) -> Budget:
    """``"imaml=5000x1"`` -> ``Budget("imaml", 5000, 1)``; ``"maml@20w5s=500"`` -> ``Budget("maml", 500,
    None, "20w5s")``: an algorithm's iterations, optionally its seed count, optionally for one setting."""
    try:
        head, rest = text.split("=")
        algo, at, setting = head.partition("@")
        iterations, _, n_seeds = rest.partition("x")
        budget = Budget(algo.strip(), int(iterations), int(n_seeds) if n_seeds else None,
                        setting.strip() if at else None)
    except ValueError:
        raise ValueError(f"a budget must look like ALGO=ITERATIONS, ALGO=ITERATIONSxSEEDS (imaml=5000x1) or "
                         f"ALGO@SETTING=ITERATIONS (maml@20w5s=500), got {text!r}") from None
    registry.algorithm(budget.algo)
    if budget.iterations < 1 or (budget.n_seeds is not None and budget.n_seeds < 1):
        raise ValueError(f"a budget's iterations and seed count must be positive, got {text!r}")
    if at and not budget.setting:
        raise ValueError(f"a budget's setting after @ is empty, got {text!r}")
    return budget


def sinusoid_plan(algorithms=None, seeds=(0, 1, 2), iterations=70_000, eval_tasks=600, val_tasks=100,
                  budgets=()) -> list:
    """The runs of the sinusoid protocol, deduplicated (MAML at K = 10 serves both tables).

    ``budgets``: ``Budget`` tuples (``parse_budget``) that give an algorithm
    fewer iterations, or only the first ``n_seeds`` seeds, than the protocol's; the report says so.
    """
    regression = {name for name, a in registry.ALGORITHMS.items() if a.kind == "gradient"}  # not the metric learners
    available = [a for a in ALGORITHM_ORDER if a in regression] + sorted(regression - set(ALGORITHM_ORDER))
    algorithms = available if algorithms is None else list(algorithms)
    for a in algorithms:
        registry.algorithm(a)
    if any(b.setting is not None for b in budgets):
        raise ValueError("budgets for one setting (ALGO@SETTING=N) apply to the image protocol, not to sinusoid")
    budget = {b.algo: (b.iterations, b.n_seeds) for b in budgets}

    def base(its):
        return TrainConfig(iterations=its, eval_tasks=eval_tasks, val_tasks=val_tasks, eval_shots=TEST_SHOTS,
                           eval_every=max(10, its // 20), checkpoint_every=max(1, min(5000, its // 10)),
                           log_every=max(1, min(100, its // 200)))

    specs = {}

    def add(algo, shots, seed, eval_shots):
        its, n_seeds = budget.get(algo, (iterations, None))
        if n_seeds is not None and seed not in seeds[:n_seeds]:
            return
        config = replace(base(its), algo=algo, shots=shots, query=shots, seed=seed)
        name = f"{algo}-K{shots}-seed{seed}"
        prev = specs.get(name)
        specs[name] = RunSpec(name, config, tuple(sorted(set(prev.eval_shots if prev else ()) | {eval_shots})))

    for algo in algorithms:
        for seed in seeds:
            add(algo, 10, seed, TEST_SHOTS)
    for algo in SHOT_STUDY[0]:
        if algo in algorithms:
            for shots in SHOT_STUDY[1]:
                for seed in seeds:
                    add(algo, shots, seed, shots)
    return list(specs.values())


def run_spec(out_dir, spec: RunSpec, progress=False, should_stop=None) -> dict:
    """Train (or resume, or reuse) one run, then evaluate it at each of its shots."""
    run_dir = Path(out_dir) / spec.name
    result = {"name": spec.name, "algo": spec.config.algo, "seed": spec.config.seed, "shots": spec.config.shots,
              "status": "finished", "evaluations": {}}
    if should_stop is not None and should_stop():
        return {**result, "status": "interrupted"}
    try:
        if (run_dir / CHECKPOINT).exists():
            config, _, iteration, _ = load_run(run_dir)
            if config != spec.config:
                raise ValueError(f"{run_dir} holds a run with another configuration; choose another output "
                                 f"directory or remove it")
            if iteration < config.iterations:
                result["status"] = train(run_dir, resume=True, progress=progress, should_stop=should_stop).status
        else:
            result["status"] = train(run_dir, spec.config, progress=progress, should_stop=should_stop).status
    except TrainingStopped as err:
        status = "diverged" if isinstance(err, TrainingDiverged) else "stopped"
        return {**result, "status": status, "message": str(err)}
    if result["status"] != "finished":
        return result
    _, _, iteration, _ = load_run(run_dir)
    for shots in spec.eval_shots:
        e = runs.read_evaluation(run_dir, shots)
        if (e is None or e["iteration"] != iteration or e["n_tasks"] != spec.config.eval_tasks
                or "median" not in e):
            e = runs.evaluate_run(run_dir, shots=shots)
        result["evaluations"][shots] = e
    if TEST_SHOTS in spec.eval_shots and not (run_dir / "training_curve.png").exists():
        runs.plot_run(run_dir, result["evaluations"][TEST_SHOTS])
    return result


def _worker(out_dir, spec, results, stop):
    """One run in its own process. The parent answers Ctrl-C by setting ``stop`` (train() also
    handles a SIGINT that reaches it directly); outside train() this process ignores SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import numba  # the compiled kernels may run parallel over tasks: one thread per process here

    numba.set_num_threads(1)
    try:
        results.put(run_spec(out_dir, spec, should_stop=stop.is_set))
    except Exception:  # reported in REPRODUCTION.md, the other runs go on
        results.put({"name": spec.name, "algo": spec.config.algo, "seed": spec.config.seed,
                     "shots": spec.config.shots, "status": "error", "message": traceback.format_exc(),
                     "evaluations": {}})


def run_plan(out_dir, specs, jobs=1, on_result=None) -> list:
    """Run every spec, ``jobs`` at a time, each in its own process if ``jobs > 1``.

    ``on_result(result)`` is called as each run ends. Ctrl-C: running runs
    save their checkpoints, no new run starts, and ``KeyboardInterrupt``
    propagates; calling again continues where it stopped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    if jobs <= 1:
        for spec in specs:
            results.append(run_spec(out_dir, spec, progress=True))
            if on_result:
                on_result(results[-1])
            if results[-1]["status"] == "interrupted":
                raise KeyboardInterrupt
        return results
    context = multiprocessing.get_context("spawn")
    queue, stop = context.Queue(), context.Event()
    pending, running = list(specs), {}
    while pending or running:
        while pending and len(running) < jobs and not stop.is_set():
            spec = pending.pop(0)
            running[spec.name] = context.Process(target=_worker, args=(out_dir, spec, queue, stop))
            running[spec.name].start()
        if not running:
            break
        try:
            result = queue.get(timeout=1.0)
        except KeyboardInterrupt:
            stop.set()  # running runs checkpoint at their next iteration and report "interrupted"
            continue
        except Empty:  # a process that died without a word (killed, crashed) becomes an error result
            dead = [name for name, p in running.items() if p.exitcode not in (None, 0)]
            for name in dead:
                spec, code = next(s for s in specs if s.name == name), running.pop(name).exitcode
                result = {"name": name, "algo": spec.config.algo, "seed": spec.config.seed, "shots": spec.config.shots,
                          "status": "error", "message": f"its process exited with code {code}", "evaluations": {}}
                results.append(result)
                if on_result:
                    on_result(result)
            continue
        running.pop(result["name"]).join()
        results.append(result)
        if on_result:
            on_result(result)
    if stop.is_set():
        raise KeyboardInterrupt
    order = {s.name: i for i, s in enumerate(specs)}
    return sorted(results, key=lambda r: order[r["name"]])


def reproduce_sinusoid(out_dir, algorithms=None, seeds=(0, 1, 2), iterations=70_000, eval_tasks=600, val_tasks=100,
                       jobs=None, on_result=None, command="tinymeta reproduce sinusoid", budgets=()) -> Path:
    """Run the sinusoid protocol in ``out_dir``; write ``REPRODUCTION.md`` and figures there; return its path."""
    from .report import write_sinusoid_report

    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    specs = sinusoid_plan(algorithms, seeds, iterations, eval_tasks, val_tasks, budgets)
    start = time.perf_counter()
    results = run_plan(out_dir, specs, jobs, on_result)
    return write_sinusoid_report(Path(out_dir), specs, results, time.perf_counter() - start, jobs, command)
