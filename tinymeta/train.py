r"""One meta-training loop for every algorithm of ``tinymeta.registry``.

Each iteration draws a meta-batch of tasks from the explicit generator,
asks the algorithm for its meta-loss and meta-gradient (the protocol of
``tinymeta/algorithms/__init__.py``), optionally clips the gradient, and
applies the outer optimizer at the scheduled learning rate:

.. math::
    (\mathcal L_t, g_t) = \texttt{meta\_step}(\theta_t, \mathcal B_t),\qquad
    \theta_{t+1} = \texttt{update}(\theta_t, \operatorname{clip}(g_t), \eta_t)

with :math:`\eta_t = \eta` (constant), :math:`\eta (1 - t/N)` (linear, Reptile's
annealing to 0) or :math:`\eta\, \gamma^{\lfloor t/s \rfloor}` (step; ProtoNet
halves every 2000 episodes). A run directory holds ``config.json``,
``log.jsonl`` (one JSON record per line), ``checkpoint.npz`` (see
``tinymeta.checkpoint``) and, after evaluation, ``eval_<k>shot.json`` and
plots. ``resume`` continues a run exactly: the same seed gives bit-identical
parameters whether or not the run was interrupted.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from . import checkpoint, optim, registry
from . import validation as val
from .config import TrainConfig
from .evaluate import evaluate

CHECKPOINT, LOG, CONFIG = "checkpoint.npz", "log.jsonl", "config.json"
OUTPUTS = (CHECKPOINT, LOG, CONFIG)  # what a fresh run replaces, with the files DERIVED from them
DERIVED = ("eval_*shot.json", "training_curve.png", "adaptation.png", "error_vs_steps_*shot.png",
           "episode_*shot.png", "confusion_*shot.png")


class TrainingStopped(RuntimeError):
    """Training cannot go on (the algorithm raised a RuntimeError); the last good checkpoint is kept."""


class TrainingDiverged(TrainingStopped):
    """The meta-loss, the meta-gradient or the parameters became non-finite."""


class TrainResult(NamedTuple):
    """``status`` is "finished", "interrupted" (SIGINT, SIGTERM or ``should_stop``) or "paused"
    (``until`` reached); ``signum`` is the signal that interrupted, if one did."""

    status: str
    iteration: int
    params: dict
    seconds: float
    run_dir: Path
    signum: int | None = None


def learning_rate(config: TrainConfig, t: int) -> float:
    """The outer learning rate of update ``t = 0 .. iterations - 1``."""
    if config.schedule == "linear":
        return config.outer_lr * (1.0 - t / config.iterations)
    if config.schedule == "step":
        return config.outer_lr * config.lr_step_factor ** (t // config.lr_step_every)
    return config.outer_lr


def make_optimizer(config: TrainConfig):
    """``optim.Adam`` or ``optim.SGD`` at ``outer_lr`` (the schedule passes its own lr per step)."""
    return optim.Adam(config.outer_lr) if config.optimizer == "adam" else optim.SGD(config.outer_lr)


def init_state(config: TrainConfig):
    """Fresh ``(params, opt_state, data_rng)`` from ``config.seed``.

    The seed's generator spawns two streams: one initialises the
    parameters (``init_params``, then, unless ``config.init`` is
    "algorithm", ``theta`` is redrawn with the scheme ``config.init``), the
    other draws every meta-batch.
    """
    init_rng, data_rng = np.random.default_rng(config.seed).spawn(2)
    net, algo = config.net(), registry.algorithm(config.algo)
    params = algo.module.init_params(net, init_rng, config.algorithm_config())
    if config.init != "algorithm":
        if np.shape(params.get("theta")) != (net.n_params,):
            raise ValueError(f"init {config.init!r} redraws theta of shape ({net.n_params},), but "
                             f"{config.algo}'s theta has shape {np.shape(params.get('theta'))}; use init='algorithm'")
        params = {**params, "theta": net.init(init_rng, scheme=config.init)}
    return params, make_optimizer(config).init(params), data_rng


DIVERGENCE_HINT = ("Hint: lower the outer learning rate (--outer-lr) or the algorithm's inner step size "
                   "(--set inner_lr=...), or clip the meta-gradient's norm (--clip-norm).")


def _last_good(run_dir, last_saved):
    return f"{run_dir / CHECKPOINT} (iteration {last_saved})" if last_saved is not None else "none was saved"


def _check_finite(iteration, loss, grads, params, run_dir, last_saved):
    problems = [] if math.isfinite(loss) else [f"the meta-loss is {loss}"]
    for kind, arrays in (("meta-gradient", grads), ("parameter", params)):
        problems += [f"the {kind} {k!r} has {int(np.size(v) - np.isfinite(v).sum())} non-finite entries"
                     for k, v in arrays.items() if not val.all_finite(np.asarray(v))]
        if problems:
            break
    if problems:
        raise TrainingDiverged(f"training stopped at iteration {iteration}: {problems[0]}. "
                               f"Last good checkpoint: {_last_good(run_dir, last_saved)}. {DIVERGENCE_HINT}")


class _StopRequest:
    """On SIGINT or SIGTERM, set ``requested`` and ``signum`` (the loop then saves and returns);
    a second signal of the same kind gets the handler that was there before."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested, self.signum, self.previous = False, None, {}

    def _handle(self, signum, frame):
        self.requested, self.signum = True, signum
        signal.signal(signum, self.previous[signum])

    def __enter__(self):
        if self.enabled:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _prepare(run_dir: Path, config, resume: bool, overwrite: bool):
    path = run_dir / CHECKPOINT
    if run_dir.is_dir():  # a writer killed mid-write leaves its temporary; the target itself is whole
        checkpoint.remove_stale_temporaries(run_dir, OUTPUTS)
    if resume:
        if not path.exists():
            raise FileNotFoundError(f"resume needs a checkpoint, and {path} does not exist")
        state, saved = _load_checked(path)
        if config is not None and config != saved:
            raise ValueError(f"config differs from the one saved in {path}; resume takes the saved one "
                             f"(pass config=None), or start a new run")
        # the log keeps only what the checkpoint has seen: later records are recomputed identically
        records = [r for r in read_log(run_dir) if r["iteration"] <= state["scalars"]["iteration"]]
        checkpoint.atomic_write(run_dir / LOG, "".join(json.dumps(r) + "\n" for r in records).encode())
        return saved, state
    if config is None:
        raise ValueError("config is required unless resume=True")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{run_dir} already holds a run; resume it (resume=True; tinymeta train --resume) "
                              f"or replace it (overwrite=True; --overwrite)")
    run_dir.mkdir(parents=True, exist_ok=True)
    for p in [*(run_dir / name for name in OUTPUTS), *(p for pattern in DERIVED for p in run_dir.glob(pattern))]:
        if p.exists():
            p.unlink()
    checkpoint.write_json(run_dir / CONFIG, config.to_dict())
    params, opt_state, rng = init_state(config)
    scalars = {"iteration": 0, "seconds": 0.0, "loss_sum": 0.0, "loss_count": 0, "grad_norm": 0.0}
    return config, {"params": params, "opt_state": opt_state, "rng": rng, "scalars": scalars}


def _load_checked(path):
    """``(state, config)`` of a verified checkpoint whose arrays fit its own config's network."""
    state = checkpoint.load(path)
    try:
        config = TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError) as err:
        raise checkpoint.CorruptCheckpoint(f"{path} holds an invalid config: {err}") from None
    params, opt_state, _ = init_state(config)
    checkpoint.check_like(state, params, opt_state, path)
    scalars = state["scalars"]
    it = scalars.get("iteration") if isinstance(scalars, dict) else None
    if (isinstance(it, bool) or not isinstance(it, int) or not 0 <= it <= config.iterations
            or not all(isinstance(scalars.get(k), (int, float)) for k in ("seconds", "loss_sum", "loss_count"))):
        raise checkpoint.CorruptCheckpoint(f"{path} holds invalid counters {scalars!r}")
    return state, config


def read_log(run_dir) -> list:
    """The records of ``run_dir/log.jsonl`` (empty if there is none)."""
    path = Path(run_dir) / LOG
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    records = []
    for k, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if k == len(lines) - 1 and not line.endswith("\n"):  # torn by a kill mid-write: never checkpointed
                break
            raise ValueError(f"{path} line {k + 1} is not a JSON record ({err}); the log is corrupted") from None
    return records


def train(run_dir, config: TrainConfig | None = None, *, resume=False, overwrite=False, until=None,
          progress=True, handle_sigint=True, should_stop=None) -> TrainResult:
    """Meta-train ``config`` in ``run_dir`` (or resume the run saved there).

    Parameters
    ----------
    run_dir : path of the run directory (created if needed)
    config : TrainConfig, or None with ``resume=True`` (the saved config is used)
    resume : continue from ``run_dir/checkpoint.npz``
    overwrite : replace an existing run instead of refusing to
    until : int or None, stop (with a checkpoint) after this iteration; the run can be resumed
    progress : show a tqdm bar with the running meta-loss
    handle_sigint : on Ctrl-C or SIGTERM, save a checkpoint and return with status "interrupted"
    should_stop : callable returning True to stop the same way (checked every iteration), or None

    Raises
    ------
    TrainingDiverged : a non-finite meta-loss, meta-gradient or parameter; the last good
        checkpoint stays in place.
    TrainingStopped : the algorithm's meta_step raised a RuntimeError (same checkpoint rule).
    """
    run_dir = Path(run_dir)
    config, state = _prepare(run_dir, config, resume, overwrite)
    net, algo, tasks = config.net(), registry.algorithm(config.algo), config.task_family()
    module, algo_config, opt = algo.module, config.algorithm_config(), make_optimizer(config)
    params, opt_state, rng, sc = state["params"], state["opt_state"], state["rng"], dict(state["scalars"])
    val_batch = tasks.fixed_tasks("val", config.eval_shots, config.val_tasks, config.eval_query, config.dtype).batch
    stop_at = config.iterations if until is None else min(int(until), config.iterations)
    last_saved = sc["iteration"] if resume else None
    log = open(run_dir / LOG, "a", encoding="utf-8")

    def write(record):
        log.write(json.dumps(record) + "\n")
        log.flush()

    def validate(iteration):
        s = evaluate(net, module, params, algo_config, val_batch, config.eval_steps).to_json()
        write({"kind": "val", "iteration": iteration, **s})

    def save():
        checkpoint.save(run_dir / CHECKPOINT, params, opt_state, rng, config.to_dict(), sc)

    status = "finished"
    bar = tqdm(total=config.iterations, initial=sc["iteration"], disable=not progress, dynamic_ncols=True,
               desc=f"{config.algo} on {config.task}", unit="it", mininterval=0.5)
    try:
        with _StopRequest(handle_sigint) as stop:
            start = time.perf_counter() - sc["seconds"]
            if sc["iteration"] == 0 and config.eval_every:
                validate(0)
            while sc["iteration"] < stop_at:
                t = sc["iteration"]
                batch = tasks.sample(rng, config.meta_batch, config.shots, config.query, config.dtype).batch
                with np.errstate(over="ignore", invalid="ignore"):  # non-finite values are caught below
                    try:
                        loss, grads = module.meta_step(net, params, batch, algo_config)
                    except FloatingPointError as err:  # finite params and tasks, non-finite values inside the step
                        raise TrainingDiverged(f"training stopped at iteration {t + 1}: {config.algo}'s meta_step "
                                               f"diverged inside (values computed from finite parameters "
                                               f"overflowed): {err}. Last good checkpoint: "
                                               f"{_last_good(run_dir, last_saved)}. {DIVERGENCE_HINT}") from err
                    except RuntimeError as err:  # e.g. an inner solver that did not converge
                        raise TrainingStopped(f"training stopped at iteration {t + 1}: {config.algo}'s meta_step "
                                              f"raised {type(err).__name__}: {err}. Last good checkpoint: "
                                              f"{_last_good(run_dir, last_saved)}.") from err
                    loss = float(loss)
                    sc["grad_norm"] = optim.global_norm(grads)  # not finite if an entry is not, or squares overflow
                    if not (math.isfinite(sc["grad_norm"]) and math.isfinite(loss)):
                        _check_finite(t + 1, loss, grads, {}, run_dir, last_saved)  # a non-finite loss or entry
                        raise TrainingDiverged(
                            f"training stopped at iteration {t + 1}: the meta-gradient's norm overflowed (largest "
                            f"entry {max(float(np.abs(g).max()) for g in grads.values()):.3g}). Last good "
                            f"checkpoint: {_last_good(run_dir, last_saved)}. {DIVERGENCE_HINT}")
                    if config.clip_norm is not None:
                        grads = optim.clip_by_global_norm(grads, config.clip_norm)
                    params, opt_state = opt.update(params, grads, opt_state, lr=learning_rate(config, t))
                _check_finite(t + 1, loss, {}, params, run_dir, last_saved)
                sc["iteration"], sc["loss_sum"], sc["loss_count"] = t + 1, sc["loss_sum"] + loss, sc["loss_count"] + 1
                sc["seconds"] = time.perf_counter() - start
                it = sc["iteration"]
                bar.update(1)
                if it % config.log_every == 0 or it == config.iterations:
                    mean = sc["loss_sum"] / sc["loss_count"]
                    write({"kind": "train", "iteration": it, "meta_loss": mean, "grad_norm": sc["grad_norm"],
                           "lr": learning_rate(config, t), "seconds": sc["seconds"]})
                    sc["loss_sum"], sc["loss_count"] = 0.0, 0
                    bar.set_postfix(meta_loss=f"{mean:.4g}", refresh=False)
                if config.eval_every and (it % config.eval_every == 0 or it == config.iterations):
                    validate(it)
                    sc["seconds"] = time.perf_counter() - start
                halt = stop.requested or (should_stop is not None and should_stop())
                if it % config.checkpoint_every == 0 or it == stop_at or halt:
                    save()
                    last_saved = it
                if halt:
                    status = "interrupted"
                    break
            if status == "finished" and sc["iteration"] < config.iterations:
                status = "paused"
            if last_saved != sc["iteration"]:  # e.g. resuming a finished run
                save()
    except TrainingStopped as err:
        write({"kind": "diverged" if isinstance(err, TrainingDiverged) else "stopped",
               "iteration": sc["iteration"] + 1, "message": str(err)})
        raise
    finally:
        bar.close()
        log.close()
    return TrainResult(status, sc["iteration"], params, sc["seconds"], run_dir, stop.signum)


def load_run(run_dir):
    """``(config, params, iteration, seconds)`` of the run saved in ``run_dir``."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} holds no checkpoint ({CHECKPOINT}); train a run there first")
    state, config = _load_checked(path)
    return (config, state["params"], state["scalars"]["iteration"],
            state["scalars"]["seconds"])


