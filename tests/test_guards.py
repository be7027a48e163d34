"""Collapse guards: DARTS+ early stopping, SDARTS-RS noise, weights-only warm-up.

Early stopping is driven through the loop's own epoch-end code (`loop._finish_epoch`,
`loop._conclude`) with alphas set by hand, without training; a stopped search is then
run again through `search.run`. The tiny supernet has 1 node: 2 edges per cell, over
the ops (none, max_pool_3x3, skip_connect, sep_conv_3x3).
"""
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import darts_tf
from configs import ConfigError, SearchConfig
from trainers import data, search
from trainers.search import loop

OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
CONFIG = SearchConfig(dataset="digits", data_limit=200, epochs=8, steps_per_epoch=2,
                      batch_size=8, init_channels=4, num_cells=3, num_nodes=1, seed=3,
                      monitor=False, log_every=1)


def tiny_supernet():
    return darts_tf.Supernet(num_classes=10, init_channels=4, num_cells=3, num_nodes=1,
                             input_channels=1, primitives=OPS)


def _data_fn(epoch):
    return data.search_data("digits", batch_size=8, seed=3, epoch=epoch, limit=200)


def _alphas(first: str, second: str) -> np.ndarray:
    """A (2 edges, 4 ops) alpha matrix whose edges pick `first` and `second`."""
    alpha = np.zeros((2, 4), np.float32)
    alpha[0, OPS.index(first)] = 2.0
    alpha[1, OPS.index(second)] = 1.0
    return alpha


def _drive(config, workdir, trajectory):
    """The loop's epoch-end logic on hand-set normal-cell alphas, one per epoch, until a stop.
    Returns the (concluded) architecture and the genotype of each epoch."""
    search_ = loop._prepare(config, Path(workdir), tiny_supernet, _data_fn)
    model, genotypes = search_.trainer.model, []
    reduce = _alphas("max_pool_3x3", "max_pool_3x3")
    with search_.state.summary_writer().as_default():
        for alpha in trajectory:
            model.alpha_normal.assign(alpha)
            model.alpha_reduce.assign(reduce)
            genotypes.append(model.genotype().to_dict())
            loop._finish_epoch(search_.trainer, search_.state, None, search_.stopping)
            if search_.stopping.stopped:
                break
    return loop._conclude(search_), genotypes


def test_stops_on_skip_connects_with_the_genotype_from_before(tmp_path):
    config = CONFIG.replace(early_stop=True, early_stop_skip_connect=2,
                            early_stop_patience=None)
    trajectory = [_alphas("sep_conv_3x3", "sep_conv_3x3"),   # 0 skips
                  _alphas("skip_connect", "sep_conv_3x3"),   # 1 skip
                  _alphas("skip_connect", "skip_connect"),   # 2 skips: stop after epoch 2
                  _alphas("sep_conv_3x3", "sep_conv_3x3")]   # never reached
    architecture, genotypes = _drive(config, tmp_path, trajectory)
    assert len(genotypes) == 3
    assert architecture == genotypes[1] != genotypes[2]
    assert json.loads((tmp_path / "genotype.json").read_text()) == genotypes[1]
    record = json.loads((tmp_path / "epoch_2.json").read_text())
    stop = record["early_stop"]
    assert stop["trigger"] == "skip_connect" and stop["epoch"] == 2
    assert stop["architecture_epoch"] == 1 and stop["architecture"] == genotypes[1]
    assert "holds 2 skip-connects (early_stop_skip_connect=2)" in stop["message"]
    assert record["architecture"] == genotypes[2]  # the epoch's own genotype, as always
    assert "early_stop" not in json.loads((tmp_path / "epoch_1.json").read_text())
    # Run again: the stop is in the checkpoint, so nothing runs and the result is the same.
    again = search.run(config, tmp_path, model_fn=tiny_supernet, data_fn=_data_fn)
    assert again.step_traces == 0 and again.global_step == 0
    assert again.architecture == genotypes[1] and again.stopped == stop
    assert json.loads((tmp_path / "genotype.json").read_text()) == genotypes[1]
    assert not (tmp_path / "epoch_3.json").exists()


def test_stops_when_the_genotype_is_stable_and_ignores_the_warm_up(tmp_path):
    """Patience 2: the genotype of epochs 1, 2, 3 is the same (its alphas are not): stop after
    epoch 3. Epoch 0 is a warm-up epoch (arch_start_epoch=1): not judged."""
    config = CONFIG.replace(early_stop=True, early_stop_skip_connect=None,
                            early_stop_patience=2, arch_start_epoch=1)
    sep_max = _alphas("sep_conv_3x3", "max_pool_3x3")
    trajectory = [_alphas("max_pool_3x3", "max_pool_3x3"), sep_max, sep_max * 2,
                  sep_max * 3, _alphas("skip_connect", "skip_connect")]
    architecture, genotypes = _drive(config, tmp_path, trajectory)
    assert len(genotypes) == 4 and genotypes[1] == genotypes[2] == genotypes[3] != genotypes[0]
    stop = json.loads((tmp_path / "epoch_3.json").read_text())["early_stop"]
    assert stop["trigger"] == "patience" and stop["architecture_epoch"] == 2
    assert "has not changed for 2 epochs (early_stop_patience=2)" in stop["message"]
    assert architecture == genotypes[2]
    assert json.loads((tmp_path / "genotype.json").read_text()) == genotypes[2]


def test_no_stop_without_early_stop(tmp_path):
    trajectory = [_alphas("skip_connect", "skip_connect")] * 3
    architecture, genotypes = _drive(CONFIG.replace(epochs=3), tmp_path, trajectory)
    assert len(genotypes) == 3 and architecture == genotypes[2]
    assert "early_stop" not in json.loads((tmp_path / "epoch_2.json").read_text())


def _choice_model():
    inputs = keras.Input((8, 8, 1))
    x = darts_tf.LayerChoice([keras.layers.Conv2D(4, 3, padding="same", name="conv3"),
                              keras.layers.MaxPooling2D(3, 1, padding="same", name="pool")],
                             label="block")(keras.layers.Conv2D(4, 3, padding="same")(inputs))
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x)))


def test_nonsense_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"sdarts_epsilon=-0\.1"):
        CONFIG.replace(sdarts_epsilon=-0.1)
    with pytest.raises(ConfigError, match=r"arch_start_epoch=8.*epochs=8"):
        CONFIG.replace(arch_start_epoch=8)
    with pytest.raises(ConfigError, match="no trigger"):
        CONFIG.replace(early_stop=True, early_stop_skip_connect=None, early_stop_patience=None)
    # A user choice model has no genotype, so no skip-connects to count: refused before
    # anything is written. Its decisions can still stop on patience.
    with pytest.raises(ConfigError, match=r"early_stop_skip_connect=2: model .* no genotype"):
        search.run(CONFIG.replace(early_stop=True), tmp_path / "new", model_fn=_choice_model,
                   data_fn=_data_fn)
    assert not (tmp_path / "new").exists()


# SDARTS-RS -----------------------------------------------------------------------------------


class TinyMixNet(keras.Model):
    """Conv stem -> softmax(alpha)-weighted mix of two branches -> dense (a user model)."""

    def __init__(self):
        super().__init__()
        self.stem = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
        self.branches = [keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
                         keras.layers.AveragePooling2D(3, strides=1, padding="same")]
        self.head = keras.layers.Dense(10)
        self.alpha = self.add_weight(name="alpha", shape=(2,),
                                     initializer=keras.initializers.RandomNormal(stddev=0.1))

    @property
    def arch_variables(self):
        return [self.alpha]

    def build(self, input_shape):
        self.stem.build(input_shape)
        for branch in self.branches:
            branch.build((*input_shape[:-1], 4))
        self.head.build((None, 4))

    def call(self, x, training=False):
        h = self.stem(x)
        p = tf.nn.softmax(tf.convert_to_tensor(self.alpha))
        return self.head(tf.reduce_mean(p[0] * self.branches[0](h) + p[1] * self.branches[1](h),
                                        axis=[1, 2]))


def _trainer(strategy, config):
    keras.utils.set_random_seed(0)
    return search.SearchTrainer(TinyMixNet, config, strategy, input_shape=(8, 8, 1))


def test_sdarts_noise_is_bounded_and_a_function_of_seed_and_step(mirrored):
    config = SearchConfig(batch_size=8, sdarts_epsilon=0.3, seed=5)
    trainer = _trainer(None, config)
    zeros = [tf.zeros((14, 8)), tf.zeros((6,))]
    noise = [n.numpy() for n in trainer.perturbed(zeros, step=tf.constant(7, tf.int64))]
    flat = np.concatenate([n.ravel() for n in noise])
    print(f"noise: min {flat.min():.4f}, max {flat.max():.4f}, mean {flat.mean():.4f}")
    assert np.all(np.abs(flat) <= 0.3) and flat.max() > 0.25 and flat.min() < -0.25
    assert abs(flat.mean()) < 0.05  # U(-0.3, 0.3) over 118 values: sd of the mean 0.016
    assert not np.allclose(noise[0][:6, 0], noise[1])  # each variable its own draws
    # The same (seed, step): the same noise, in another trainer too; another step or seed: not.
    again = _trainer(None, config).perturbed(zeros, step=tf.constant(7, tf.int64))
    np.testing.assert_array_equal(again[0].numpy(), noise[0])
    other_step = trainer.perturbed(zeros, step=tf.constant(8, tf.int64))[0].numpy()
    other_seed = _trainer(None, config.replace(seed=6)).perturbed(
        zeros, step=tf.constant(7, tf.int64))[0].numpy()
    assert np.abs(other_step - noise[0]).max() > 0.1 and np.abs(other_seed - noise[0]).max() > 0.1
    # Every replica draws the same noise.
    multi = _trainer(mirrored, config)
    per_replica = mirrored.run(tf.function(
        lambda: multi.perturbed([tf.zeros((14, 8))], step=tf.constant(7, tf.int64))[0]))
    copies = [t.numpy() for t in per_replica.values]
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1])
    np.testing.assert_array_equal(copies[0], noise[0])


def test_sdarts_steps_match_across_replicas_and_differ_from_plain_steps(mirrored):
    """Two replicas on half batches make the same noisy weight steps as one device (the noise
    is drawn per step, the same everywhere); without noise the weights end elsewhere."""
    config = SearchConfig(batch_size=8, sdarts_epsilon=0.5, w_lr=0.1, alpha_lr=3e-3)
    single, multi, plain = (_trainer(None, config), _trainer(mirrored, config),
                            _trainer(None, config.replace(sdarts_epsilon=0.0)))
    for model in (multi.model, plain.model):
        for a, b in zip(model.variables, single.model.variables):
            a.assign(b.numpy())
    train, val = data.search_data("digits", batch_size=8, seed=0, epoch=0, limit=200)
    batches = tf.data.Dataset.zip((train, val)).take(3)
    for t, v in batches:
        single.step(t, v)
        plain.step(t, v)
    for t, v in mirrored.experimental_distribute_dataset(batches):
        multi.step(t, v)
    assert int(single.steps.numpy()) == int(multi.steps.numpy()) == 3
    for a, b, c in zip(multi.model.trainable_variables, single.model.trainable_variables,
                       plain.model.trainable_variables):
        assert np.abs(a.numpy() - b.numpy()).max() < 1e-5, b.path
        copies = [np.asarray(x.numpy()) for x in a.value.values]
        np.testing.assert_array_equal(copies[0], copies[1])
    kernel = single.model.stem.kernel
    assert np.abs(kernel.numpy() - plain.model.stem.kernel.numpy()).max() > 1e-4


# Warm-up --------------------------------------------------------------------------------------


def test_warm_up_keeps_the_alphas_then_moves_them_with_each_step_traced_once(tmp_path):
    initial = {}

    def model_fn():
        model = tiny_supernet()
        initial.update(normal=model.alpha_normal.numpy().copy())
        return model

    config = CONFIG.replace(epochs=3, arch_start_epoch=2, alpha_lr=0.01)
    result = search.run(config, tmp_path, model_fn=model_fn, data_fn=_data_fn)
    lines = [json.loads(l) for l in (tmp_path / "alphas.jsonl").read_text().splitlines()]
    normal = [np.asarray(l["alphas"]["alpha_normal"], np.float32) for l in lines]
    for epoch in (0, 1):  # warm-up: not a bit changed
        np.testing.assert_array_equal(normal[epoch], initial["normal"])
    moved = float(np.abs(normal[2] - initial["normal"]).max())
    print(f"alpha change in epoch 2: {moved:.2e}")
    assert moved > 1e-3
    # Two step functions (warm-up, full), each traced once over 3 epochs of 2 steps.
    assert result.step_traces == 2 and result.global_step == 6
    # The warm-up epochs report L_val (a forward pass) like the others.
    assert all(np.isfinite(h["val_loss"]) and h["val_loss"] > 0 for h in result.history)
