"""REPRODUCTION.md for the sinusoid protocol: tables side by side with the papers, and figures.

Across training seeds, a cell reads ``mean ± ci95 (min-max)``: the mean
over seeds of each seed's mean test error, the mean over seeds of its 95%
interval over test tasks, and the range of the seeds' means (the spread
across seeds is larger than the interval over tasks: REPRODUCTION-NOTES).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from . import __version__, plots, registry, runs
from .checkpoint import atomic_write
from .reproduce import ALGORITHM_ORDER, PUBLISHED_TABLE2, SHOT_STUDY, TABLE_STEPS, TEST_SHOTS


def aggregate(evaluations) -> dict:
    """Seed statistics of a list of ``eval_<k>shot.json`` dicts of one algorithm and shot count."""
    def arr(key):
        return np.array([[np.nan if x is None else x for x in e[key]] for e in evaluations], dtype=float)

    means, cis = arr("mean"), arr("ci95")
    medians = np.array([[np.inf if x is None else x for x in e["median"]] if "median" in e else
                        [np.nan] * len(e["mean"]) for e in evaluations], dtype=float)
    with np.errstate(all="ignore"):
        return {"mean": np.nanmean(means, axis=0), "median": np.mean(medians, axis=0), "ci95": np.nanmean(cis, axis=0), "lo": np.nanmin(means, axis=0),
                "hi": np.nanmax(means, axis=0), "seeds": list(means), "n_seeds": len(evaluations),
                "diverged": np.sum([e["diverged"] for e in evaluations], axis=0),
                "n_tasks": evaluations[0]["n_tasks"], "seconds": float(np.mean([e["train_seconds"] for e in evaluations])),
                "iterations": evaluations[0]["iteration"],
                "tuned": sorted({str(e["tuned"]["value"]) for e in evaluations if e.get("tuned")})}


def _cell(a, s) -> str:
    if s >= len(a["mean"]) or not np.isfinite(a["mean"][s]):
        return "diverged"
    text = f"{a['mean'][s]:.3f} ± {a['ci95'][s]:.3f}"
    return text + (f" ({a['lo'][s]:.2f}–{a['hi'][s]:.2f})" if a["n_seeds"] > 1 else "")


def _collect(results, shots, train_shots=None):
    by_algo = {}
    for r in results:
        if shots in r["evaluations"] and (train_shots is None or r["shots"] == train_shots):
            by_algo.setdefault(r["algo"], []).append(r["evaluations"][shots])
    return {a: aggregate(e) for a, e in by_algo.items()}


def _order(algos):
    return [a for a in ALGORITHM_ORDER if a in algos] + sorted(set(algos) - set(ALGORITHM_ORDER))


def write_sinusoid_report(out_dir: Path, specs, results, seconds, jobs, command) -> Path:
    """Write ``out_dir/REPRODUCTION.md`` and its figures; return the report's path."""
    config = max((s.config for s in specs), key=lambda c: (c.iterations, c.algo == "maml"))
    main = _collect(results, TEST_SHOTS, train_shots=10)
    seeds = sorted({s.config.seed for s in specs})
    smoke = config.iterations < 70_000
    lines = ["# Reproduction: sinusoid regression (Finn et al. 2017; Li et al. 2017)", ""]
    if smoke:
        lines += [f"**Smoke run: {config.iterations} meta-iterations instead of the protocol's 70 000. "
                  "These numbers test the pipeline, not the papers.**", ""]
    reduced = {}
    for algo in {s.config.algo for s in specs}:
        mine = [s.config for s in specs if s.config.algo == algo]
        its, n_seeds = min(c.iterations for c in mine), len({c.seed for c in mine})
        if its < config.iterations or n_seeds < len(seeds):
            reduced[algo] = (its, n_seeds)
    if reduced:
        lines += ["**Reduced budgets** (to fit this machine; these rows are not the full protocol): "
                  + "; ".join(f"{a}: {its} iterations, {n} seed{'s' * (n != 1)}" for a, (its, n) in sorted(reduced.items()))
                  + ".", ""]
    lines += [f"Command: `{command}`  ", f"tinymeta {__version__}, Python {platform.python_version()}, "
              f"{os.cpu_count()} cores, {jobs} run(s) at a time; this invocation took {seconds / 60:.1f} min (runs "
              "finished by an earlier invocation are reused; each run's own training time is in the tables).", "",
              "## Protocol", "",
              f"- Network 1-{'-'.join(map(str, config.hidden))}-1, {config.activation}, {config.dtype}; "
              f"theta initialised with scheme `{config.init}` (truncated normal, std 0.01, zero biases, as in the "
              "reference code).",
              f"- Meta-training: {config.iterations} iterations, meta-batch {config.meta_batch}, "
              f"K = {config.shots} support and {config.query} query points per task, outer optimizer "
              f"{config.optimizer} at {config.outer_lr:g} (Reptile: its own outer settings), inner step "
              f"alpha = {registry.ALGORITHMS['maml'].config().inner_lr:g} as in the paper's text (the reference "
              "code's default is 0.001), one inner step.",
              f"- Test: {config.eval_tasks} fixed tasks (seeded, the same for every run), 100 query points each, "
              f"{TEST_SHOTS} support points, plain SGD at alpha after 0..{config.eval_steps} steps; 95% intervals "
              "over tasks (1.96 standard errors). A task whose MSE is non-finite or above 1e4 counts as "
              "diverged and is left out of the mean.",
              f"- Training seeds: {', '.join(map(str, seeds))}. Cells: mean over seeds ± mean 95% interval over "
              "tasks (range of the seeds' means).",
              "- Pretrained baseline: the same network regressed on the training tasks' query points "
              f"(MAML with 0 inner steps), fine-tuned at test time with a step size chosen on {config.val_tasks} "
              "fixed validation tasks (disjoint from the test tasks) "
              f"from {list(registry.BASELINE_STEP_GRID)} (by the MSE after {config.eval_steps} steps).", ""]
    missing = [a for a in ALGORITHM_ORDER if a not in registry.ALGORITHMS]
    lines += [f"## {TEST_SHOTS}-shot test MSE, models meta-trained with K = 10 (Finn et al. 2017, Table 2)", "",
              "| method | " + " | ".join(f"{s} step{'s' * (s != 1)}" for s in TABLE_STEPS)
              + " | diverged tasks | iterations | wall time per run |",
              "|---|" + "---|" * (len(TABLE_STEPS) + 3)]
    for algo, label in (("maml", "MAML"), ("pretrained", "pretrained baseline")):
        lines.append(f"| {label}, published | " + " | ".join(f"{PUBLISHED_TABLE2[algo][s]:.2f}" for s in TABLE_STEPS)
                     + " | – | 70 000 | – |")
    for algo in _order(main):
        a = main[algo]
        tuned = f" (step {', '.join(a['tuned'])})" if a["tuned"] else ""
        lines.append(f"| {algo}{tuned}, ours | " + " | ".join(_cell(a, s) for s in TABLE_STEPS)
                     + f" | {int(a['diverged'].max())} of {a['n_tasks'] * a['n_seeds']} | {a['iterations']} | "
                     f"{a['seconds']:.0f} s |")
    lines += ["", "Median over the test tasks (a task that diverged counts as the worst), mean over seeds. "
              "The means above leave out only tasks beyond the divergence threshold; a few tasks whose "
              "repeated steps at alpha blow up without crossing it move the mean, not the median:", "",
              "| method | " + " | ".join(f"{s} step{'s' * (s != 1)}" for s in TABLE_STEPS) + " |",
              "|---|" + "---|" * len(TABLE_STEPS)]
    for algo in _order(main):
        lines.append(f"| {algo} | " + " | ".join(f"{main[algo]['median'][s]:.3f}" for s in TABLE_STEPS) + " |")
    if missing:
        lines += ["", f"Not in this build's registry (not run): {', '.join(missing)}."]
    failed = [r for r in results if r["status"] != "finished"]
    for r in failed:
        message = r.get("message", "").strip().splitlines()
        lines += ["", f"Run {r['name']}: {r['status']}." + (f" {message[-1]}" if message else "")]
    figures = _figures(out_dir, main, results)
    lines += ["", *[f"![{name}]({name})" for name in figures], ""]
    lines += _shot_study(results)
    lines += ["## Every run", "", "| run | " + " | ".join(f"{s} step{'s' * (s != 1)}" for s in (0, *TABLE_STEPS))
              + " | diverged | wall time |", "|---|" + "---|" * (len(TABLE_STEPS) + 3)]
    for r in results:
        for shots, e in sorted(r["evaluations"].items()):
            cells = ["–" if e["mean"][s] is None else f"{e['mean'][s]:.3f} ± {e['ci95'][s] or 0:.3f}"
                     for s in (0, *TABLE_STEPS)]
            lines.append(f"| {r['name']}, {shots}-shot test | " + " | ".join(cells)
                         + f" | {max(e['diverged'])} | {e['train_seconds']:.0f} s |")
    path = out_dir / "REPRODUCTION.md"
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    return path


def _shot_study(results):
    algos, shot_list = SHOT_STUDY
    rows = {(a, k): _collect(results, k, train_shots=k).get(a) for a in algos for k in shot_list}
    if not any(rows.values()):
        return []
    lines = ["## Meta-SGD and MAML at 5, 10, 20 shots (Li et al. 2017, Table 1 protocol)", "",
             "Trained and tested with the same K; Li et al. report 1 step. Meta-SGD's learned steps are "
             "not meant to be repeated (REPRODUCTION-NOTES), so 5 and 10 steps show what happens beyond.", "",
             "| method | K | 1 step | 5 steps | 10 steps | diverged tasks |", "|---|---|---|---|---|---|"]
    for (algo, k), a in rows.items():
        if a is not None:
            lines.append(f"| {algo} | {k} | " + " | ".join(_cell(a, s) for s in TABLE_STEPS)
                         + f" | {int(a['diverged'].max())} of {a['n_tasks'] * a['n_seeds']} |")
    missing = [a for a in algos if a not in registry.ALGORITHMS]
    if missing:
        lines += ["", f"Not in this build's registry (not run): {', '.join(missing)}."]
    return lines + [""]


def _figures(out_dir, main, results):
    names = []
    if main:
        curves = [{"label": f"{algo} ({main[algo]['n_seeds']} seed{'s' * (main[algo]['n_seeds'] != 1)})",
                   "mean": main[algo]["mean"], "ci95": main[algo]["ci95"], "seeds": main[algo]["seeds"]}
                  for algo in _order(main)]
        order = _order(main)
        published = [{"label": f"{algo}, published (Finn et al. 2017, Table 2)", "steps": list(TABLE_STEPS),
                      "values": [PUBLISHED_TABLE2[algo][s] for s in TABLE_STEPS],
                      "curve": order.index(algo) if algo in order else None} for algo in PUBLISHED_TABLE2]
        names.append("sinusoid_error_vs_steps.png")
        plots.error_vs_steps(out_dir / names[-1], curves, published=published,
                             title=f"sinusoid, {TEST_SHOTS}-shot test MSE (models trained with K = 10); "
                                   "thin lines: seeds")
    panels = []
    for algo in ("maml", "pretrained"):
        r = next((r for r in results if r["algo"] == algo and r["shots"] == 10 and TEST_SHOTS in r["evaluations"]),
                 None)
        if r is not None:
            e = r["evaluations"][TEST_SHOTS]
            inner = {e["tuned"]["field"]: e["tuned"]["value"]} if e.get("tuned") else None
            panel = runs.adaptation_panels(e["run_dir"], TEST_SHOTS, tasks=(0,), inner=inner)[0]
            panels.append({**panel, "title": f"{algo} (seed {r['seed']})\n" + panel["title"].split(", ", 1)[1]})
    if panels:
        names.append("sinusoid_adaptation.png")
        plots.adaptation(out_dir / names[-1], panels)
    return names


def section_markers(name: str) -> tuple:
    """The opening and closing markers of section ``name``: ``<!-- tinymeta:NAME -->``, ``<!-- /tinymeta:NAME -->``."""
    if not isinstance(name, str) or not name or any(c in name for c in "<>- \n"):
        raise ValueError(f"name must be a non-empty word without spaces, '<', '>' or '-', got {name!r}")
    return f"<!-- tinymeta:{name} -->", f"<!-- /tinymeta:{name} -->"


def write_section(path, name: str, text: str) -> Path:
    """Put ``text`` between the markers of section ``name`` in the Markdown file ``path``.

    The text between an existing pair of markers is replaced and everything
    else is kept byte for byte; a missing section is appended (a missing
    file is created). Several commands thus share one REPRODUCTION.md, each
    owning its section. Raises ValueError if the markers are unbalanced.
    The file is replaced atomically.
    """
    path = Path(path)
    start, end = section_markers(name)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{start}\n{text.strip()}\n{end}"
    counts = (old.count(start), old.count(end))
    if counts == (0, 0):
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + block + "\n"
    elif counts == (1, 1) and old.index(start) < old.index(end):
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        raise ValueError(f"{path} must hold section {name!r} once, {start} before {end}; found {counts[0]} "
                         f"opening and {counts[1]} closing markers")
    atomic_write(path, new.encode("utf-8"))
    return path


def publish_section(report_path, name: str, run_report, figures="reproduction") -> Path:
    """Copy the report ``run_report`` (a command's REPRODUCTION.md in its output folder) into
    section ``name`` of ``report_path``, with its figures copied to the folder ``figures`` beside
    ``report_path`` and the links rewritten, so that the shared file can be committed alone."""
    import re
    import shutil

    report_path, run_report = Path(report_path), Path(run_report)
    text = run_report.read_text(encoding="utf-8")
    for marker in section_markers(name):  # a report that is itself a shared file: take the section's text
        text = text.replace(marker, "")
    fig_dir = report_path.parent / figures
    for image in sorted(set(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text))):
        source = run_report.parent / image
        if source.exists():
            fig_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, fig_dir / source.name)
            text = text.replace(f"]({image})", f"]({os.path.relpath(fig_dir / source.name, report_path.parent)})")
    return write_section(report_path, name, text)

