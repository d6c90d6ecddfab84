"""``tinymeta reproduce omniglot``: the plan, the shared REPRODUCTION.md sections, a tiny run on glyphs."""
import numpy as np
import pytest

from tinymeta import reproduce_images as rep
from tinymeta.cli import main
from tinymeta.report import write_section

SINUSOID = "# Reproduction\n\n<!-- tinymeta:sinusoid -->\n## Sinusoid\n| a | b |\n<!-- /tinymeta:sinusoid -->\n\nfooter\n"


def test_the_plan_follows_the_protocol():
    specs = rep.image_plan("glyphs")
    assert len(specs) == 4 * len(rep.ALGORITHM_ORDER) and len({s.name for s in specs}) == len(specs)
    by = {s.name: s.config for s in specs}
    assert by["maml-5w1s-seed0"].iterations == 60_000 and by["maml-5w1s-seed0"].meta_batch == 32
    maml20 = by["maml-20w5s-seed0"]
    assert (maml20.ways, maml20.shots, maml20.meta_batch, maml20.test_steps) == (20, 5, 16, 5)
    assert maml20.algorithm_config().inner_steps == 5 and maml20.net().sizes[-1] == 20
    assert by["protonet-20w1s-seed0"].train_ways == 60 and by["metasgd-20w1s-seed0"].test_steps == 1
    assert all(c.eval_tasks >= 600 for c in by.values())
    quick = rep.image_plan("glyphs", algorithms=["protonet"], settings=["5w1s"], quick=True)
    assert quick[0].config.iterations == rep.QUICK["iterations"] and quick[0].config.eval_tasks == 600
    assert rep.image_plan("glyphs", algorithms=["protonet"], settings=["5w1s"], quick=True,
                          iterations=7)[0].config.iterations == 7
    normalised = {s.name: s.config for s in rep.image_plan("glyphs", settings=["5w1s"], batchnorm=True)}
    assert normalised["maml-5w1s-seed0"].batchnorm and normalised["maml-5w1s-seed0"].algorithm_config().inner_lr == 2.0
    assert not normalised["protonet-5w1s-seed0"].batchnorm and not by["maml-5w1s-seed0"].batchnorm
    with pytest.raises(ValueError, match="settings must be among"):
        rep.image_plan("glyphs", settings=["3w1s"])


def test_budgets_give_an_algorithm_or_one_of_its_settings_other_iterations():
    from tinymeta.reproduce import parse_budget

    budgets = [parse_budget(t) for t in ("maml=500", "maml@20w5s=50", "reptile=70x1", "protonet@5w1s=9")]
    specs = rep.image_plan("glyphs", algorithms=["maml", "reptile", "protonet"], seeds=(0, 1), iterations=1000,
                           budgets=budgets)
    its = {s.name: s.config.iterations for s in specs}
    assert its["maml-5w1s-seed1"] == its["maml-20w1s-seed0"] == 500 and its["maml-20w5s-seed1"] == 50
    assert its["protonet-5w1s-seed0"] == 9 and its["protonet-5w5s-seed1"] == 1000
    assert {n for n in its if n.startswith("reptile")} == {f"reptile-{s}-seed0" for s in rep.SETTINGS}
    assert {its[n] for n in its if n.startswith("reptile")} == {70}
    by = {s.name: s.config for s in specs}
    assert by["maml-20w5s-seed0"].eval_every == 5 and by["maml-20w5s-seed0"].checkpoint_every == 5
    with pytest.raises(ValueError, match="setting must be among"):
        rep.image_plan("glyphs", budgets=[parse_budget("maml@9w1s=10")])
    assert parse_budget("maml@20w5s=500x2") == ("maml", 500, 2, "20w5s")
    for bad in ("maml@=10", "maml@5w1s", "maml@5w1s=0"):
        with pytest.raises(ValueError):
            parse_budget(bad)


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "REPRODUCTION.md"
    path.write_text(SINUSOID)
    write_section(path, "omniglot", "## Images\nfirst")
    assert path.read_text().startswith(SINUSOID.rstrip("\n"))
    write_section(path, "omniglot", "## Images\nsecond\n")
    text = path.read_text()
    assert "first" not in text and text.count("<!-- tinymeta:omniglot -->") == 1 and "second" in text
    assert text.startswith(SINUSOID.rstrip("\n"))
    write_section(path, "sinusoid", "## Sinusoid, new")
    text = path.read_text()
    assert "| a | b |" not in text and "second" in text and "footer" in text
    path.write_text("<!-- /tinymeta:omniglot -->\n<!-- tinymeta:omniglot -->\n")
    with pytest.raises(ValueError, match="once"):
        write_section(path, "omniglot", "x")
    with pytest.raises(ValueError, match="name must be"):
        write_section(path, "two words", "x")
    fresh = tmp_path / "new.md"
    write_section(fresh, "omniglot", "hello")
    assert fresh.read_text() == "<!-- tinymeta:omniglot -->\nhello\n<!-- /tinymeta:omniglot -->\n"


@pytest.mark.slow
def test_a_tiny_reproduction_on_glyphs_fills_the_image_section(tmp_path):
    from tinymeta.reproduce import parse_budget

    specs = rep.image_plan("glyphs", algorithms=["maml", "protonet"], settings=["5w1s"], iterations=2,
                           eval_tasks=6, val_tasks=3, hidden=(16,), budgets=[parse_budget("protonet=3")])
    results, seconds = rep.run_images(tmp_path / "runs", specs, jobs=1)
    assert [r["status"] for r in results] == ["finished", "finished"]
    report = tmp_path / "REPRODUCTION.md"
    report.write_text(SINUSOID)
    text = rep.image_section(specs, results, seconds, 1, "tinymeta reproduce omniglot", tmp_path / "runs", tmp_path)
    rep.write_report(report, text)
    written = report.read_text()
    assert written.startswith(SINUSOID.rstrip("\n")) and "<!-- tinymeta:omniglot -->" in written
    assert "89.7 ± 1.1" in written and "Reduced budget: 2 to 3 iterations per run" in written and "glyphs" in written
    maml = results[0]["evaluations"][1]
    row = next(line for line in written.splitlines() if line.startswith("| maml, ours"))
    s = maml["test_steps"]
    assert f"{100 * maml['mean'][s]:.1f} ± {100 * maml['ci95'][s]:.1f}" in row
    assert (tmp_path / "runs" / "accuracy_vs_steps_5w1s.png").exists()
    steps_row = next(line for line in written.splitlines() if line.startswith("| maml | 5-way 1-shot |"))
    assert f"{100 * maml['mean'][1]:.1f} ± {100 * maml['ci95'][1]:.1f}" in steps_row  # after 1 step
    assert not any(line.startswith("| protonet | 5-way") for line in written.splitlines())  # it does not adapt
    # resumable: a second call reuses the finished runs
    again, _ = rep.run_images(tmp_path / "runs", specs, jobs=1)
    assert [r["evaluations"][1]["train_seconds"] for r in again] == [r["evaluations"][1]["train_seconds"]
                                                                     for r in results]


def test_cli_dry_run_prints_the_plan_and_an_estimate(capsys, tmp_path):
    code = main(["reproduce", "omniglot", "--dry-run", "--source", "glyphs", "--algorithms", "protonet,maml",
                 "--settings", "5w1s", "--iterations", "50", "--report", str(tmp_path / "R.md")])
    out = capsys.readouterr().out
    assert code == 0 and "2 run(s)" in out and "protonet-5w1s-seed0: 50 iterations" in out
    assert "estimated wall time" in out and not (tmp_path / "R.md").exists()


@pytest.mark.slow
def test_cli_train_on_glyphs_end_to_end(capsys, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "--algo", "protonet", "--task", "glyphs", "--ways", "5", "--shots", "1", "--train-ways", "10",
            "--iterations", "4", "--hidden", "16", "--eval-tasks", "20", "--val-tasks", "4", "--eval-every", "2",
            "--out", str(run_dir), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "glyphs, 5-way 1-shot: test accuracy (no adaptation)" in out and "20 fixed episodes" in out
    for name in ("training_curve.png", "episode_1shot.png", "confusion_1shot.png", "eval_1shot.json"):
        assert (run_dir / name).exists()
    assert main(["train", "--resume", "--out", str(run_dir), "--no-progress", "--no-plots"]) == 0


@pytest.mark.slow
def test_cli_reproduce_publishes_the_section_with_its_figures_beside_the_report(capsys, tmp_path):
    report = tmp_path / "docs" / "REPRODUCTION.md"
    report.parent.mkdir()
    report.write_text(SINUSOID)
    argv = ["reproduce", "omniglot", "--source", "glyphs", "--algorithms", "maml", "--settings", "5w1s",
            "--iterations", "2", "--eval-tasks", "6", "--val-tasks", "3", "--out", str(tmp_path / "runs"),
            "--report", str(report)]
    assert main(argv) == 0
    text = report.read_text()
    assert text.startswith(SINUSOID.rstrip("\n")) and "](reproduction/accuracy_vs_steps_5w1s.png)" in text
    assert (report.parent / "reproduction" / "accuracy_vs_steps_5w1s.png").exists()
    assert (tmp_path / "runs" / "REPRODUCTION.md").exists()
    assert "add up to" in text and "finished runs are reused" in text
    assert main(argv) == 0 and report.read_text().count("<!-- tinymeta:omniglot -->") == 1  # reused, replaced
