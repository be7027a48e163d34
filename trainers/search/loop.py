"""The DARTS search loop: epochs of search steps, and the files each epoch hands on.

    run(configs.search.digits().replace(epochs=2), "/tmp/search")

writes into the work directory `config.json` (the resolved config),
`data.json` (the data set's spec: normalisation, class names), `epoch_{N}.json` (architecture, softmaxed alphas and metrics after epoch N,
counted from 0 as NNI does), `alphas.jsonl` (the raw alphas after every
epoch), `cells.png` (the supernet's cells, redrawn every epoch), `tensorboard/`,
`checkpoints/` (resumable state) and finally `genotype.json` (the supernet's
genotype) or `architecture.json` (a user choice model's decisions). The step
itself is `trainer.py`; position, checkpoints and the write policy are the shared
run skeleton (`trainers.runtime.run`). Each epoch's metrics carry the collapse
monitor's values (`monitor.py`); DARTS+ early stopping (`stopping.py`) may end the
search before `epochs`: the epoch_N.json of that epoch then says why ("early_stop"),
and the result is the architecture from before the trigger.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path

import keras
import tensorflow as tf

from configs import SearchConfig
from darts_tf import search_space
from darts_tf.genotype import Genotype, edge_weights, softmax
from trainers.runtime import distribute, run as run_lib
from trainers.runtime.progress import Progress, epoch_line
from trainers.search.monitor import CollapseMonitor
from trainers.search.stopping import EarlyStopping
from trainers.search.trainer import METRICS, SearchTrainer

logger = logging.getLogger(__name__)
MONITOR = ("hessian_eigenvalue", "hessian_residual", "skip_connect_normal",
           "skip_connect_reduce")  # monitor.py


@dataclasses.dataclass
class SearchResult:
    """What `run` returns (the same is on disk in the work directory)."""
    architecture: dict          # genotype dict or choice decisions (before an early stop's trigger)
    alphas: dict                # raw alphas by variable path in the model (numpy arrays)
    history: list               # one dict of metrics per epoch
    global_step: int
    resumed_from_step: int | None
    step_traces: int            # times the step function was traced in this process (1)
    workdir: str
    stopped: dict | None = None  # why DARTS+ early stopping ended the search (None: it did not)
    step_loads: int = 0         # step functions loaded from the step cache instead (0 or 1)


def run(config: SearchConfig, workdir: str, model_fn=None, data_fn=None) -> SearchResult:
    """Runs (or resumes) a search; see the module docstring for the files written.

    Args:
      config: the search config (a dict is validated into one).
      workdir: output directory; a checkpoint there is resumed.
      model_fn: builds the searchable model (default: `darts_tf.Supernet` from the config and
        the data set's spec).
      data_fn: epoch -> (weights_ds, alphas_ds) of global (images, labels) batches, the same
        order for the same epoch (default: `trainers.data.search_data`).

    Raises:
      ConfigError: an invalid config value (raised before anything is written).
      RunMismatchError: the work directory holds another search.
      DataError: the data set is unknown or not prepared.
      DivergedError: the loss became NaN/inf; no checkpoint is written after that step.
    """
    config = SearchConfig.coerce(config)
    files = {} if data_fn else _data_files(config)
    run_lib.check_same_run(config, workdir, files)
    with distribute.op_determinism(config.deterministic):
        return _run(config, Path(workdir), model_fn, data_fn, files)


def _data_files(config: SearchConfig) -> dict[str, str]:
    """{"data.json": the data set's spec}: its normalisation and class names, kept with
    the run (a resumed run on changed data is refused)."""
    from trainers import data  # pylint: disable=import-outside-toplevel

    return {"data.json": data.get_spec(config.dataset, config.data_dir,
                                       config.image_size).to_json()}


def _default_model_fn(config: SearchConfig):
    import darts_tf  # pylint: disable=import-outside-toplevel
    from trainers import data  # pylint: disable=import-outside-toplevel

    spec = data.get_spec(config.dataset, config.data_dir, config.image_size)
    return functools.partial(
        darts_tf.Supernet, num_classes=spec.num_classes, init_channels=config.init_channels,
        num_cells=config.num_cells, num_nodes=config.num_nodes,
        stem_multiplier=config.stem_multiplier, input_channels=spec.image_shape[-1],
        **config.supernet_options())


def _default_data_fn(config: SearchConfig):
    from trainers import data  # pylint: disable=import-outside-toplevel

    return lambda epoch: data.search_data(
        config.dataset, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
        data_dir=config.data_dir, limit=config.data_limit, image_size=config.image_size)


@dataclasses.dataclass
class _Search:
    """A search's parts, restored from its checkpoint if there is one (`_prepare`)."""
    trainer: SearchTrainer
    state: run_lib.RunState
    monitor: CollapseMonitor | None
    stopping: EarlyStopping
    resumed_from: int | None


def _run(config: SearchConfig, workdir: Path, model_fn, data_fn, files) -> SearchResult:
    data_fn = data_fn or _default_data_fn(config)
    search = _prepare(config, workdir, model_fn, data_fn, files)
    trainer, state = search.trainer, search.state
    history = [_read_json(workdir / f"epoch_{e}.json")["metrics"] for e in range(state.epoch)
               ] if state.chief else []
    writer = state.summary_writer()
    with writer.as_default():
        while state.epoch < config.epochs and not search.stopping.stopped:
            _run_epoch(trainer, state, data_fn)
            history.append(_finish_epoch(trainer, state, search.monitor, search.stopping))
    writer.close()
    architecture = _conclude(search)
    return SearchResult(architecture, trainer.arch_values(), history, state.global_step,
                        search.resumed_from, trainer.step_traces, str(workdir),
                        search.stopping.stop_record, trainer.step_loads)


def _prepare(config: SearchConfig, workdir: Path, model_fn, data_fn, files=None) -> _Search:
    """Builds the trainer, the guards and the run state; writes config.json (and `files`,
    {name: text}, e.g. data.json); restores."""
    keras.utils.set_random_seed(config.seed)
    strategy = distribute.make_strategy(config.strategy)
    model_fn = model_fn or _default_model_fn(config)
    input_shape = tuple(data_fn(0)[0].element_spec[0].shape[1:])
    trainer = SearchTrainer(model_fn, config, strategy, input_shape=input_shape)
    stopping = EarlyStopping(config, trainer.model)  # refuses what it cannot judge
    # The monitor's fixed batch: the first validation batch of epoch 0 (a restore replaces it
    # with the one the run started with).
    monitor = CollapseMonitor(trainer, next(iter(data_fn(0)[1]))) if config.monitor else None
    objects = {**trainer.state_objects(), **stopping.state_objects(),
               **(monitor.state_objects() if monitor else {})}
    state = run_lib.RunState(workdir, strategy, trainer.model, objects,
                             metrics=METRICS, checkpoint_every=config.checkpoint_every)
    if state.chief:
        workdir.mkdir(parents=True, exist_ok=True)
        run_lib.write_json(workdir / "config.json", config.to_dict())
        for name, text in (files or {}).items():
            run_lib.write_text(workdir / name, text)
    resumed_from = state.restore()
    trainer.set_step(state.global_step)
    if resumed_from is None:
        stopping.start()
    return _Search(trainer, state, monitor, stopping, resumed_from)


def _conclude(search: _Search) -> dict:
    """Writes the result (genotype.json or architecture.json) and returns it: the
    architecture from before an early stop's trigger, else the current one."""
    stopping, workdir = search.stopping, search.state.workdir
    architecture = stopping.architecture()
    if search.state.chief:
        has_genotype = hasattr(search.trainer.model, "genotype")
        name = "genotype.json" if has_genotype else "architecture.json"
        run_lib.write_json(workdir / name, architecture)
        if stopping.stopped and has_genotype:  # cells.png shows the result too
            epoch = stopping.stop_record["architecture_epoch"]
            _plot(Genotype.from_dict(architecture), workdir, f"epoch {epoch} (early stop)")
    return architecture


def _run_epoch(trainer: SearchTrainer, state: run_lib.RunState, data_fn) -> None:
    config = trainer.config
    trainer.set_epoch(state.epoch)
    weights_ds, alphas_ds = data_fn(state.epoch)
    ds = tf.data.Dataset.zip((weights_ds, alphas_ds))  # as pt.darts: zip(train, valid)
    if config.steps_per_epoch:
        ds = ds.take(config.steps_per_epoch)
    steps = int(ds.cardinality()) if int(ds.cardinality()) >= 0 else None
    ds = ds.skip(state.step_in_epoch)  # resume mid-epoch on the same batches
    progress = Progress(state.epoch, config.epochs, steps, config.log_every, state.step_in_epoch)
    for train_batch, val_batch in trainer.strategy.experimental_distribute_dataset(ds):
        metrics = {k: float(v) for k, v in trainer.step(train_batch, val_batch).items()}
        state.step_done(metrics, finite=("loss", "val_loss"))
        progress.update(state.step_in_epoch, metrics)
        if state.global_step % config.log_every == 0:
            for key, value in metrics.items():
                tf.summary.scalar(f"step/{key}", value, step=state.global_step)
            tf.summary.scalar("step/w_lr", config.learning_rate(state.epoch),
                              step=state.global_step)


def _finish_epoch(trainer: SearchTrainer, state: run_lib.RunState, monitor, stopping) -> dict:
    """Measures the monitor's values and checks the early-stopping triggers, writes
    epoch_{N}.json and the alphas line, then checkpoints the start of the next epoch."""
    metrics = state.epoch_means()
    metrics.update(epoch=state.epoch, steps=state.step_in_epoch,
                   w_lr=trainer.config.learning_rate(state.epoch))
    seconds = None
    if monitor is not None:
        values, seconds = monitor.measure()
        metrics.update(values)
    stop = stopping.end_of_epoch(state.epoch)
    alphas = trainer.arch_values()
    if state.chief:
        workdir = state.workdir
        record = {"epoch": state.epoch,
                  "architecture": search_space.export_architecture(trainer.model),
                  "arch_weights": {k: v.tolist() for k, v in arch_weights(trainer.model,
                                                                          alphas).items()},
                  "metrics": metrics}
        if seconds is not None:
            record["monitor_seconds"] = seconds
        if stop is not None:
            record["early_stop"] = stop
        run_lib.write_json(workdir / f"epoch_{state.epoch}.json", record)
        run_lib.write_jsonl_line(workdir / "alphas.jsonl", {
            "epoch": state.epoch, "step": state.global_step,
            "alphas": {k: v.tolist() for k, v in alphas.items()}})
        if hasattr(trainer.model, "genotype"):  # the supernet: draw the cells it encodes now
            _plot(trainer.model.genotype(), workdir, f"epoch {state.epoch}")
    _summarize_epoch(trainer, state.global_step, metrics, alphas)
    epoch_line(state.epoch, {k: metrics[k] for k in (*METRICS, *MONITOR) if k in metrics})
    if stop is not None:
        logger.info("Early stop: %s; the result is the architecture of epoch %d.",
                    stop["message"], stop["architecture_epoch"])
    state.next_epoch()
    return metrics


def _plot(genotype, workdir: Path, title: str) -> None:
    from darts_tf import plot  # pylint: disable=import-outside-toplevel

    plot.plot_genotype(genotype, workdir / "cells.png", title=title)


def _summarize_epoch(trainer: SearchTrainer, step: int, metrics: dict, alphas) -> None:
    """TensorBoard: epoch metrics and learning rate; every alpha's softmax weight per op."""
    for key in (*METRICS, "w_lr"):
        tf.summary.scalar(f"epoch/{key}", metrics[key], step=step)
    for key in MONITOR:
        if key in metrics:
            tf.summary.scalar(f"monitor/{key}", metrics[key], step=step)
    primitives = getattr(trainer.model, "primitives", None)
    weights_by_name = arch_weights(trainer.model, alphas)
    for name, values in alphas.items():
        weights = weights_by_name[name]
        tf.summary.histogram(f"alphas/{name}", values, step=step)
        if _is_edge_beta(trainer.model, name, values):
            for edge, w in enumerate(weights):
                tf.summary.scalar(f"edge_weight/{name}/edge_{edge}", float(w), step=step)
            continue
        rows = weights.reshape(-1, weights.shape[-1])
        for edge, row in enumerate(rows):
            for k, w in enumerate(row):
                op = primitives[k] if primitives and len(primitives) == len(row) else str(k)
                tf.summary.scalar(f"alpha_softmax/{name}/edge_{edge}/{op}", float(w), step=step)


def _is_edge_beta(model, name: str, values) -> bool:
    """Whether `name` holds PC-DARTS' edge logits (one per edge, normalised per node)."""
    return (getattr(model, "edge_normalization", False) and name.split("/")[-1].startswith("beta")
            and values.ndim == 1)


def arch_weights(model, alphas: dict) -> dict:
    """The weights the raw architecture values stand for, by name: softmax over each
    alpha row (the ops of an edge), and for PC-DARTS' betas the softmax over each node's
    incoming edges (`edge_weights`), as the supernet applies them."""
    return {name: (edge_weights(values, model.num_nodes) if _is_edge_beta(model, name, values)
                   else softmax(values)) for name, values in alphas.items()}


def _read_json(path: Path):
    return json.loads(path.read_text())
