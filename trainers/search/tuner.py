"""DARTS as a KerasTuner oracle and tuner: several searches, keep the cell that retrains best.

The paper's protocol (Liu et al. 2019, section 3.3): "we run DARTS four times with
different random seeds and pick the best cell based on its validation performance
obtained by training from scratch for a short period". Here one KerasTuner trial is
one such run:

1. `DartsOracle.populate_space` decides the trial's search seed and the values of the
   declared hyperparameters (named like `SearchConfig` fields: `unrolled`, `alpha_lr`,
   `init_channels`, `epochs`, ...); fields not declared come from the tuner's base config.
2. `DartsTuner.run_trial` runs `trainers.search.run` (data split by `trainers.data.arrays`) into the trial's directory on the
   halves of the search's `x`/`y` (weights on the first, alphas on the second), which
   leaves `genotype.json`, `epoch_{N}.json`, `alphas.jsonl`, `config.json`,
   `checkpoints/`, ... next to KerasTuner's `trial.json`, and puts the genotype's JSON into
   the trial's hyperparameters as `Fixed("genotype", ...)`.
3. `super().run_trial` then builds the fixed network through `DartsHyperModel.build(hp)`
   and fits it on the same `x`/`y` (the proxy retraining), scored on `validation_data`.

    hp = keras_tuner.HyperParameters()
    hp.Choice("alpha_lr", [3e-4, 1e-3])
    tuner = DartsTuner(DartsHyperModel(num_classes=10, input_channels=1),
                       base_config=SearchConfig(epochs=10, batch_size=32),
                       hyperparameters=hp, max_trials=4, seed=1, directory="/tmp/tune")
    tuner.search(x, y, validation_data=(x_val, y_val), epochs=5)
    genotype = Genotype.from_json(tuner.get_best_hyperparameters()[0]["genotype"])

Random search over cells, the paper's baseline, is the same tuner with another oracle:
`DartsTuner(hypermodel, base_config, oracle=RandomCellOracle(max_trials=8, seed=1))`
gives each trial a cell drawn uniformly from the space (`darts_tf.random_genotype`)
instead of a search, and keeps the best by the same proxy retraining.

Failures are loud: KerasTuner 1.4.8 records an exception in `run_trial` as the trial's
`message` and goes on (it only stops after `max_consecutive_failed_trials` failures in a
row). `DartsTuner` logs every failed trial at ERROR with its traceback and raises
`TrialsFailedError` from `search()` when every trial it ran failed.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os

import keras
import keras_tuner
import numpy as np
import tensorflow as tf

from configs import SearchConfig
from darts_tf import PRIMITIVES, Genotype, NetworkCIFAR, Supernet, genotypes
from darts_tf.genotype import random_genotype
from trainers.data.arrays import search_data_fn
from trainers.search import loop as search_lib

logger = logging.getLogger(__name__)

GENOTYPE = "genotype"  # hyperparameter holding a trial's searched cell (JSON text)
SEED = "seed"          # hyperparameter holding a trial's search seed (SearchConfig.seed)
SEARCH_FIELDS = frozenset(f.name for f in dataclasses.fields(SearchConfig))
_STATUS = keras_tuner.engine.trial.TrialStatus


class TrialsFailedError(RuntimeError):
    """Every trial of a `DartsTuner.search` call failed; names the first failure."""


class DartsOracle(keras_tuner.Oracle):
    """Decides a trial's search seed and the declared search hyperparameters; runs nothing.

    Values are sampled at random, as `keras_tuner.oracles.RandomSearchOracle` does. Trial i
    gets the search seed `trial_seed(i)`, derived from the oracle's seed, so the same oracle
    seed repeats the same searches; equal sampled values with different seeds are allowed
    (that is the paper's protocol: the same settings, several seeds).

    Args:
      objective: what the proxy retraining is scored by (default "val_accuracy").
      max_trials: number of searches.
      seed: the oracle's seed (None: random). Unlike `keras_tuner.Oracle`, 0 is a seed.
      hyperparameters, allow_new_entries, tune_new_entries, max_retries_per_trial,
      max_consecutive_failed_trials: as in `keras_tuner.Oracle`.
    """

    runs_search = True  # DartsTuner runs a DARTS search per trial (RandomCellOracle: False)

    def __init__(self, objective="val_accuracy", max_trials: int = 4, seed: int | None = None,
                 hyperparameters=None, allow_new_entries=True, tune_new_entries=True,
                 max_retries_per_trial=0, max_consecutive_failed_trials=3):
        super().__init__(objective=objective, max_trials=max_trials,
                         hyperparameters=hyperparameters, allow_new_entries=allow_new_entries,
                         tune_new_entries=tune_new_entries, seed=seed,
                         max_retries_per_trial=max_retries_per_trial,
                         max_consecutive_failed_trials=max_consecutive_failed_trials)
        if seed is not None:  # keras_tuner.Oracle takes seed=0 for "pick one at random"
            self.seed = self._seed_state = seed
        reserved = sorted({hp.name for hp in self.hyperparameters.space} & {SEED, GENOTYPE})
        if reserved:
            raise ValueError(f"DartsOracle: the hyperparameter names {reserved} are reserved "
                             f"(the oracle decides '{SEED}', the search yields '{GENOTYPE}').")
        self.trial_seeds: dict[str, int] = {}  # trial_id -> search seed

    def trial_seed(self, index: int) -> int:
        """The search seed of the index-th trial: distinct, deterministic in (seed, index)."""
        seed = int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0]) % 2**31
        used = set(self.trial_seeds.values())
        while seed in used:  # a 31-bit collision: step to the next free seed
            seed = (seed + 1) % 2**31
        return seed

    def populate_space(self, trial_id):
        values = self._random_values()  # the declared hyperparameters, as RandomSearchOracle
        if values is None:
            return {"status": _STATUS.STOPPED, "values": None}
        values[SEED] = self.trial_seeds[trial_id] = self.trial_seed(len(self.trials))
        return {"status": _STATUS.RUNNING, "values": values}

    def update_space(self, hyperparameters):
        # A trial's genotype is its result, not a dimension of the space: kept in the space,
        # it would become the next trials' starting value.
        kept = keras_tuner.HyperParameters()
        kept.merge([hp for hp in hyperparameters.space if hp.name != GENOTYPE])
        super().update_space(kept)

    def get_state(self):
        return {**super().get_state(), "trial_seeds": self.trial_seeds}

    def set_state(self, state):
        super().set_state(state)
        self.trial_seeds = dict(state.get("trial_seeds", {}))


class RandomCellOracle(DartsOracle):
    """Random search over cells, the paper's baseline: each trial a random cell, no search.

    Trial i gets the seed `trial_seed(i)` (as `DartsOracle`) and the cell
    `darts_tf.genotype.random_genotype(seed, num_nodes, primitives)` as its `genotype`
    hyperparameter; `DartsTuner` then only proxy-trains it, so the best trial is the best
    of `max_trials` random cells by the objective (Liu et al. 2019, Table 1: the random
    search baseline, best of 24 by a short training). Give it to
    `DartsTuner(..., oracle=RandomCellOracle(...))` to compare DARTS against random cells
    with the same hypermodel, data and budget.

    Args:
      num_nodes: intermediate nodes per cell (None: the DartsTuner's base_config.num_nodes).
      primitives: the ops drawn from, 'none' excluded (None: the DartsTuner's primitives).
      objective, max_trials, seed, hyperparameters, ...: as `DartsOracle`. No search reads
        the declared values; hyperparameters the hypermodel declares in `build(hp)` are
        sampled at random per trial, as `DartsOracle` samples them.
    """

    runs_search = False

    def __init__(self, objective="val_accuracy", max_trials: int = 4, seed: int | None = None,
                 num_nodes: int | None = None, primitives=None, **kwargs):
        super().__init__(objective=objective, max_trials=max_trials, seed=seed, **kwargs)
        self.num_nodes = num_nodes
        self.primitives = None if primitives is None else tuple(primitives)

    def random_cell(self, seed: int) -> Genotype:
        """The cell of a trial with search seed `seed`."""
        if self.num_nodes is None or self.primitives is None:
            raise ValueError("RandomCellOracle: num_nodes and primitives are not set; pass them "
                             "to the oracle or give the oracle to a DartsTuner, which sets them "
                             f"from its base_config and primitives. Received: num_nodes="
                             f"{self.num_nodes}, primitives={self.primitives}")
        return random_genotype(seed, self.num_nodes, self.primitives)

    def populate_space(self, trial_id):
        result = super().populate_space(trial_id)
        if result["status"] == _STATUS.RUNNING:
            values = result["values"]
            values[GENOTYPE] = self.random_cell(values[SEED]).to_json()
        return result

    def get_state(self):
        return {**super().get_state(), "num_nodes": self.num_nodes,
                "primitives": None if self.primitives is None else list(self.primitives)}

    def set_state(self, state):
        super().set_state(state)
        if state.get("num_nodes") is not None:
            self.num_nodes = state["num_nodes"]
            self.primitives = tuple(state["primitives"])


class DartsHyperModel(keras_tuner.HyperModel):
    """The proxy retraining: `NetworkCIFAR` of `hp["genotype"]`, compiled for `fit`.

    SGD with momentum, weight decay (Keras's, decoupled: w -= lr * wd * w each step) and
    global-norm clipping, sparse categorical cross-entropy from logits, accuracy. No
    auxiliary head (`fit` trains the logits only) and a constant drop-path rate.

    Args:
      num_classes: classifier outputs.
      input_channels: channels of the input images (3 for CIFAR, 1 for digits).
      init_channels, num_cells, drop_path_rate: of the fixed network.
      learning_rate, momentum, weight_decay, global_clipnorm: of the SGD optimizer
        (defaults: the reference retraining's 0.025, 0.9, 3e-4, 5).
      name, tunable: as `keras_tuner.HyperModel`.
    """

    def __init__(self, num_classes: int, input_channels: int = 3, init_channels: int = 16,
                 num_cells: int = 8, drop_path_rate: float = 0.0, learning_rate: float = 0.025,
                 momentum: float = 0.9, weight_decay: float = 3e-4,
                 global_clipnorm: float | None = 5.0, name=None, tunable=True):
        super().__init__(name=name, tunable=tunable)
        self.num_classes, self.input_channels = num_classes, input_channels
        self.init_channels, self.num_cells, self.drop_path_rate = (
            init_channels, num_cells, drop_path_rate)
        self.learning_rate, self.momentum = learning_rate, momentum
        self.weight_decay, self.global_clipnorm = weight_decay, global_clipnorm

    def build(self, hp):
        if GENOTYPE not in hp:
            raise ValueError(
                f"{type(self).__name__}.build: the hyperparameters hold no '{GENOTYPE}'; "
                "DartsTuner.run_trial sets it from the trial's search (or set "
                f"hp.Fixed('{GENOTYPE}', genotype.to_json())). Received: "
                f"hp.values keys={sorted(hp.values)}")
        genotype = Genotype.from_json(hp.get(GENOTYPE), source=f'hp["{GENOTYPE}"]')
        model = NetworkCIFAR(genotype, num_classes=self.num_classes,
                             init_channels=self.init_channels, num_cells=self.num_cells,
                             auxiliary=False, drop_path_rate=self.drop_path_rate,
                             input_channels=self.input_channels)
        model.compile(
            optimizer=keras.optimizers.SGD(self.learning_rate, momentum=self.momentum,
                                           weight_decay=self.weight_decay or None,
                                           global_clipnorm=self.global_clipnorm),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"])
        # Built now (every variable exists after __init__), so that the optimizer state in
        # KerasTuner's best-epoch weights file loads back; unbuilt, Keras skips it with a warning.
        model.optimizer.build(model.trainable_variables)
        return model


class _WithPlaceholderGenotype(keras_tuner.HyperModel):
    """Lends a published cell to the builds KerasTuner makes before any search has run."""

    def __init__(self, hypermodel):
        super().__init__(name=hypermodel.name, tunable=hypermodel.tunable)
        self.hypermodel = hypermodel

    def declare_hyperparameters(self, hp):
        self.hypermodel.declare_hyperparameters(hp)

    def build(self, hp):
        had_genotype = GENOTYPE in hp.values
        hp.values.setdefault(GENOTYPE, genotypes.DARTS_V2.to_json())
        try:
            return self.hypermodel.build(hp)
        finally:
            if not had_genotype:
                hp.values.pop(GENOTYPE)


class DartsTuner(keras_tuner.Tuner):
    """One trial = one DARTS search (its own seed and settings) + a proxy retraining.

    `search(x, y, validation_data=..., epochs=..., ...)` takes what `Model.fit` takes
    (numpy arrays, or a tf.data dataset of (images, labels) batches); the fit arguments go
    to the proxy retraining unchanged. The search phase of each trial uses the same x/y
    (see `search_data_fn`) and the base config's batch size, epochs and steps.

    Args:
      hypermodel: builds the retrained network from `hp["genotype"]` (a `DartsHyperModel`,
        or any HyperModel with `num_classes`; the supernet's classifier uses it).
      base_config: the search settings a trial does not declare. `dataset`, `data_dir`
        are not used (the data is the search's x/y); `data_limit` keeps the first examples.
      primitives: the supernet's candidate ops.
      objective, max_trials, seed, hyperparameters, tune_new_entries, allow_new_entries,
      max_retries_per_trial, max_consecutive_failed_trials: as `DartsOracle`. Declared
        hyperparameters must be named after `SearchConfig` fields.
      oracle: instead of those, an oracle: `RandomCellOracle(max_trials=..., seed=...)`
        turns the same tuner into random search over cells (the baseline at the same
        hypermodel, data and proxy training); None builds a `DartsOracle`.
      **kwargs: for `keras_tuner.Tuner` (directory, project_name, overwrite, ...).
    """

    def __init__(self, hypermodel, base_config: SearchConfig | None = None, *,
                 primitives=PRIMITIVES, objective="val_accuracy", max_trials: int = 4,
                 seed: int | None = None, hyperparameters=None, tune_new_entries=True,
                 allow_new_entries=True, max_retries_per_trial=0,
                 max_consecutive_failed_trials=3, oracle: DartsOracle | None = None, **kwargs):
        base_config = SearchConfig() if base_config is None else base_config
        if not isinstance(base_config, SearchConfig):
            raise TypeError("DartsTuner: base_config must be a SearchConfig. Received: "
                            f"base_config={base_config!r}")
        if hypermodel is None or not isinstance(getattr(hypermodel, "num_classes", None), int):
            raise ValueError("DartsTuner: hypermodel must be a HyperModel with an integer "
                             f"`num_classes` (e.g. DartsHyperModel). Received: {hypermodel!r}")
        self.base_config, self.primitives = base_config, tuple(primitives)
        self._ended: list = []  # (trial_id, status, message) of this search() call
        oracle_args = dict(
            objective=objective, max_trials=max_trials, seed=seed,
            hyperparameters=hyperparameters, tune_new_entries=tune_new_entries,
            allow_new_entries=allow_new_entries, max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials)
        if oracle is None:
            _check_declared(hyperparameters, base_config)
            oracle = DartsOracle(**oracle_args)
        else:
            self._adopt(oracle, oracle_args)
        super().__init__(oracle, hypermodel, **kwargs)

    def _adopt(self, oracle, oracle_args: dict) -> None:
        """Checks a given oracle; a RandomCellOracle gets the space's nodes and ops."""
        if not isinstance(oracle, DartsOracle):
            raise TypeError("DartsTuner: oracle must be a DartsOracle or a RandomCellOracle. "
                            f"Received: oracle={oracle!r}")
        defaults = inspect.signature(DartsTuner.__init__).parameters
        passed = sorted(k for k, v in oracle_args.items() if v != defaults[k].default)
        if passed:
            raise ValueError(f"DartsTuner: {passed} belong to the oracle when oracle= is given "
                             f"(pass them to {type(oracle).__name__}(...)).")
        _check_declared(oracle.hyperparameters, self.base_config)
        if isinstance(oracle, RandomCellOracle):
            if oracle.num_nodes not in (None, self.base_config.num_nodes):
                raise ValueError(
                    f"DartsTuner: RandomCellOracle(num_nodes={oracle.num_nodes}) differs from "
                    f"base_config.num_nodes={self.base_config.num_nodes}: the random cells would "
                    "come from another space than the searched ones. Leave num_nodes=None.")
            oracle.num_nodes = self.base_config.num_nodes
            if oracle.primitives is None:
                oracle.primitives = self.primitives

    def search_config(self, hp) -> SearchConfig:
        """The trial's search: the base config with the trial's declared values and seed."""
        return self.base_config.replace(
            **{k: v for k, v in hp.values.items() if k in SEARCH_FIELDS})

    # KerasTuner hooks -------------------------------------------------------------------

    def search(self, *fit_args, **fit_kwargs):
        """Runs the remaining trials; raises TrialsFailedError when every one of them failed."""
        objective = self.oracle.objective
        if (isinstance(objective, keras_tuner.Objective) and objective.name.startswith("val_")
                and not {"validation_data", "validation_split"} & set(fit_kwargs)):
            raise ValueError(f"DartsTuner.search: the objective {objective.name!r} needs "
                             "validation_data (or validation_split) for the proxy retraining.")
        _check_tensorboard()
        self._ended = []
        try:
            super().search(*fit_args, **fit_kwargs)
        except RuntimeError as err:  # KerasTuner: max_consecutive_failed_trials reached
            failed = [e for e in self._ended if e[1] == _STATUS.FAILED]
            if not failed or isinstance(err, TrialsFailedError):
                raise
            raise TrialsFailedError(
                f"The search stopped after {self.oracle.max_consecutive_failed_trials} "
                f"consecutive failed trials (max_consecutive_failed_trials). "
                f"{self._first_failure(failed)}") from err
        if self._ended and all(status == _STATUS.FAILED for _, status, _ in self._ended):
            raise TrialsFailedError(f"All {len(self._ended)} trials of this search failed. "
                                    f"{self._first_failure(self._ended)}")

    def run_trial(self, trial, *fit_args, **fit_kwargs):
        """Searches into the trial's directory, then retrains its cell via `super().run_trial`.

        With a RandomCellOracle, the trial's cell is the oracle's: no search, the proxy
        retraining only (seeded by the trial's seed).
        """
        hp = trial.hyperparameters
        config = self.search_config(hp)
        if not self.oracle.runs_search:
            text = hp.values[GENOTYPE]
            hp.Fixed(GENOTYPE, text)
            hp.values[GENOTYPE] = text
            logger.info("Trial %s: random cell (seed %d), no search", trial.trial_id, config.seed)
            keras.utils.set_random_seed(config.seed)  # as the search would have (the fit's init)
            return super().run_trial(trial, *fit_args, **fit_kwargs)
        x = fit_args[0] if fit_args else fit_kwargs.get("x")
        y = fit_args[1] if len(fit_args) > 1 else fit_kwargs.get("y")
        split = fit_kwargs.get("validation_split")
        if split and x is not None and not isinstance(x, tf.data.Dataset):
            # As Model.fit: the last fraction validates; the search must not see it either.
            keep = int(math.floor(len(x) * (1.0 - split)))
            x, y = x[:keep], (None if y is None else y[:keep])
        data_fn, input_shape = search_data_fn(x, y, config)
        trial_dir = self.get_trial_dir(trial.trial_id)
        logger.info("Trial %s: DARTS search (seed %d) into %s", trial.trial_id, config.seed,
                    trial_dir)
        result = search_lib.run(config, trial_dir, model_fn=self._supernet_fn(config, input_shape),
                                data_fn=data_fn)
        text = Genotype.from_dict(result.architecture, source=trial_dir).to_json()
        hp.Fixed(GENOTYPE, text)
        hp.values[GENOTYPE] = text  # a retried trial keeps its earlier value otherwise
        return super().run_trial(trial, *fit_args, **fit_kwargs)

    def on_trial_end(self, trial):
        try:
            super().on_trial_end(trial)  # the oracle decides: completed, retried or failed
        finally:
            status = self.oracle.get_trial(trial.trial_id).status
            if status == _STATUS.FAILED:
                # KerasTuner prints the traceback itself (keras_tuner.config.DEBUG, on by
                # default); the log gets where it was raised and where the whole text is kept.
                logger.error("DARTS tuner: %s\n  raised at %s\n  full traceback: 'message' in %s",
                             _describe(trial.trial_id, status, trial.message),
                             _innermost_frame(trial.message),
                             os.path.join(self.get_trial_dir(trial.trial_id), "trial.json"))
            elif status == _STATUS.INVALID:
                logger.warning("DARTS tuner: trial %s failed and will be retried: %s",
                               trial.trial_id, _last_line(trial.message))
            if status in (_STATUS.COMPLETED, _STATUS.FAILED):
                self._ended.append((trial.trial_id, status, trial.message))

    def _first_failure(self, failed) -> str:
        trial_id = failed[0][0]
        return (f"{_describe(*failed[0])} (full traceback: 'message' in "
                f"{os.path.join(self.get_trial_dir(trial_id), 'trial.json')})")

    def _populate_initial_space(self):
        # KerasTuner builds the hypermodel once here to find the hyperparameters it declares;
        # no cell has been searched yet, so that build gets a placeholder genotype.
        hypermodel = self.hypermodel
        self.hypermodel = _WithPlaceholderGenotype(hypermodel)
        try:
            super()._populate_initial_space()
        finally:
            self.hypermodel = hypermodel

    def _supernet_fn(self, config: SearchConfig, input_shape):
        def model_fn():
            return Supernet(num_classes=self.hypermodel.num_classes,
                            init_channels=config.init_channels, num_cells=config.num_cells,
                            num_nodes=config.num_nodes, stem_multiplier=config.stem_multiplier,
                            input_channels=int(input_shape[-1]), primitives=self.primitives,
                            **config.supernet_options())
        return model_fn


def _check_declared(hyperparameters, base_config: SearchConfig) -> None:
    """Declared names must be SearchConfig fields, and their defaults a valid config."""
    if hyperparameters is None:
        return
    names = [hp.name for hp in hyperparameters.space]
    unknown = sorted(set(names) - SEARCH_FIELDS - {SEED, GENOTYPE})
    if unknown:
        raise ValueError(
            f"DartsTuner: declared hyperparameters {unknown} are not SearchConfig fields "
            f"({', '.join(sorted(SEARCH_FIELDS - {SEED}))}). Declare the retraining's own "
            "hyperparameters in the HyperModel's build(hp).")
    base_config.replace(**{hp.name: hp.default for hp in hyperparameters.space
                           if hp.name in SEARCH_FIELDS and hp.name != SEED})


def _check_tensorboard() -> None:
    """Fails now, not in every trial after its whole search.

    keras_tuner 1.4.8 `Tuner._configure_tensorboard_dir` imports tensorboard in every
    `run_trial` on the TensorFlow backend, whether or not a TensorBoard callback is used.
    """
    try:
        from tensorboard.plugins.hparams import api  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError as err:
        raise ImportError(
            "DartsTuner.search: KerasTuner 1.4.8 imports tensorboard in every trial (even "
            "without a TensorBoard callback), so each trial would fail after its search. "
            f"Install tensorboard (pip install tensorboard). Import error: {err}") from err


def _last_line(message) -> str:
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no message)"


def _innermost_frame(message) -> str:
    frames = [line.strip() for line in (message or "").splitlines()
              if line.strip().startswith('File "')]
    return frames[-1] if frames else "(no traceback)"


def _describe(trial_id, status, message) -> str:
    return f"Trial {trial_id} {status}: {_last_line(message)}"
