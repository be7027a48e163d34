"""Retraining a genotype from scratch with the reference recipe (quark0/darts `cnn/train.py`).

    run(configs.retrain.digits().replace(genotype="DARTS_V2"), "/tmp/retrain")

writes into the work directory `config.json` (resolved config), `genotype.json`
(the genotype trained, our JSON), `data.json` (the data set's spec: image shape,
normalisation statistics, class names; also exported with the model), `metrics.jsonl` (one line per epoch: train
loss/accuracy, test top-1/top-5, lr, drop path), `tensorboard/`, `checkpoints/`
(resumable: the same command continues after a kill), and at the end
`model.keras`, `saved_model/` (`trainers.deploy.export`, served without darts_tf)
and `final_metrics.json`. The step is `trainer.py`; position, checkpoints and the
write policy are the shared run skeleton (`trainers.runtime.run`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable

import keras
import tensorflow as tf

from configs import ConfigError, RetrainConfig
from darts_tf import NetworkCIFAR, NetworkImageNet
from darts_tf.genotype import GenotypeError, load_genotype
from trainers import data
from trainers.deploy.export import export_model
from trainers.retrain.trainer import METRICS, RetrainTrainer
from trainers.runtime import distribute, run as run_lib
from trainers.runtime.progress import Progress, epoch_line


@dataclasses.dataclass
class RetrainResult:
    """What `run` returns; `final_metrics` is also `final_metrics.json`."""
    final_metrics: dict
    history: list               # metrics.jsonl, one dict per epoch
    global_step: int
    resumed_from_step: int | None
    step_traces: int            # times the train step was traced in this process (1)
    workdir: str
    step_loads: int = 0         # train steps loaded from the step cache instead (0 or 1)


@dataclasses.dataclass
class Setup:
    """A validated config with everything derived from it."""
    config: RetrainConfig
    spec: data.DataSpec
    genotype: object
    model_fn: Callable
    data_fn: Callable
    eval_fn: Callable


def run(config: RetrainConfig, workdir: str, data_fn=None, eval_fn=None,
        export: bool = True) -> RetrainResult:
    """Runs (or resumes) a retraining; see the module docstring for the files written.

    Args:
      config: the retrain config (a dict is validated into one).
      workdir: output directory; a checkpoint there is resumed.
      data_fn: epoch -> dataset of global (images, labels) training batches, the
        same for the same epoch (default: `trainers.data.train_data`).
      eval_fn: () -> dataset of (images, labels) test batches (default:
        `trainers.data.eval_data` on the test split).
      export: write model.keras and saved_model/ at the end (False: only the metrics, for
        studies that retrain many networks to measure them, e.g. bench/quality.py).

    Raises:
      ConfigError: an invalid config value or genotype (raised before anything is written).
      RunMismatchError: the work directory holds another run.
      DataError: the data set is unknown or not prepared.
      DivergedError: the loss became NaN/inf (named with epoch and step).
    """
    setup = prepare(config, workdir, data_fn, eval_fn)
    with distribute.op_determinism(setup.config.deterministic):
        return _run(setup, Path(workdir), export)


def _auxiliary_pool_size(config: RetrainConfig, height: int) -> int:
    """Side of the auxiliary head's pooled map (it must be 2: a 2x2 conv, then 768 features).

    The head sits on the second reduction cell's output: H / 4 (CIFAR) or H / 32
    (ImageNet: three stride-2 stem convs first), then a 5x5 pool, stride 3 or 2.
    """
    stages, stride = (5, 2) if config.network == "imagenet" else (2, 3)
    for _ in range(stages):
        height = math.ceil(height / 2)
    return (height - 5) // stride + 1 if height >= 5 else 0


def prepare(config, workdir, data_fn=None, eval_fn=None) -> Setup:
    """Validates `config` against the data set and any earlier run in `workdir`, then writes
    `config.json` and `genotype.json`. Nothing is written when it raises."""
    config = RetrainConfig.coerce(config)
    try:
        genotype = load_genotype(config.genotype)
    except GenotypeError as err:
        raise ConfigError(f"Invalid config value genotype={config.genotype!r}: {err}") from None
    spec = data.get_spec(config.dataset, config.data_dir, config.image_size)
    pooled = _auxiliary_pool_size(config, min(spec.image_shape[:2]))
    if config.auxiliary and pooled != 2:
        raise ConfigError(
            f"Invalid config value auxiliary=True: the auxiliary head needs a feature map that "
            f"pools to 2x2 (CIFAR: 32x32 input, ImageNet: 224x224), and {config.dataset} "
            f"images {spec.image_shape[:2]} give {pooled}x{pooled}; set auxiliary=False.")
    workdir = Path(workdir)
    run_lib.check_same_run(config, workdir, {"genotype.json": genotype.to_json(),
                                             "data.json": spec.to_json()})
    network = NetworkImageNet if config.network == "imagenet" else NetworkCIFAR
    model_fn = functools.partial(
        network, genotype, num_classes=spec.num_classes, init_channels=config.init_channels,
        num_cells=config.num_cells, auxiliary=config.auxiliary,
        drop_path_rate=config.drop_path_rate, input_channels=spec.image_shape[-1],
        recompute=config.recompute)
    data_fn = data_fn or (lambda epoch: data.train_data(
        config.dataset, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
        augment=config.augment, cutout=config.cutout, data_dir=config.data_dir,
        limit=config.data_limit, image_size=config.image_size))
    eval_fn = eval_fn or (lambda: data.eval_data(
        config.dataset, batch_size=config.eval_batch_size, split="test",
        data_dir=config.data_dir, image_size=config.image_size))
    return Setup(config, spec, genotype, model_fn, data_fn, eval_fn)


def _run(setup: Setup, workdir: Path, export: bool = True) -> RetrainResult:
    config, spec = setup.config, setup.spec
    keras.utils.set_random_seed(config.seed)
    strategy = distribute.make_strategy(config.strategy)
    trainer = RetrainTrainer(setup.model_fn, config, strategy,
                             input_shape=spec.image_shape, num_classes=spec.num_classes)
    state = run_lib.RunState(workdir, strategy, trainer.model, trainer.state_objects(),
                             metrics=METRICS, checkpoint_every=config.checkpoint_every)
    if state.chief:
        workdir.mkdir(parents=True, exist_ok=True)
        run_lib.write_json(workdir / "config.json", config.to_dict())
        run_lib.write_text(workdir / "genotype.json", setup.genotype.to_json())
        run_lib.write_text(workdir / "data.json", spec.to_json())
    resumed_from = state.restore()
    # Epoch lines written after that checkpoint are written again.
    history = run_lib.read_jsonl(workdir / "metrics.jsonl", before_epoch=state.epoch)
    with state.summary_writer().as_default():
        while state.epoch < config.epochs:
            _train_epoch(trainer, state, setup.data_fn)
            history.append(_finish_epoch(trainer, state, trainer.evaluate(setup.eval_fn())))
    final = _finish(trainer, state, history, spec, export)
    return RetrainResult(final, history, state.global_step, resumed_from, trainer.step_traces,
                         str(workdir), trainer.step_loads)


def _train_epoch(trainer: RetrainTrainer, state: run_lib.RunState, data_fn) -> None:
    config = trainer.config
    lr, drop = trainer.set_epoch(state.epoch)
    ds = data_fn(state.epoch)
    steps = config.steps_per_epoch or int(ds.cardinality())
    steps = steps if steps > 0 else None
    ds = ds.skip(state.step_in_epoch)
    if config.steps_per_epoch:
        ds = ds.take(config.steps_per_epoch - state.step_in_epoch)
    progress = Progress(state.epoch, config.epochs, steps, config.log_every, state.step_in_epoch,
                        stateful_metrics=list(METRICS))
    for batch in trainer.strategy.experimental_distribute_dataset(ds):
        metrics = {k: float(v) for k, v in trainer.train_step(batch).items()}
        state.step_done(metrics)
        progress.update(state.step_in_epoch, metrics)
        if state.global_step % config.log_every == 0:
            for name, value in (("train/loss", metrics["loss"]),
                                ("train/accuracy", metrics["accuracy"]), ("lr", lr),
                                ("drop_path_prob", drop)):
                tf.summary.scalar(name, value, step=state.global_step)


def _finish_epoch(trainer: RetrainTrainer, state: run_lib.RunState, test: dict) -> dict:
    """Appends the epoch's line to metrics.jsonl, then checkpoints the next epoch's start."""
    means = state.epoch_means()
    line = {"epoch": state.epoch, "global_step": state.global_step,
            "lr": float(trainer.lr.numpy()),
            "drop_path_prob": float(trainer.model.drop_path_prob.numpy())
                              if hasattr(trainer.model, "drop_path_prob") else 0.0,
            "train_loss": means["loss"], "train_accuracy": means["accuracy"],
            "test_loss": test["loss"], "test_top1": test["top1"], "test_top5": test["top5"]}
    for name in ("test_loss", "test_top1", "test_top5"):
        tf.summary.scalar(name.replace("_", "/", 1), line[name], step=state.global_step)
    epoch_line(state.epoch, {k: v for k, v in line.items() if k != "epoch"})
    if state.chief:
        run_lib.write_jsonl_line(state.workdir / "metrics.jsonl", line)
    state.next_epoch()
    return line


def _finish(trainer: RetrainTrainer, state: run_lib.RunState, history, spec,
            export: bool = True) -> dict:
    """Writes model.keras and saved_model/ (when `export`) and final_metrics.json (chief
    only); returns the final metrics."""
    model, last = trainer.model, history[-1]
    final = {"test_top1": last["test_top1"], "test_top5": last["test_top5"],
             "test_loss": last["test_loss"], "epochs": state.epoch,
             "global_step": state.global_step, "wall_time_s": state.elapsed(),
             "params": model.count_params(include_auxiliary=False),
             "params_with_auxiliary": model.count_params(include_auxiliary=True),
             "dataset": trainer.config.dataset}
    if state.chief:
        if export:
            export_model(model, spec, state.workdir)
        run_lib.write_json(state.workdir / "final_metrics.json", final)
    return final
