"""The DARTS search loop: epochs of search steps, and the files each epoch hands on.

    run(configs.search.digits().replace(epochs=2), "/tmp/search")

writes into the work directory `config.json` (the resolved config),
`data.json` (the data set's spec: normalisation, class names), `epoch_{N}.json` (architecture, softmaxed alphas and metrics after epoch N,
counted from 0 as NNI does), `alphas.jsonl` (the raw alphas after every
epoch), `cells.png` (the supernet's cells, redrawn every epoch), `tensorboard/`,
`checkpoints/` (resumable state) and finally `genotype.json` (the supernet's
genotype) or `architecture.json` (a user choice model's decisions). The step
itself is `trainer.py`; position, checkpoints and the write policy are the shared
run skeleton (`trainers.runtime.run`).
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
from darts_tf.genotype import softmax
from trainers.runtime import distribute, run as run_lib
from trainers.runtime.progress import Progress, epoch_line
from trainers.search.trainer import METRICS, SearchTrainer

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SearchResult:
    """What `run` returns (the same is on disk in the work directory)."""
    architecture: dict          # export_architecture(model): genotype dict or choice decisions
    alphas: dict                # raw alphas by variable path in the model (numpy arrays)
    history: list               # one dict of metrics per epoch
    global_step: int
    resumed_from_step: int | None
    step_traces: int            # times the step function was traced in this process (1)
    workdir: str


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
        stem_multiplier=config.stem_multiplier, input_channels=spec.image_shape[-1])


def _default_data_fn(config: SearchConfig):
    from trainers import data  # pylint: disable=import-outside-toplevel

    return lambda epoch: data.search_data(
        config.dataset, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
        data_dir=config.data_dir, limit=config.data_limit, image_size=config.image_size)


def _run(config: SearchConfig, workdir: Path, model_fn, data_fn, files) -> SearchResult:
    keras.utils.set_random_seed(config.seed)
    strategy = distribute.make_strategy(config.strategy)
    data_fn = data_fn or _default_data_fn(config)
    model_fn = model_fn or _default_model_fn(config)
    input_shape = tuple(data_fn(0)[0].element_spec[0].shape[1:])
    trainer = SearchTrainer(model_fn, config, strategy, input_shape=input_shape)
    state = run_lib.RunState(workdir, strategy, trainer.model, trainer.state_objects(),
                             metrics=METRICS, checkpoint_every=config.checkpoint_every)
    if state.chief:
        workdir.mkdir(parents=True, exist_ok=True)
        run_lib.write_json(workdir / "config.json", config.to_dict())
        for name, text in files.items():
            run_lib.write_text(workdir / name, text)
    resumed_from = state.restore()
    history = [_read_json(workdir / f"epoch_{e}.json")["metrics"] for e in range(state.epoch)
               ] if state.chief else []
    writer = state.summary_writer()
    with writer.as_default():
        while state.epoch < config.epochs:
            _run_epoch(trainer, state, data_fn)
            history.append(_finish_epoch(trainer, state))
    writer.close()
    architecture = search_space.export_architecture(trainer.model)
    if state.chief:
        name = "genotype.json" if hasattr(trainer.model, "genotype") else "architecture.json"
        run_lib.write_json(workdir / name, architecture)
    return SearchResult(architecture, trainer.arch_values(), history, state.global_step,
                        resumed_from, trainer.step_traces, str(workdir))


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


def _finish_epoch(trainer: SearchTrainer, state: run_lib.RunState) -> dict:
    """Writes epoch_{N}.json and the alphas line, then checkpoints the start of the next epoch."""
    metrics = state.epoch_means()
    metrics.update(epoch=state.epoch, steps=state.step_in_epoch,
                   w_lr=trainer.config.learning_rate(state.epoch))
    alphas = trainer.arch_values()
    if state.chief:
        workdir = state.workdir
        run_lib.write_json(workdir / f"epoch_{state.epoch}.json", {
            "epoch": state.epoch,
            "architecture": search_space.export_architecture(trainer.model),
            "arch_weights": {k: softmax(v).tolist() for k, v in alphas.items()},
            "metrics": metrics})
        run_lib.write_jsonl_line(workdir / "alphas.jsonl", {
            "epoch": state.epoch, "step": state.global_step,
            "alphas": {k: v.tolist() for k, v in alphas.items()}})
        if hasattr(trainer.model, "genotype"):  # the supernet: draw the cells it encodes now
            from darts_tf import plot  # pylint: disable=import-outside-toplevel

            plot.plot_genotype(trainer.model.genotype(), workdir / "cells.png",
                               title=f"epoch {state.epoch}")
    _summarize_epoch(trainer, state.global_step, metrics, alphas)
    epoch_line(state.epoch, {k: metrics[k] for k in METRICS})
    state.next_epoch()
    return metrics


def _summarize_epoch(trainer: SearchTrainer, step: int, metrics: dict, alphas) -> None:
    """TensorBoard: epoch metrics and learning rate; every alpha's softmax weight per op."""
    for key in (*METRICS, "w_lr"):
        tf.summary.scalar(f"epoch/{key}", metrics[key], step=step)
    primitives = getattr(trainer.model, "primitives", None)
    for name, values in alphas.items():
        weights = softmax(values)
        tf.summary.histogram(f"alphas/{name}", values, step=step)
        rows = weights.reshape(-1, weights.shape[-1])
        for edge, row in enumerate(rows):
            for k, w in enumerate(row):
                op = primitives[k] if primitives and len(primitives) == len(row) else str(k)
                tf.summary.scalar(f"alpha_softmax/{name}/edge_{edge}/{op}", float(w), step=step)


def _read_json(path: Path):
    return json.loads(path.read_text())
