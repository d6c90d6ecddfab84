"""The benchmark harness's non-timing logic: FLOP counts, theta layout round trips, the
agreement check (on a tiny net), input generation and the report. Nothing here is timed;
PyTorch and JAX are optional (their tests skip when absent)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds benchmarks/

from benchmarks import agreement, flops, report, timing, tinymeta_side  # noqa: E402
from benchmarks.workloads import WORKLOADS, Workload, inputs_for, join_theta, make_inputs, select, split_theta  # noqa: E402

TINY = {  # tiny versions of each workload family, for the agreement check
    "maml": Workload("tiny-maml", "maml", (1, 6, 5, 1), 3, 4, 5, inner_lr=0.05, inner_steps=2),
    "fomaml": Workload("tiny-fomaml", "fomaml", (1, 6, 5, 1), 3, 4, 5, inner_lr=0.05, inner_steps=2),
    "reptile": Workload("tiny-reptile", "reptile", (1, 6, 5, 1), 3, 4, 5, inner_lr=0.05, inner_steps=3),
    "metasgd": Workload("tiny-metasgd", "metasgd", (1, 6, 5, 1), 3, 4, 5, inner_steps=1),
    "xent": Workload("tiny-xent", "maml", (7, 6, 5, 3), 2, 3, 6, n_way=3, inner_lr=0.4, inner_steps=1),
    "protonet": Workload("tiny-protonet", "protonet", (7, 6, 5, 4), 2, 6, 9, n_way=3),
}


# ------------------------------------------------------------ FLOP counts
def test_grad_count_of_a_single_layer_is_forward_plus_weight_gradient():
    # one layer: forward 2nab, dW = X^T delta 2nab, no input cotangent
    assert flops.grad((3, 4), 10) == 2 * 10 * 12 + 2 * 10 * 12


def test_grad_and_hvp_counts_of_a_two_layer_net_by_hand():
    sizes, n = (2, 3, 4), 5
    # forward 2n(6+12); backward dW 2n(6+12) and delta through layer 2 only 2n*12
    assert flops.grad(sizes, n) == 2 * n * 18 + 2 * n * 18 + 2 * n * 12
    # R-forward: hV in layer 1 (2n*6), R{h}W + hV in layer 2 (4n*12);
    # R-backward: R{dW}: 2n*6 + 4n*12; R{delta} through layer 2: 4n*12
    assert flops.hvp(sizes, n) == 2 * n * 6 + 4 * n * 12 + 2 * n * 6 + 4 * n * 12 + 4 * n * 12


def test_sinusoid_maml_step_is_about_ten_megaflops():
    # DESIGN.md section 7: "a MAML step is ~10 MFLOP" (1-40-40-1, 25 tasks, 10 + 10 points)
    w = select(["sinusoid-maml1"])[0]
    assert flops.meta_iteration(w) == 25 * (2 * flops.grad(w.sizes, 10) + flops.hvp(w.sizes, 10)) == 9_960_000


def test_meta_iteration_counts_are_consistent_across_algorithms():
    maml, fomaml, metasgd = (select([n])[0] for n in ("sinusoid-maml1", "sinusoid-fomaml1", "sinusoid-metasgd1"))
    hvps = maml.n_tasks * flops.hvp(maml.sizes, maml.n_support)
    assert flops.meta_iteration(maml) - flops.meta_iteration(fomaml) == hvps
    assert flops.meta_iteration(metasgd) == flops.meta_iteration(maml)
    reptile = select(["sinusoid-reptile5"])[0]
    assert flops.meta_iteration(reptile) == 25 * 5 * flops.grad(reptile.sizes, 10)
    w = select(["protonet-5shot-e32"])[0]
    assert flops.meta_iteration(w) == 32 * (flops.grad(w.sizes, 25 + 75) + 6 * 75 * 5 * 64)


def test_every_workload_has_a_positive_flop_count():
    assert all(flops.meta_iteration(w) > 0 for w in WORKLOADS)


# ------------------------------------------------------------ inputs and layout
def test_inputs_are_the_same_for_the_same_seed_and_differ_across_seeds():
    w = select(["omniglot-maml1-q5"])[0]
    a, b, c = inputs_for(w, 0), inputs_for(w, 0), inputs_for(w, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a.X_support, c.X_support)


@pytest.mark.parametrize("w", WORKLOADS, ids=lambda w: w.name)
def test_inputs_have_the_workload_shapes(w):
    x = make_inputs(w, np.random.default_rng(0))
    T, S, Q = w.n_tasks, w.n_support, w.n_query
    assert x.theta.shape == x.alpha.shape == (w.n_params,)
    assert x.X_support.shape == (T, S, w.sizes[0]) and x.X_query.shape == (T, Q, w.sizes[0])
    if w.n_way:
        assert x.y_support.shape == (T, S) and x.y_query.shape == (T, Q)
        assert all(np.array_equal(np.bincount(y, minlength=w.n_way), np.full(w.n_way, S // w.n_way))
                   for y in x.y_support)
    else:
        assert x.y_support.shape == (T, S, 1)


def test_split_and_join_theta_round_trip_in_tinymeta_layout():
    import tinymeta as tm

    net = tm.MLP([3, 5, 2])
    theta = net.init(np.random.default_rng(0))
    layers = split_theta(theta, net.sizes)
    for (W, b), (W2, b2) in zip(net.unflatten(theta), zip(layers[::2], layers[1::2])):
        assert np.array_equal(W, W2) and np.array_equal(b, b2)
    assert np.array_equal(join_theta(layers), theta)
    with pytest.raises(ValueError, match="theta must have shape"):
        split_theta(theta[:-1], net.sizes)


@pytest.mark.parametrize("peer", ["peer_torch", "peer_jax"])
def test_peer_parameter_conversion_round_trips(peer, monkeypatch):
    pytest.importorskip("torch" if peer == "peer_torch" else "jax")
    module = _load_peer(peer, monkeypatch)
    w = select(["omniglot-maml1-q5"])[0]
    theta = inputs_for(w, 3).theta
    params = module.to_params(theta, w.sizes)
    assert [tuple(p.shape) for p in params] == [p.shape for p in split_theta(theta, w.sizes)]
    assert np.array_equal(module.from_params(params), theta)


# ------------------------------------------------------------ agreement
def test_agreement_passes_equal_gradients_and_flags_a_wrong_one():
    g = np.random.default_rng(0).standard_normal(50)
    rows = agreement.compare({"tinymeta": (1.0, g), "jax": (1.0, g * (1 + 1e-12)), "torch-eager": (1.0, g + 1e-3)})
    by_impl = {r["impl"]: r for r in rows}
    assert {r["reference"] for r in rows} == {"tinymeta"}
    assert by_impl["jax"]["passed"] and not by_impl["torch-eager"]["passed"]
    assert not agreement.compare({"tinymeta": (1.0, g), "jax": (2.0, g)})[0]["passed"]  # the loss counts too
    assert not agreement.compare({"tinymeta": (None, g), "jax": (None, g[:-1])})[0]["passed"]
    assert agreement.compare({"jax": (None, g)}) == []


def test_agreement_falls_back_to_torch_eager_as_reference():
    g = np.ones(4)
    rows = agreement.compare({"jax": (None, g), "torch-eager": (None, g)})
    assert rows == [{"impl": "jax", "reference": "torch-eager", "grad_rel_error": 0.0, "loss_rel_error": None,
                     "passed": True}]


def _load_peer(name, monkeypatch):
    """The peer module, its library imported (JAX with x64 on; PyTorch's thread settings left alone)."""
    import importlib

    module = importlib.import_module(f"benchmarks.{name}")
    if name == "peer_jax":
        for key, value in module.environment(2).items():
            monkeypatch.setenv(key, value)
        module.load(1)
    else:
        import torch

        module.torch = torch  # not load(): it would change this test process's thread settings
    return module


def _results(side, impls, workload, inputs):
    out = {}
    for impl in impls:
        prepared = side.prepare(impl, workload, inputs)
        out[impl] = prepared.result(prepared.step())
    return out


def _installed_peers(monkeypatch):
    peers = []
    for name, library in (("peer_torch", "torch"), ("peer_jax", "jax")):
        try:
            __import__(library)
        except ImportError:
            continue
        peers.append(_load_peer(name, monkeypatch))
    return peers


@pytest.mark.parametrize("kind", sorted(TINY))
def test_peers_and_tinymeta_agree_on_a_tiny_net(kind, monkeypatch):
    import tinymeta

    w = TINY[kind]
    inputs = inputs_for(w, 7)
    results = {}
    for peer in _installed_peers(monkeypatch):
        results.update(_results(peer, peer.IMPLS, w, inputs))
    tinymeta_side.tm = tinymeta  # not load(): it would change this test process's Numba thread count
    try:
        results.update(_results(tinymeta_side, tinymeta_side.IMPLS, w, inputs))
    except tinymeta_side.Unavailable:
        pass  # tinymeta's module for this algorithm is not there yet: the peers are checked among themselves
    if len(results) < 2:
        pytest.skip("fewer than two implementations installed (PyTorch and JAX are optional)")
    rows = agreement.compare(results)
    assert len(rows) == len(results) - 1
    assert all(r["grad_rel_error"] < 1e-12 for r in rows), rows


@pytest.mark.parametrize("peer", ["peer_torch", "peer_jax"])
def test_peer_implementations_agree_with_each_other_and_see_second_order_terms(peer, monkeypatch):
    pytest.importorskip("torch" if peer == "peer_torch" else "jax")
    module = _load_peer(peer, monkeypatch)
    inputs = inputs_for(TINY["maml"], 7)
    second = _results(module, module.IMPLS, TINY["maml"], inputs)
    first = _results(module, module.IMPLS, TINY["fomaml"], inputs)
    assert all(r["passed"] for r in agreement.compare(second) + agreement.compare(first))
    # MAML and FOMAML differ by the Hessian terms: the check must see that difference
    for impl in module.IMPLS:
        assert not agreement.compare({"tinymeta": second[impl], "jax": (second[impl][0], first[impl][1])})[0]["passed"]


def test_unavailable_tinymeta_module_is_reported_not_faked(monkeypatch):
    monkeypatch.setitem(tinymeta_side.MODULES, "missing", "no_such_algorithm_module")
    with pytest.raises(tinymeta_side.Unavailable, match="not available yet"):
        tinymeta_side.algorithm_module("missing")


def test_run_collects_gradients_per_thread_count_and_fails_on_disagreement():
    from benchmarks import run

    cell = lambda impl, loss: {"impl": impl, "workload": "w", "dtype": "float64", "status": "ok", "loss": loss}
    g = np.arange(5.0)
    workers = [{"library": "tinymeta", "threads": 1, "status": "ok", "cells": [cell("tinymeta", 1.0)]},
               {"library": "jax", "threads": 1, "status": "ok", "cells": [cell("jax", 1.0)]},
               {"library": "torch", "threads": 1, "status": "not installed"},
               {"library": "jax", "threads": 2, "status": "ok", "cells": [cell("jax", 1.0)]}]
    grads = [{"tinymeta__w": g}, {"jax__w": g + 1.0}, {}, {"jax__w": g}]
    rows = run.check_agreement(workers, grads, ["w"])
    assert [(r["threads"], r["impl"], r["passed"]) for r in rows] == [(1, "jax", False)]  # 2 threads: jax alone
    failures = run.failures_of(workers + [{"library": "torch", "threads": 2, "status": "error", "note": "boom"}], rows)
    assert len(failures) == 2 and any("disagreement" in f for f in failures) and any("boom" in f for f in failures)
    assert run.failures_of(workers, [{**rows[0], "passed": True}]) == []


def test_worker_environment_sets_every_thread_variable_and_keeps_the_coretype():
    from benchmarks import run

    env = run.worker_environment("jax", 1, base={"OPENBLAS_CORETYPE": "Haswell", "OMP_NUM_THREADS": "8"})
    assert all(env[name] == "1" for name in run.THREAD_VARIABLES)
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and "intra_op_parallelism_threads=1" in env["XLA_FLAGS"]
    assert "XLA_FLAGS" not in run.worker_environment("jax", 2, base={})
    assert "JAX_PLATFORMS" not in run.worker_environment("torch", 2, base={})
    forced = run.worker_environment("tinymeta", 2, base={"OPENBLAS_CORETYPE": "Haswell"}, coretype="SkylakeX")
    assert forced["OPENBLAS_CORETYPE"] == "SkylakeX" and "OPENBLAS_CORETYPE" not in run.worker_environment("torch", 1, base={})


def test_openblas_coretype_option_is_checked_against_the_cpu(monkeypatch):
    """``--openblas-coretype`` takes a family whose instructions the CPU has, else the parser refuses it."""
    from benchmarks import machine, run

    monkeypatch.setattr(machine, "describe", lambda: {"all_flags": ["avx2", "fma"]})
    assert run.parse_args(["--openblas-coretype", "Haswell"]).openblas_coretype == "Haswell"
    assert run.parse_args([]).openblas_coretype is None
    for bad in (["--openblas-coretype", "SkylakeX"], ["--openblas-coretype", "Pentium"]):
        with pytest.raises(SystemExit):
            run.parse_args(bad)


def test_report_warns_when_tinymeta_ran_slower_blas_kernels_than_the_best_measured():
    def results(family):
        return {"workers": [{"library": "tinymeta", "blas": [{"internal_api": "openblas", "architecture": family}]}],
                "peaks": [{"threads": 1, "coretype_forced": None, "openblas_coretype": "SkylakeX",
                           "gflops": {"float32": 200.0, "float64": 90.0}},
                          {"threads": 1, "coretype_forced": "Haswell", "openblas_coretype": "Haswell",
                           "gflops": {"float32": 110.0, "float64": 55.0}},
                          {"threads": 2, "coretype_forced": "Haswell", "openblas_coretype": "Haswell",
                           "gflops": {"float32": 400.0, "float64": 55.0}}],
                "thread_environment": {"OPENBLAS_CORETYPE": family}}
    note = report._blas_family_note(results("Haswell"))
    assert "Slower BLAS kernels" in note[0] and "110" in note[0] and "200" in note[0] and "SkylakeX" in note[0]
    assert report._blas_family_note(results("SkylakeX")) == []
    assert report._blas_family_note({**results("Haswell"), "workers": []}) == []


def test_report_notes_another_cpu_or_a_machine_much_slower_or_faster_than_in_the_previous_run(tmp_path):
    from benchmarks import run

    peaks = [{"threads": 1, "gflops": {"float32": 100.0, "float64": 50.0}},
             {"threads": 2, "gflops": {"float32": 205.0, "float64": 100.0}}]
    last = tmp_path / "last_run.json"
    last.write_text(json.dumps({"date": "2026-12-02T16:14:55+00:00", "quick": False, "peaks": [
        {"threads": 1, "gflops": {"float32": 180.0, "float64": 80.0}},
        {"threads": 1, "gflops": {"float32": 210.0, "float64": 90.0}},
        {"threads": 2, "gflops": {"float32": 400.0, "float64": 180.0}}]}))
    previous = run.previous_peak(last)
    assert previous == {"date": "2026-12-02T16:14:55+00:00", "float32": 210.0, "float64": 90.0, "cpu": None}
    note = report._machine_speed_note({"quick": False, "previous_peak": previous, "peaks": peaks})
    assert "ran slower than in the previous run" in note[0] and "48% of the 210" in note[0]
    assert "2026-12-02T16:14:55" in note[0]
    faster = [{"threads": 1, "gflops": {"float32": 300.0, "float64": 50.0}}]
    assert "ran faster" in report._machine_speed_note({"quick": False, "previous_peak": previous, "peaks": faster})[0]
    similar = [{"threads": 1, "gflops": {"float32": 190.0, "float64": 50.0}}]
    assert report._machine_speed_note({"quick": False, "previous_peak": previous, "peaks": similar}) == []
    assert report._machine_speed_note({"quick": True, "previous_peak": previous, "peaks": peaks}) == []
    assert report._machine_speed_note({"quick": False, "previous_peak": None, "peaks": peaks}) == []
    # another CPU is noted whatever its speed; the same CPU, or one not recorded, only by the speed
    zen5 = {"cpu_model": "AMD EPYC", "cpu_core": "Zen 5 (family 1Ah)", "cpu_family_model": "26/2"}
    zen4 = {"cpu_model": "AMD EPYC", "cpu_core": "Zen 4 (family 19h)", "cpu_family_model": "25/17"}
    last.write_text(json.dumps({"date": "d", "quick": False,
                                "machine": zen5, "peaks": [{"threads": 1, "gflops": {"float32": 210.0, "float64": 90.0}}]}))
    previous = run.previous_peak(last)
    assert previous["cpu"] == "AMD EPYC, Zen 5 (family 1Ah), family/model 26/2"
    moved = report._machine_speed_note({"quick": False, "previous_peak": previous, "peaks": peaks, "machine": zen4})
    assert "ran on another CPU than in the previous run** (AMD EPYC, Zen 4 (family 19h), family/model 25/17; " \
           "the previous run: AMD EPYC, Zen 5" in moved[0] and "48% of the 210" in moved[0]
    assert "on another CPU" in report._machine_speed_note({"quick": False, "previous_peak": previous,
                                                           "peaks": similar, "machine": zen4})[0]
    assert report._machine_speed_note({"quick": False, "previous_peak": previous, "peaks": similar, "machine": zen5}) == []
    assert "ran slower" in report._machine_speed_note({"quick": False, "previous_peak": previous, "peaks": peaks,
                                                       "machine": {}})[0]
    for text in ("", "{", json.dumps({"date": "x", "quick": True, "peaks": []}), json.dumps({"quick": False}),
                 json.dumps({"date": "x", "quick": False, "peaks": [{"threads": 2, "gflops": {}}]}),
                 json.dumps({"date": "x", "quick": False, "machine": "zen", "peaks": peaks})):
        last.write_text(text)
        assert run.previous_peak(last) is None, text
    assert run.previous_peak(tmp_path / "missing.json") is None


def test_ab_alternates_the_sides_and_compares_best_and_median_times(tmp_path):
    from benchmarks import ab

    assert ab.order(3) == list("ABBAAB")
    key = ("sinusoid-maml1", "float32")
    runs_a = [{key: [3.0, 4.0, 5.0]}, {key: [2.0, 6.0]}]
    runs_b = [{key: [2.5, 9.0]}, {key: [2.5, 3.0]}]  # lower best in the first pair only
    (name, dtype, a_min, a_med, b_min, b_med, wins), = ab.compare(runs_a, runs_b)
    assert (name, dtype, a_min, a_med, b_min, b_med, wins) == (*key, 2.0, 4.0, 2.5, 2.75, 1)
    assert "1 of 2" in ab.table(ab.compare(runs_a, runs_b), "HEAD~1", ".", 2)
    for rev in (ab.WORKING_TREE, "HEAD"):  # a commit's tinymeta (git archive) or the working tree's
        tree = ab.extract(rev, tmp_path / rev.replace(".", "wt"))
        assert (tree / "tinymeta" / "__init__.py").is_file() and (tree / "benchmarks" / "worker.py").is_file()
        assert not list(tree.rglob("__pycache__"))


def test_machine_description_reads_cpuinfo_and_names_the_amd_core():
    from benchmarks import machine

    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n" \
           "model name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma\n\nprocessor\t: 1\n"
    cpu = machine.cpuinfo(text)
    assert cpu["model"] == "AMD EPYC" and cpu["family"] == "25" and "avx2" in cpu["flags"]
    assert machine.amd_core_family(cpu["vendor"], cpu["family"], cpu["flags"]) == "Zen 3 (family 19h)"
    assert machine.amd_core_family("AuthenticAMD", "25", ["avx512f"]).startswith("Zen 4")
    assert machine.amd_core_family("GenuineIntel", "6", []) == ""


# ------------------------------------------------------------ report
def test_report_marks_missing_peers_unavailable_modules_and_failures():
    w = select(["sinusoid-maml1"])[0]
    timing = {"median": 1e-3, "q1": 0.9e-3, "q3": 1.1e-3, "min": 0.8e-3, "max": 1.2e-3, "cpu_per_wall": 1.0}
    ok = {"impl": "tinymeta", "workload": w.name, "dtype": "float64", "status": "ok", "timing": timing, "loss": 1.0}
    results = {
        "date": "2026-01-01T00:00:00+00:00", "command": "python -m benchmarks.run", "quick": True, "elapsed_s": 1.0,
        "dtypes": ["float64"], "threads": [1], "workloads": [w.name],
        "machine": {"cpu_model": "CPU", "cpu_vendor": "V", "cpu_family_model": "1/2", "logical_cpus": 2,
                    "usable_cpus": 2, "flags": ["avx2"], "memory_gib": 1.0, "os": "Linux", "python": "3.11",
                    "git_commit": "abc", "load_average": (0.0, 0.0, 0.0)},
        "peaks": [{"threads": 1, "coretype_forced": None, "n": 64, "gflops": {"float32": 10.0, "float64": 5.0},
                   "openblas_coretype": "Haswell"}],
        "workers": [{"library": "tinymeta", "threads": 1, "status": "ok", "versions": {"tinymeta": "0"},
                     "thread_control": "numba", "cells": [ok]},
                    {"library": "torch", "threads": 1, "status": "not installed", "note": "torch not installed"},
                    {"library": "jax", "threads": 1, "status": "ok", "versions": {"jax": "0"}, "thread_control": "x",
                     "cells": [{**ok, "impl": "jax", "timing": {**timing, "median": 2e-3}}]}],
        "agreement": [{"workload": w.name, "threads": 1, "impl": "jax", "reference": "tinymeta",
                       "grad_rel_error": 1e-3, "loss_rel_error": 0.0, "passed": False}],
        "failures": ["meta-gradient disagreement: jax"], "thread_environment": {"OPENBLAS_CORETYPE": "(not set)"},
    }
    text = report.render(results)
    assert "not installed" in text and "QUICK RUN" in text and "**FAILED**" in text and "**FAIL**" in text
    assert "2,000.0 (2.00x)" in text  # jax's median beside tinymeta's speed-up over it
    assert f"{flops.meta_iteration(w) / 1e6:,.2f} M" in text


# ---------------------------------------------------------------- timing
def test_warm_up_lasts_its_calls_and_its_seconds_before_any_block():
    """The warm-up runs until both ``warmup`` calls and ``warmup_s`` seconds are done (a library
    that settles over its first calls is timed settled); the first call's output is returned."""
    clock = {"t": 0.0}
    calls = []

    def step():  # each call "takes" 1/64 s of a fake clock (binary fractions: exact sums)
        calls.append(clock["t"])
        clock["t"] += 1 / 64
        return len(calls)

    settings = timing.Settings(repeats=2, min_block_s=1 / 32, max_cell_s=10.0, min_repeats=1, warmup=3,
                               warmup_s=1 / 8)
    real = timing.time.perf_counter
    timing.time.perf_counter = lambda: clock["t"]
    try:
        first, summary = timing.measure(step, settings)
    finally:
        timing.time.perf_counter = real
    assert first == 1
    warm = 1 + 8  # the first call, then 1/8 s of 1/64 s calls (more than the 3 calls asked for)
    assert summary["number"] == 2 and summary["median"] == 1 / 64
    assert len(calls) == warm + 1 + 2 * 2  # warm-up, calibration, 2 blocks of 2


def test_rounds_alternate_the_library_order_and_pool_their_repeats():
    """--rounds 2 runs A B C C B A per thread count; each cell's timing pools both rounds' repeats;
    a round that failed, or a cell that failed in one round, is what the merged record shows."""
    from benchmarks import run

    assert run.worker_order(["tinymeta", "torch", "jax"], 2) == ["tinymeta", "torch", "jax", "jax", "torch", "tinymeta"]
    assert run.worker_order(["a", "b"], 3) == ["a", "b", "b", "a", "a", "b"]
    assert run.worker_order(["a", "b"], 1) == ["a", "b"]

    def record(samples, status="ok"):
        cell = {"impl": "tinymeta", "workload": "w", "dtype": "float32", "status": status}
        if status == "ok":
            cell["timing"] = timing.summarise(samples, [1.0], 10)
        return {"library": "tinymeta", "threads": 1, "status": "ok", "cells": [cell], "wall_s": 2.0}

    fast, slow = record([1.0, 1.1, 1.2]), record([3.0, 3.1, 3.2])
    merged = run.merge_rounds([fast, slow])
    t = merged["cells"][0]["timing"]
    assert merged["rounds"] == 2 and merged["wall_s"] == 4.0 and t["number"] == 20
    assert sorted(t["samples"]) == [1.0, 1.1, 1.2, 3.0, 3.1, 3.2] and t["median"] == pytest.approx(2.1)
    assert t["min"] == 1.0 and t["max"] == 3.2
    assert run.merge_rounds([fast]) is fast
    broken = record([], status="error")
    assert run.merge_rounds([fast, broken])["cells"][0]["status"] == "error"
    dead = {"library": "tinymeta", "threads": 1, "status": "error", "note": "boom"}
    assert run.merge_rounds([fast, dead]) is dead


def test_run_with_two_rounds_calls_the_workers_in_alternating_order(monkeypatch, tmp_path):
    from benchmarks import run

    calls = []

    def fake_worker(library, threads, config_path, out_prefix, coretype=None):
        calls.append((threads, library, coretype))
        return {"library": library, "threads": threads, "status": "not installed"}, {}

    monkeypatch.setattr(run, "run_worker", fake_worker)
    monkeypatch.setattr(run, "measure_peaks", lambda *a: {})
    out = tmp_path / "B.md"
    run.main(["--quick", "--workloads", "sinusoid-maml1", "--libraries", "tinymeta", "jax",
              "--threads", "1", "--rounds", "2", "--output", str(out), "--json", ""])
    assert calls == [(1, "tinymeta", None), (1, "jax", None), (1, "jax", None), (1, "tinymeta", None)]
    assert "in the order tinymeta jax jax tinymeta" in out.read_text()
    calls.clear()  # --openblas-coretype reaches every worker and the report
    monkeypatch.setattr(run.peak, "candidate_coretypes", lambda flags: ["Haswell"])
    run.main(["--quick", "--workloads", "sinusoid-maml1", "--libraries", "tinymeta", "--threads", "1",
              "--openblas-coretype", "Haswell", "--output", str(out), "--json", ""])
    assert calls == [(1, "tinymeta", "Haswell")] and "`OPENBLAS_CORETYPE` in the workers: Haswell" in out.read_text()


def test_targets_are_met_missed_or_beyond_the_measured_peak():
    """A ratio at or above the target is met; below it, the target is beyond the peak when the time it
    needs would run the workload's textbook FLOPs faster than the measured matmul peak; a missing
    peer leaves it unmeasured."""
    from benchmarks import targets

    def cell(impl, name, dtype, seconds):
        return {"impl": impl, "workload": name, "dtype": dtype, "status": "ok", "timing": {"median": seconds}}

    proto = next(w for w in WORKLOADS if w.name == "protonet-5shot-e32")
    gflop = flops.meta_iteration(proto) / 1e9  # ~3.4
    results = {"workloads": ["sinusoid-maml1", "protonet-5shot-e32"], "dtypes": ["float32", "float64"],
               "threads": [1, 2], "peaks": [{"threads": 1, "gflops": {"float32": 200.0, "float64": 100.0}},
                                            {"threads": 2, "gflops": {"float32": 400.0, "float64": 200.0}}]}
    cells = {}
    for impl, name, dtype, threads, seconds in [
            ("tinymeta", "sinusoid-maml1", "float32", 1, 300e-6), ("jax", "sinusoid-maml1", "float32", 1, 250e-6),
            ("torch-eager", "sinusoid-maml1", "float32", 1, 13e-3), ("tinymeta", "sinusoid-maml1", "float32", 2, 150e-6),
            ("tinymeta", "protonet-5shot-e32", "float32", 1, gflop / 160.0),  # 80% of the peak
            ("jax", "protonet-5shot-e32", "float32", 1, gflop / 170.0),  # 1.5x it needs 127% of the peak
            ("tinymeta", "protonet-5shot-e32", "float64", 1, gflop / 50.0),
            ("jax", "protonet-5shot-e32", "float64", 1, gflop / 40.0),  # 1.5x it needs 60%: reachable
            ("tinymeta", "protonet-5shot-e32", "float32", 2, gflop / 250.0)]:
        cells[(impl, name, dtype, threads)] = cell(impl, name, dtype, seconds)
    rows = targets.check(results, cells, report._peak)
    jax_2x, eager_40x, _, _, proto_15x, threads_17x = (t.label for t in targets.TARGETS)
    row = {(r["target"], r["workload"], r["dtype"]): r for r in rows}
    jax = row[(jax_2x, "sinusoid-maml1", "float32")]
    assert jax["threads"] == 1 and jax["measured"] == pytest.approx(250 / 300) and jax["status"] == targets.MISSED
    assert jax["needed_s"] == pytest.approx(125e-6)
    assert jax["share"] == pytest.approx(flops.meta_iteration(WORKLOADS[0]) / 125e-6 / 200e9)
    assert row[(jax_2x, "sinusoid-maml1", "float64")]["status"] == targets.UNMEASURED
    eager = row[(eager_40x, "sinusoid-maml1", "float32")]
    assert eager["measured"] == pytest.approx(13e-3 / 300e-6) and eager["status"] == targets.MET
    p32, p64 = row[(proto_15x, "protonet-5shot-e32", "float32")], row[(proto_15x, "protonet-5shot-e32", "float64")]
    assert p32["status"] == targets.BEYOND and p32["share"] == pytest.approx(170 * 1.5 / 200)
    assert p64["status"] == targets.MISSED and p64["share"] == pytest.approx(40 * 1.5 / 100)
    two, two_p = row[(threads_17x, "sinusoid-maml1", "float32")], row[(threads_17x, "protonet-5shot-e32", "float32")]
    assert two["threads"] == 2 and two["measured"] == pytest.approx(2.0) and two["status"] == targets.MET
    assert two_p["measured"] == pytest.approx(250 / 160) and two_p["status"] == targets.MISSED
    assert two_p["share"] == pytest.approx(gflop * 1e9 / (gflop / 160 / 1.7) / 400e9)
    text = "\n".join(targets.render(targets.check(results, cells, report._peak)))
    assert "**missed: needs more than the peak**" in text and "of which 1 needs more than the measured peak" in text
    assert "Met: 2 of 10. Missed: 4, of which 1 needs" in text and "Not measured: 4." in text  # the float64 rows without a peer or 2 threads
