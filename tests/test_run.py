"""The run skeleton (trainers/runtime/run.py): position and checkpoints by variable name,
checkpoints of earlier versions (resumed or refused), the same-run check, atomic files."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import search as search_presets
from trainers.runtime import run as run_lib
from trainers.runtime.optim import tf_variable

STRATEGY = tf.distribute.get_strategy()


def _model(seed):
    keras.utils.set_random_seed(seed)
    # Named layers, as the darts_tf networks name theirs: Keras numbers unnamed ones per process.
    model = keras.Sequential([keras.layers.Dense(3, name="d1"),
                              keras.layers.BatchNormalization(name="bn"),
                              keras.layers.Dense(2, name="d2")])
    model.build((None, 4))
    return model


def _state(workdir, model, lr, **kwargs):
    return run_lib.RunState(workdir, STRATEGY, model, {"lr": lr}, metrics=("loss", "acc"),
                            checkpoint_every=kwargs.pop("checkpoint_every", 2), **kwargs)


def test_position_metrics_and_variables_come_back_by_name(tmp_path):
    model, lr = _model(0), tf.Variable(0.5)
    state = _state(tmp_path, model, lr)
    assert state.restore() is None and state.chief
    for loss in (1.0, 3.0, 5.0):  # a checkpoint after the second step (checkpoint_every=2)
        state.step_done({"acc": 0.5, "loss": loss})
    assert state.epoch_means() == {"loss": 3.0, "acc": 0.5}
    saved = [v.numpy() for v in model.variables]
    state.step_in_epoch, state.global_step = 2, 2  # as of that checkpoint
    state.sums = np.array([4.0, 1.0])
    state.save()
    # A fresh process's rebuild: other initial values, the same names.
    other, other_lr = _model(1), tf.Variable(0.0)
    assert not np.allclose(other.variables[0].numpy(), saved[0])
    resumed = _state(tmp_path, other, other_lr)
    assert resumed.restore() == 2
    assert (resumed.epoch, resumed.step_in_epoch) == (0, 2)
    assert resumed.epoch_means() == {"loss": 2.0, "acc": 0.5}
    assert float(other_lr.numpy()) == 0.5
    for a, b in zip(other.variables, saved):
        np.testing.assert_array_equal(a.numpy(), b)
    assert run_lib.variable_names(other, other.variables)[:2] == ["d1/kernel", "d1/bias"]


def test_a_non_finite_loss_is_not_counted_and_not_saved(tmp_path):
    state = _state(tmp_path, _model(0), tf.Variable(0.1), checkpoint_every=1)
    state.step_done({"loss": 1.0, "acc": 1.0})
    with pytest.raises(run_lib.DivergedError, match=r"epoch 0 step 1 \(global step 1\)"):
        state.step_done({"loss": float("nan"), "acc": 1.0})
    assert state.global_step == 1 and state.manager.latest_checkpoint.endswith("ckpt-1")


def test_a_search_checkpoint_of_darts_tf_0_1_resumes(tmp_path):
    """0.1's search checkpoints had the same keys but no wall time: they resume."""
    model, lr = _model(0), tf.Variable(0.25)
    names = run_lib.variable_names(model, model.variables)
    counters = {k: tf.Variable(v, dtype=tf.int64) for k, v in
                (("epoch", 1), ("step_in_epoch", 3), ("step", 9))}
    old = tf.train.Checkpoint(
        model_variables=dict(zip(names, (tf_variable(v) for v in model.variables))), lr=lr,
        metric_sums=tf.Variable(np.array([6.0, 1.5])), **counters)
    tf.train.CheckpointManager(old, str(tmp_path / "checkpoints"), 3).save(checkpoint_number=9)
    other, other_lr = _model(1), tf.Variable(0.0)
    state = _state(tmp_path, other, other_lr)
    assert state.restore() == 9
    assert (state.epoch, state.step_in_epoch, state.wall_time) == (1, 3, 0.0)
    assert state.epoch_means() == {"loss": 2.0, "acc": 0.5}
    for a, b in zip(other.variables, model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_retrain_checkpoint_of_darts_tf_0_1_is_refused_with_a_reason(tmp_path):
    """0.1's retraining kept the model variables as a list (by position): refused, saying so."""
    model = _model(0)
    old = tf.train.Checkpoint(model_variables=[tf_variable(v) for v in model.variables],
                              epoch=tf.Variable(0, dtype=tf.int64))
    tf.train.CheckpointManager(old, str(tmp_path / "checkpoints"), 3).save(checkpoint_number=4)
    with pytest.raises(run_lib.RunMismatchError,
                       match="older darts-tf.*by position.*new work directory"):
        _state(tmp_path, _model(1), tf.Variable(0.0)).restore()


def test_the_same_run_check_names_what_differs(tmp_path):
    config = search_presets.digits()
    run_lib.check_same_run(config, tmp_path)  # nothing there yet
    run_lib.write_json(tmp_path / "config.json", config.to_dict())
    (tmp_path / "genotype.json").write_text("A")
    run_lib.check_same_run(config.replace(log_every=1, checkpoint_every=7), tmp_path,
                           {"genotype.json": "A"})  # resumable changes
    with pytest.raises(run_lib.RunMismatchError, match=r"different \['seed', 'genotype'\]"):
        run_lib.check_same_run(config.replace(seed=9), tmp_path, {"genotype.json": "B"})


def test_jsonl_lines_replace_replayed_epochs_and_json_writes_leave_no_temp_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for epoch in (0, 1, 2):
        run_lib.write_jsonl_line(path, {"epoch": epoch, "v": epoch})
    run_lib.write_jsonl_line(path, {"epoch": 1, "v": "again"})  # a resumed epoch 1
    assert run_lib.read_jsonl(path) == [{"epoch": 0, "v": 0}, {"epoch": 1, "v": "again"}]
    assert run_lib.read_jsonl(path, before_epoch=1) == [{"epoch": 0, "v": 0}]
    run_lib.write_json(tmp_path / "a.json", {"b": 1, "a": [2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [2], "b": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "metrics.jsonl"]
