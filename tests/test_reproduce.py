"""``reproduce sinusoid``: the plan of runs, a smoke run end to end, reuse on a second call."""
import pytest

from tinymeta import registry
from tinymeta.reproduce import PUBLISHED_TABLE2, reproduce_sinusoid, sinusoid_plan


def test_plan_covers_every_available_algorithm_and_seed_once():
    specs = sinusoid_plan(seeds=(0, 1), iterations=100)
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    for algo in (name for name, a in registry.ALGORITHMS.items() if a.kind == "gradient"):  # metric: images only
        for seed in (0, 1):
            spec = next(s for s in specs if s.name == f"{algo}-K10-seed{seed}")
            assert 5 in spec.eval_shots and spec.config.shots == spec.config.query == 10
            assert spec.config.iterations == 100 and spec.config.meta_batch == 25
    maml = next(s for s in specs if s.name == "maml-K10-seed0")
    assert maml.eval_shots == (5, 10)  # the Table 2 model also serves the 10-shot study
    assert {s.name for s in specs if s.config.algo == "maml"} >= {"maml-K5-seed0", "maml-K20-seed1"}


def test_plan_refuses_unknown_algorithms():
    with pytest.raises(ValueError, match="algo must be one of"):
        sinusoid_plan(algorithms=("maml", "nope"))


@pytest.mark.slow
def test_smoke_reproduction_writes_the_report_and_reuses_finished_runs(tmp_path):
    out = tmp_path / "rep"
    path = reproduce_sinusoid(out, algorithms=("maml", "pretrained"), seeds=(0,), iterations=3, eval_tasks=20,
                              val_tasks=10, jobs=1)
    text = path.read_text()
    assert "Smoke run: 3 meta-iterations" in text
    for value in (*PUBLISHED_TABLE2["maml"].values(), *PUBLISHED_TABLE2["pretrained"].values()):
        assert f"{value:.2f}" in text
    assert "| maml, ours |" in text and "| pretrained (step " in text
    assert "| maml | 20 |" in text and "of 20 |" in text
    for name in ("sinusoid_error_vs_steps.png", "sinusoid_adaptation.png"):
        assert (out / name).stat().st_size > 10_000 and f"]({name})" in text
    stamp = (out / "maml-K10-seed0" / "checkpoint.npz").stat().st_mtime_ns
    reproduce_sinusoid(out, algorithms=("maml", "pretrained"), seeds=(0,), iterations=3, eval_tasks=20, val_tasks=10,
                       jobs=1)
    assert (out / "maml-K10-seed0" / "checkpoint.npz").stat().st_mtime_ns == stamp


def test_a_different_run_in_the_output_directory_is_refused(tmp_path):
    reproduce_sinusoid(tmp_path, algorithms=("fomaml",), seeds=(0,), iterations=2, eval_tasks=5, val_tasks=5, jobs=1)
    with pytest.raises(ValueError, match="another configuration"):
        reproduce_sinusoid(tmp_path, algorithms=("fomaml",), seeds=(0,), iterations=3, eval_tasks=5, val_tasks=5, jobs=1)


@pytest.mark.slow
def test_two_processes_give_the_same_numbers_as_one(tmp_path):
    kwargs = dict(algorithms=("fomaml",), seeds=(0, 1), iterations=3, eval_tasks=10, val_tasks=5)
    one = reproduce_sinusoid(tmp_path / "one", jobs=1, **kwargs).read_text()
    two = reproduce_sinusoid(tmp_path / "two", jobs=2, **kwargs).read_text()

    def table(text):  # the result rows, without wall times
        rows = [r for r in text.splitlines() if r.startswith("| fomaml")]
        return [r.rsplit("|", 3)[0] for r in rows]

    assert table(one) == table(two) and len(table(one)) == 4  # main table, median table, two runs


def test_budgets_shorten_or_thin_out_an_algorithm_and_are_validated():
    from tinymeta.reproduce import parse_budget

    budgets = (parse_budget("imaml=300x1"), parse_budget("reptile=200"))
    specs = sinusoid_plan(algorithms=("maml", "imaml", "reptile"), seeds=(0, 1), iterations=1000, budgets=budgets)
    by_name = {s.name: s.config for s in specs}
    assert by_name["maml-K10-seed1"].iterations == 1000
    assert [n for n in by_name if n.startswith("imaml")] == ["imaml-K10-seed0"]
    assert by_name["imaml-K10-seed0"].iterations == 300
    assert {by_name[f"reptile-K10-seed{s}"].iterations for s in (0, 1)} == {200}
    for bad in ("imaml", "imaml=x1", "imaml=0", "nope=10", "imaml=10x0"):
        with pytest.raises(ValueError):
            parse_budget(bad)
    with pytest.raises(ValueError, match="image protocol"):
        sinusoid_plan(algorithms=("maml",), budgets=(parse_budget("maml@5w1s=10"),))


def test_publish_section_copies_figures_and_keeps_the_other_sections(tmp_path):
    from tinymeta.report import publish_section, write_section

    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "curve.png").write_bytes(b"\x89PNG fake")
    (runs / "REPRODUCTION.md").write_text("# Sinusoid\n\n| maml | 0.67 |\n\n![curve.png](curve.png)\n")
    shared = tmp_path / "repo" / "REPRODUCTION.md"
    shared.parent.mkdir()
    write_section(shared, "omniglot", "# Images\n\nimage rows")
    publish_section(shared, "sinusoid", runs / "REPRODUCTION.md")
    text = shared.read_text()
    assert "image rows" in text and "| maml | 0.67 |" in text
    assert "![curve.png](reproduction/curve.png)" in text
    assert (shared.parent / "reproduction" / "curve.png").read_bytes() == b"\x89PNG fake"
    publish_section(shared, "sinusoid", runs / "REPRODUCTION.md")  # again: replaced, not appended
    assert shared.read_text() == text
