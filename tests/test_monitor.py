"""The collapse monitor: the Hessian eigenvalue against a dense Hessian, replicas, the fixed
batch across a resume, and its values in a run's files (a supernet and a user model)."""
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import darts_tf
from configs import SearchConfig
from trainers import data, search
from trainers.runtime.losses import cross_entropy, global_mean
from trainers.search import loop
from trainers.search.monitor import CollapseMonitor

CONFIG = SearchConfig(dataset="digits", data_limit=200, epochs=1, steps_per_epoch=2,
                      batch_size=8, init_channels=4, num_cells=3, num_nodes=1, seed=3,
                      monitor_iterations=3, log_every=1)


def tiny_supernet():
    return darts_tf.Supernet(num_classes=10, init_channels=4, num_cells=3, num_nodes=1,
                             input_channels=1,
                             primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"))


def _data_fn(epoch, seed=3):
    return data.search_data("digits", batch_size=8, seed=seed, epoch=epoch, limit=200)


def _first_val_batch(seed=3):
    return next(iter(_data_fn(0, seed)[1]))


def _trainer(strategy=None):
    keras.utils.set_random_seed(1)
    trainer = search.SearchTrainer(tiny_supernet, CONFIG, strategy, input_shape=(8, 8, 1))
    # Alphas away from their 1e-3 init, so that the Hessian has some structure.
    rng = np.random.default_rng(0)
    for alpha in trainer.model.arch_variables:
        alpha.assign(rng.normal(scale=1.0, size=alpha.shape).astype(np.float32))
    return trainer


def dense_hessian(model, batch):
    """d^2 L_val / d alpha^2 (16 x 16) by nested tapes (jacobian of the gradient), written
    without the architect or the monitor."""
    alphas = list(model.arch_variables)
    alpha_ids = {id(v) for v in alphas}
    values = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    position = [i for i, v in enumerate(model.trainable_variables) if id(v) in alpha_ids]
    nt = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
    flat = tf.concat([tf.reshape(tf.convert_to_tensor(a), [-1]) for a in alphas], 0)
    with tf.GradientTape() as outer:
        outer.watch(flat)
        with tf.GradientTape() as inner:
            inner.watch(flat)
            parts = tf.split(flat, [int(np.prod(a.shape)) for a in alphas])
            for i, p, a in zip(position, parts, alphas):
                values[i] = tf.reshape(p, a.shape)
            logits, _ = model.stateless_call(values, nt, batch[0], training=True)
            loss = global_mean(cross_entropy(batch[1], logits), batch[0].shape[0])
        grad = inner.gradient(loss, flat)
    return outer.jacobian(grad, flat).numpy()


@pytest.fixture(name="trainer", scope="module")
def fixture_trainer():
    return _trainer()


def test_power_iteration_finds_the_dense_hessians_dominant_eigenvalue(trainer):
    batch = _first_val_batch()
    hessian = dense_hessian(trainer.model, batch)
    assert np.abs(hessian - hessian.T).max() < 1e-5 * np.abs(hessian).max()
    eigenvalues = np.linalg.eigvalsh((hessian + hessian.T) / 2)
    dominant = eigenvalues[np.argmax(np.abs(eigenvalues))]
    monitor = CollapseMonitor(trainer, batch)
    # The product itself: H v for a random v.
    v = np.random.default_rng(1).normal(size=16).astype(np.float32)
    hv = monitor.hessian_vector_product(v).numpy()
    assert np.linalg.norm(hv - hessian @ v) < 1e-5 * np.linalg.norm(hessian @ v)
    cold, _ = CollapseMonitor(trainer, batch).power_iteration(3)  # from the seeded random v
    power, residual = monitor.power_iteration(30)
    error = abs(power - dominant) / abs(dominant)
    warm, _ = monitor.power_iteration(3)  # from the stored v: the next epoch's start
    print(f"eigenvalues {np.round(eigenvalues, 4)}; power iteration (30) {power:.6f}, "
          f"relative error {error:.1e}, residual {residual:.1e}; 3 iterations from a random "
          f"start {cold:.4f}, from the last v {warm:.6f}")
    assert error < 1e-3 and residual < 1e-2
    assert abs(warm - dominant) / abs(dominant) < 1e-3
    assert monitor.traces == 1
    # In chunks of 4 (each with its own batch-norm statistics): the sum of the chunks' products
    # (each chunk's loss is divided by the batch size, 8, as the whole batch's).
    halves = [CollapseMonitor(trainer, (batch[0][i:i + 4], batch[1][i:i + 4]), chunk=None)
              for i in (0, 4)]
    expected = sum(h.hessian_vector_product(v).numpy() for h in halves)
    chunked_monitor = CollapseMonitor(trainer, batch, chunk=4)
    chunked = chunked_monitor.hessian_vector_product(v).numpy()
    assert chunked_monitor.traces == 1  # one function for both chunks
    assert np.linalg.norm(chunked - expected) < 1e-5 * np.linalg.norm(expected)
    assert np.linalg.norm(chunked - hv) > 1e-3 * np.linalg.norm(hv)  # not the whole batch's
    # Read-only: nothing in the model moved (batch-norm statistics included).
    before = [v.numpy().copy() for v in trainer.model.variables]
    monitor.dominant_eigenvalue()
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, trainer.model.variables))


def test_mirrored_computes_the_single_device_value(trainer, mirrored):
    """Each replica takes its half of each chunk of the fixed batch (the chunk's statistics in
    the batch norms); the summed product is the single-device one, the same for every replica."""
    multi = search.SearchTrainer(tiny_supernet, CONFIG, mirrored, input_shape=(8, 8, 1))
    for a, b in zip(multi.model.variables, trainer.model.variables):
        a.assign(b.numpy())
    batch = _first_val_batch()
    v = np.random.default_rng(2).normal(size=16).astype(np.float32)
    one = CollapseMonitor(trainer, batch, chunk=4)
    two = CollapseMonitor(multi, batch, chunk=4)
    expected, got = one.hessian_vector_product(v).numpy(), two.hessian_vector_product(v).numpy()
    error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    print(f"H v, two replicas vs one device: relative error {error:.1e}")
    assert error < 1e-5
    eig_one, eig_two = one.dominant_eigenvalue(), two.dominant_eigenvalue()
    assert abs(eig_two - eig_one) < 1e-4 * abs(eig_one)


def test_a_resumed_run_measures_on_the_batch_it_started_with(tmp_path):
    """The fixed batch is in the checkpoint: restored even if epoch 0's data now differs."""
    first = loop._prepare(CONFIG, tmp_path, tiny_supernet, _data_fn)
    started_with = first.monitor.images.numpy()
    np.testing.assert_array_equal(started_with, _first_val_batch()[0].numpy())
    first.state.save()
    other = lambda epoch: _data_fn(epoch, seed=4)  # noqa: E731
    assert not np.array_equal(_first_val_batch(seed=4)[0].numpy(), started_with)
    resumed = loop._prepare(CONFIG, tmp_path, tiny_supernet, other)
    assert resumed.resumed_from == 0
    np.testing.assert_array_equal(resumed.monitor.images.numpy(), started_with)
    np.testing.assert_array_equal(resumed.monitor.labels.numpy(), _first_val_batch()[1].numpy())
    np.testing.assert_array_equal(resumed.monitor.vector.numpy(), first.monitor.vector.numpy())


def _tags(workdir):
    tags = set()
    for event_file in (Path(workdir) / "tensorboard").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(v.tag for v in event.summary.value)
    return tags


def test_a_run_records_the_monitor_values(tmp_path, caplog):
    with caplog.at_level("INFO", logger="trainers"):
        result = search.run(CONFIG, tmp_path, model_fn=tiny_supernet, data_fn=_data_fn)
    record = json.loads((tmp_path / "epoch_0.json").read_text())
    metrics = record["metrics"]
    genotype = darts_tf.Genotype.from_dict(result.architecture)
    assert metrics["skip_connect_normal"] == sum(op == "skip_connect" for op, _ in genotype.normal)
    assert metrics["skip_connect_reduce"] == sum(op == "skip_connect" for op, _ in genotype.reduce)
    assert np.isfinite(metrics["hessian_eigenvalue"]) and record["monitor_seconds"] > 0
    assert metrics["hessian_residual"] >= 0
    assert {"monitor/hessian_eigenvalue", "monitor/skip_connect_normal",
            "monitor/skip_connect_reduce"} <= _tags(tmp_path)
    assert "hessian_eigenvalue" in caplog.text and "skip_connect_normal" in caplog.text
    assert result.step_traces == 1  # the monitor's function is not the step


class UserModel(keras.Model):
    """A user model with alphas and no genotype: the eigenvalue, no skip counts."""

    def __init__(self):
        super().__init__()
        self.stem = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
        self.branch = keras.layers.Conv2D(4, 3, padding="same", activation="tanh")
        self.head = keras.layers.Dense(10)
        self.alpha = self.add_weight(name="alpha", shape=(2,), initializer="zeros")

    @property
    def arch_variables(self):
        return [self.alpha]

    def build(self, input_shape):
        self.stem.build(input_shape)
        self.branch.build((*input_shape[:-1], 4))
        self.head.build((None, 4))

    def call(self, x, training=False):
        h = self.stem(x)
        p = tf.nn.softmax(tf.convert_to_tensor(self.alpha))
        return self.head(tf.reduce_mean(p[0] * h + p[1] * self.branch(h), axis=[1, 2]))


def test_a_user_model_gets_the_eigenvalue_without_skip_counts(tmp_path):
    search.run(CONFIG, tmp_path, model_fn=UserModel, data_fn=_data_fn)
    metrics = json.loads((tmp_path / "epoch_0.json").read_text())["metrics"]
    assert np.isfinite(metrics["hessian_eigenvalue"]) and metrics["hessian_eigenvalue"] != 0
    assert "skip_connect_normal" not in metrics
