"""DartsTuner: KerasTuner trials that each run a DARTS search and a proxy retraining.

Tiny everything on 8x8 digits: a supernet with C=4, 3 cells of 1 node searched for one
epoch of 3 steps, a fixed network of the same size retrained for one epoch. The real
two-trial search runs once per module; the failure tests replace the search by a fixed
genotype (`fake_search`), since what they check happens around it.
"""
import json
import logging
import os
import shutil
import sys

import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from darts_tf import Genotype, genotypes
from trainers import data, search
from trainers.search import tuner as tuner_lib
from configs import ConfigError, SearchConfig

# keras_tuner 1.4.8's Oracle calls threading.currentThread().getName() (deprecated names).
pytestmark = pytest.mark.filterwarnings("ignore:(currentThread|getName):DeprecationWarning")

# No collapse monitor: its Hessian-vector product is traced anew in every trial and took
# 2/3 of this file's time (tests/test_monitor.py tests it).
CONFIG = SearchConfig(dataset="digits", epochs=1, batch_size=16, steps_per_epoch=3,
                      init_channels=4, num_cells=3, num_nodes=1, log_every=100,
                      checkpoint_every=100, monitor=False)
FIT = {"epochs": 1, "batch_size": 32, "verbose": 0}
TINY_CELL = Genotype(normal=(("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0),
                             ("sep_conv_3x3", 2)), normal_concat=(2, 3),
                     reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2),
                             ("avg_pool_3x3", 0)), reduce_concat=(2, 3))


def _arrays(split, count):
    images, labels = zip(*data.eval_data("digits", batch_size=512, split=split))
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


@pytest.fixture(name="digits", scope="module")
def fixture_digits():
    """(x, y), (x_val, y_val): 256 training and 128 test digits, normalised, 8x8x1."""
    return _arrays("train", 256), _arrays("test", 128)


def make_tuner(directory, max_trials=2, overwrite=True, hypermodel=None, **kwargs):
    hp = keras_tuner.HyperParameters()
    hp.Choice("alpha_lr", [3e-4, 1e-3])
    return tuner_lib.DartsTuner(
        hypermodel or tuner_lib.DartsHyperModel(num_classes=10, input_channels=1,
                                                init_channels=4, num_cells=3),
        CONFIG, hyperparameters=hp, max_trials=max_trials, seed=7, directory=str(directory),
        project_name="digits", overwrite=overwrite, **kwargs)


@pytest.fixture(name="searched", scope="module")
def fixture_searched(tmp_path_factory, digits):
    """A finished two-trial search on numpy arrays."""
    (x, y), validation = digits
    tuner = make_tuner(tmp_path_factory.mktemp("tuner"))
    tuner.search(x, y, validation_data=validation, **FIT)
    return tuner


def test_best_trial_carries_genotype_and_retrained_model(searched, digits, capsys):
    _, (x_val, y_val) = digits
    best_hp = searched.get_best_hyperparameters()[0]
    genotype = Genotype.from_json(best_hp.get("genotype"))
    assert genotype.num_nodes == CONFIG.num_nodes
    assert best_hp.get("alpha_lr") in (3e-4, 1e-3)

    model = searched.get_best_models()[0]
    assert model.genotype == genotype
    assert model.predict(x_val, verbose=0).shape == (128, 10)
    recorded = searched.oracle.get_best_trials()[0].score
    accuracy = model.evaluate(x_val, y_val, verbose=0, return_dict=True)["accuracy"]
    assert accuracy == pytest.approx(recorded, abs=1e-6)

    searched.results_summary()
    summary = capsys.readouterr().out
    assert "val_accuracy" in summary and '"normal_concat": [2]' in summary


def test_trials_hold_their_search(searched):
    trials = searched.oracle.trials
    assert sorted(trials) == ["0", "1"]
    assert all(t.status == "COMPLETED" for t in trials.values())
    seeds = [t.hyperparameters.get("seed") for t in trials.values()]
    assert len(set(seeds)) == 2
    for trial_id, trial in trials.items():
        trial_dir = searched.get_trial_dir(trial_id)
        on_disk = Genotype.from_json(open(os.path.join(trial_dir, "genotype.json")).read())
        assert on_disk == Genotype.from_json(trial.hyperparameters.get("genotype"))
        config = json.loads(open(os.path.join(trial_dir, "config.json")).read())
        assert config["seed"] == trial.hyperparameters.get("seed")
        assert config["alpha_lr"] == trial.hyperparameters.get("alpha_lr")
        assert config["init_channels"] == CONFIG.init_channels  # not declared: the base
        lines = open(os.path.join(trial_dir, "alphas.jsonl")).read().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [0]
        assert os.path.exists(os.path.join(trial_dir, "epoch_0.json"))


def test_resume_runs_exactly_one_more_trial_on_tf_data(searched, digits, tmp_path):
    """overwrite=False with max_trials=3 continues the project; this trial feeds tf.data."""
    (x, y), (x_val, y_val) = digits
    shutil.copytree(searched.project_dir, tmp_path / "digits")
    before = {t: os.path.getmtime(tmp_path / "digits" / f"trial_{t}" / "genotype.json")
              for t in ("0", "1")}
    tuner = make_tuner(tmp_path, max_trials=3, overwrite=False)
    assert tuner.remaining_trials == 1
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256, seed=0).batch(32)
    tuner.search(train, validation_data=tf.data.Dataset.from_tensor_slices((x_val, y_val))
                 .batch(64), epochs=1, verbose=0)

    trials = tuner.oracle.trials
    assert sorted(trials) == ["0", "1", "2"]
    assert all(t.status == "COMPLETED" for t in trials.values())
    for t, mtime in before.items():  # finished trials were not redone
        assert os.path.getmtime(tmp_path / "digits" / f"trial_{t}" / "genotype.json") == mtime
    Genotype.from_json((tmp_path / "digits" / "trial_2" / "genotype.json").read_text())
    assert trials["2"].hyperparameters.get("seed") == tuner_lib.DartsOracle(seed=7).trial_seed(2)
    assert len({t.hyperparameters.get("seed") for t in trials.values()}) == 3


# Failures ---------------------------------------------------------------------------------


@pytest.fixture(name="fake_search")
def fixture_fake_search(monkeypatch):
    """search.run replaced: trials listed in `fail` raise, the others find TINY_CELL."""
    calls = {"fail": set(), "count": 0}

    def run(config, workdir, model_fn=None, data_fn=None):
        index = calls["count"]
        calls["count"] += 1
        weights, alphas = data_fn(0)
        assert weights.element_spec[0].shape[1:] == (8, 8, 1)
        assert alphas.element_spec[1].dtype == tf.int32
        calls["examples"] = sum(len(batch[1]) for ds in (weights, alphas) for batch in ds)
        if index in calls["fail"]:
            raise FloatingPointError(f"search {index} diverged")
        return search.SearchResult(TINY_CELL.to_dict(), {}, [], 0, None, 0, workdir)
    monkeypatch.setattr(tuner_lib.search_lib, "run", run)
    return calls


class UnbuildableHyperModel(tuner_lib.DartsHyperModel):
    """Builds the placeholder KerasTuner asks for at construction, refuses searched cells."""

    def build(self, hp):
        if Genotype.from_json(hp.get("genotype")) == TINY_CELL:
            raise NotImplementedError("cannot build this cell")
        return super().build(hp)


def test_every_trial_failing_raises_naming_the_first(fake_search, digits, tmp_path, caplog):
    (x, y), validation = digits
    tuner = make_tuner(tmp_path, hypermodel=UnbuildableHyperModel(
        10, input_channels=1, init_channels=4, num_cells=3))
    with caplog.at_level(logging.ERROR, logger="trainers.search.tuner"):
        with pytest.raises(tuner_lib.TrialsFailedError,
                           match=r"All 2 trials .* Trial 0 FAILED: NotImplementedError: cannot "
                                 r"build this cell \(full traceback: 'message' in .*trial_0"):
            tuner.search(x, y, validation_data=validation, **FIT)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "Trial 0 FAILED: NotImplementedError: cannot build this cell" in errors[0]
    assert "line" in errors[0] and "in build" in errors[0]  # where it was raised
    assert os.path.join("trial_0", "trial.json") in errors[0]  # where the traceback is
    assert "Trial 1 FAILED" in errors[1]


def test_missing_tensorboard_fails_before_any_search(fake_search, digits, tmp_path,
                                                     monkeypatch):
    """KerasTuner imports tensorboard in every run_trial; without it each trial would fail."""
    (x, y), validation = digits
    monkeypatch.setitem(sys.modules, "tensorboard.plugins.hparams", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        make_tuner(tmp_path).search(x, y, validation_data=validation, **FIT)
    assert fake_search["count"] == 0


def test_consecutive_failures_stop_with_the_first_failure(fake_search, digits, tmp_path):
    (x, y), validation = digits
    fake_search["fail"] = {0, 1, 2}
    tuner = make_tuner(tmp_path, max_trials=3, max_consecutive_failed_trials=2)
    with pytest.raises(tuner_lib.TrialsFailedError,
                       match=r"2 consecutive failed trials.*Trial 0 FAILED: "
                             r"FloatingPointError: search 0 diverged"):
        tuner.search(x, y, validation_data=validation, **FIT)
    assert fake_search["count"] == 2


def test_one_failed_trial_is_logged_and_the_search_completes(fake_search, digits, tmp_path,
                                                             caplog):
    (x, y), validation = digits
    fake_search["fail"] = {0}
    tuner = make_tuner(tmp_path)
    with caplog.at_level(logging.ERROR, logger="trainers.search.tuner"):
        tuner.search(x, y, validation_data=validation, **FIT)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "Trial 0 FAILED: FloatingPointError: search 0 diverged" in errors[0]
    assert tuner.oracle.trials["0"].status == "FAILED"
    best = tuner.oracle.get_best_trials()[0]
    assert best.trial_id == "1" and best.status == "COMPLETED"
    assert Genotype.from_json(best.hyperparameters.get("genotype")) == TINY_CELL


def test_validation_split_is_kept_out_of_the_search(fake_search, digits, tmp_path):
    (x, y), _ = digits
    fake_search["fail"] = {0}
    with pytest.raises(tuner_lib.TrialsFailedError, match="search 0 diverged"):
        make_tuner(tmp_path, max_trials=1).search(x, y, validation_split=0.25, **FIT)
    assert fake_search["examples"] == 192  # the first 75 % of 256: halves of 96


def test_search_without_validation_data_is_refused(tmp_path, digits):
    (x, y), _ = digits
    with pytest.raises(ValueError, match="'val_accuracy' needs validation_data"):
        make_tuner(tmp_path).search(x, y, **FIT)


# The oracle, the config mapping and the data hook -----------------------------------------


def test_oracle_seeds_are_distinct_deterministic_and_resume(tmp_path):
    def oracle(seed):
        o = tuner_lib.DartsOracle(max_trials=3, seed=seed)
        o._set_project_dir(str(tmp_path), f"oracle_{seed}")  # pylint: disable=protected-access
        return o
    first, again = oracle(0), oracle(0)
    seeds = [first.create_trial(tuner_id).hyperparameters.get("seed") for tuner_id in "ab"]
    assert seeds == [again.trial_seed(0), again.trial_seed(1)]
    assert len(set(seeds)) == 2 and seeds != [oracle(1).trial_seed(i) for i in range(2)]

    state = json.loads(json.dumps(first.get_state()))
    restored = oracle(0)
    restored.trials = first.trials
    restored.set_state(state)
    assert restored.trial_seeds == first.trial_seeds
    assert restored.trial_seed(2) == first.trial_seed(2)


def test_declared_hyperparameters_configure_the_search(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Boolean("unrolled")
    hp.Int("epochs", 1, 3)
    tuner = tuner_lib.DartsTuner(
        tuner_lib.DartsHyperModel(10, init_channels=4, num_cells=3), CONFIG,
        hyperparameters=hp, directory=str(tmp_path), project_name="p")
    hp.values.update(unrolled=True, epochs=3, seed=11, genotype=TINY_CELL.to_json())
    assert tuner.search_config(hp) == CONFIG.replace(unrolled=True, epochs=3, seed=11)


@pytest.mark.parametrize("name, error, match", [
    ("alpha_learning_rate", ValueError, "not SearchConfig fields"),
    ("seed", ValueError, "reserved"),
    ("init_channels", ConfigError, "init_channels=3"),  # its default is invalid
])
def test_declared_hyperparameters_are_checked(tmp_path, name, error, match):
    hp = keras_tuner.HyperParameters()
    hp.Int(name, 3, 5) if name == "init_channels" else hp.Float(name, 0.1, 0.2)
    with pytest.raises(error, match=match):
        tuner_lib.DartsTuner(tuner_lib.DartsHyperModel(10), CONFIG, hyperparameters=hp,
                             directory=str(tmp_path), project_name="p")


def test_build_without_genotype_says_what_is_missing():
    with pytest.raises(ValueError, match="no 'genotype'"):
        tuner_lib.DartsHyperModel(10).build(keras_tuner.HyperParameters())
    hp = keras_tuner.HyperParameters()
    hp.Fixed("genotype", genotypes.DARTS_V1.to_json())
    model = tuner_lib.DartsHyperModel(10, init_channels=4, num_cells=3).build(hp)
    assert model.genotype == genotypes.DARTS_V1 and model.optimizer.built


def _examples(ds):
    return sorted(tuple(np.asarray(x).ravel().tolist()) for batch in ds for x in batch[0])


def test_array_data_split_in_halves_and_reshuffled_per_epoch(digits):
    (x, y), _ = digits
    config = CONFIG.replace(batch_size=8)
    data_fn, shape = data.search_data_fn(x, y, config)
    assert shape == (8, 8, 1)
    weights, alphas = data_fn(0)
    first = [tuple(v.ravel().tolist()) for v in x[:128]]
    assert _examples(weights) == sorted(first)
    assert _examples(alphas) == sorted(tuple(v.ravel().tolist()) for v in x[128:])
    labels = lambda ds: np.concatenate([b[1].numpy() for b in ds])  # noqa: E731
    np.testing.assert_array_equal(labels(data_fn(0)[0]), labels(weights))
    assert not np.array_equal(labels(data_fn(1)[0]), labels(weights))
    with pytest.raises(ValueError, match="fewer than batch_size=16"):
        data.search_data_fn(x[:20], y[:20], CONFIG)


def test_dataset_split_is_disjoint_complete_and_order_free(digits):
    (x, y), _ = digits
    reshuffled = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256).batch(32)
    config = CONFIG.replace(batch_size=1)
    data_fn, shape = data.search_data_fn(reshuffled, None, config)
    assert shape == (8, 8, 1)
    weights, alphas = data_fn(0)
    w, a = _examples(weights), _examples(alphas)
    assert sorted(w + a) == sorted(tuple(v.ravel().tolist()) for v in x)
    assert 0.35 < len(w) / len(x) < 0.65
    assert _examples(data_fn(1)[0]) == w  # the same split although the input reshuffles
    with pytest.raises(ValueError, match="infinite"):
        data.search_data_fn(reshuffled.repeat(), None, config)
