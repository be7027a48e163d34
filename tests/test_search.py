"""The search loop: replicas, tracing, resume after SIGKILL, determinism, divergence, config.

Two logical CPUs come from tests/conftest.py. Runs use a tiny supernet (3 cells,
1 node, 4 candidate ops) on 8x8 digits; the replica tests use a smaller
stand-in model, with or without batch norm.
"""
import collections
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import darts_tf
from configs import ConfigError, SearchConfig
from trainers import data, search
from trainers.runtime import distribute, run as run_lib
from trainers.runtime.optim import MomentumSGD

ROOT = Path(__file__).resolve().parents[1]
RUN_CONFIG = SearchConfig(dataset="digits", data_limit=400, epochs=2, steps_per_epoch=6,
                          batch_size=8, init_channels=4, num_cells=3, num_nodes=1,
                          checkpoint_every=2, log_every=1, seed=3, deterministic=True)


def tiny_supernet(**method):
    """The tiny supernet; `method`: Supernet's method options (method, partial_channels, ...)."""
    return darts_tf.Supernet(num_classes=10, init_channels=4, num_cells=3, num_nodes=1,
                             input_channels=1,
                             primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"),
                             **method)


def tiny_model_fn(config):
    """`tiny_supernet` with the method options of `config`."""
    return functools.partial(tiny_supernet, **config.supernet_options())


class TinyMixNet(keras.Model):
    """Conv stem [-> Keras BN] -> softmax(alpha)-weighted mix of three branches -> dense."""

    def __init__(self, batch_norm=False):
        super().__init__()
        self.stem = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
        self.norm = keras.layers.BatchNormalization() if batch_norm else None
        self.branches = [keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
                         keras.layers.Conv2D(4, 1, activation="tanh"),
                         keras.layers.AveragePooling2D(3, strides=1, padding="same")]
        self.head = keras.layers.Dense(10)
        self.alpha = self.add_weight(name="alpha", shape=(3,),
                                     initializer=keras.initializers.RandomNormal(stddev=0.1))

    @property
    def arch_variables(self):
        return [self.alpha]

    def build(self, input_shape):
        self.stem.build(input_shape)
        hidden = (*input_shape[:-1], 4)
        for layer in [self.norm, *self.branches]:
            if layer is not None:
                layer.build(hidden)
        self.head.build((None, 4))

    def call(self, x, training=False):
        h = self.stem(x)
        if self.norm is not None:
            h = self.norm(h, training=training)
        p = tf.nn.softmax(tf.convert_to_tensor(self.alpha))
        h = tf.add_n([p[i] * branch(h) for i, branch in enumerate(self.branches)])
        return self.head(tf.reduce_mean(h, axis=[1, 2]))


def test_momentum_sgd_is_pytorch_sgd_after_clip_grad_norm():
    """clip_grad_norm_(5) on the raw gradient, then buf = mu * buf + g + wd * w, w -= lr * buf."""
    w = keras.Variable(np.array([1.0, -2.0, 3.0], np.float32))
    opt = MomentumSGD([w], momentum=0.9, weight_decay=0.1, clip_norm=5.0)
    expected, buf = w.numpy().astype(np.float64), np.zeros(3)
    for g, lr in (([3.0, 4.0, 12.0], 0.5), ([0.1, -0.2, 0.3], 0.25)):  # norm 13: clipped; not
        opt.apply([tf.constant(g)], [w], tf.constant(lr))
        g = np.array(g) * min(1.0, 5.0 / (np.linalg.norm(g) + 1e-6))
        buf = 0.9 * buf + g + 0.1 * expected
        expected = expected - lr * buf
        np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(opt.momentum_buffers[0].numpy(), buf, rtol=1e-6)


def _batches(count, seed=0):
    """`count` (train, val) pairs of global batches of 8 digits."""
    train, val = data.search_data("digits", batch_size=8, seed=seed, epoch=0, limit=400)
    return tf.data.Dataset.zip((train, val)).take(count)


def _trainer(strategy, config, batch_norm):
    keras.utils.set_random_seed(0)
    return search.SearchTrainer(lambda: TinyMixNet(batch_norm), config, strategy,
                                input_shape=(8, 8, 1))


def _replicas(variable):
    """The per-device copies of a (Keras) variable."""
    return [np.asarray(c.numpy()) for c in variable.value.values]


@pytest.mark.parametrize("unrolled", [False, True], ids=["first_order", "second_order"])
def test_mirrored_matches_the_default_strategy(unrolled, mirrored):
    """Two replicas on half batches make the same updates as one device on the whole batch."""
    config = SearchConfig(batch_size=8, unrolled=unrolled, alpha_lr=3e-3, w_lr=0.1)
    single = _trainer(None, config, batch_norm=False)
    multi = _trainer(mirrored, config, batch_norm=False)
    for a, b in zip(multi.model.variables, single.model.variables):
        a.assign(b.numpy())
    initial = {v.path: v.numpy() for v in single.model.variables}
    for train, val in _batches(4):
        single.step(train, val)
    # The same 4 batches from two distributed datasets: the step must not retrace.
    for part in (_batches(4).take(2), _batches(4).skip(2)):
        for train, val in mirrored.experimental_distribute_dataset(part):
            multi.step(train, val)
    assert multi.step_traces == 1

    for a, b in zip(multi.model.variables, single.model.variables):
        change = float(np.max(np.abs(b.numpy() - initial[b.path])))
        diff = float(np.max(np.abs(a.numpy() - b.numpy())))
        print(f"{b.path}: change {change:.2e}, mirrored - default {diff:.2e}")
        assert change > 1e-3 and diff < max(1e-6, 1e-3 * change), b.path
        copies = _replicas(a)
        assert np.array_equal(copies[0], copies[1]), a.path


def test_mirrored_supernet_matches_the_default_strategy(mirrored):
    """The DARTS supernet's batch norms use global-batch statistics under a strategy, so two
    replicas compute the same function, hence the same updates, as one device. First order:
    the second-order step's extra passes are the same mirrored code, checked above on the
    small network (the same updates, the replica shares of the alpha gradient), and the
    supernet's second-order step took 46 s here against 22 s."""
    config = SearchConfig(batch_size=8, alpha_lr=3e-3, w_lr=0.1)
    assert_mirrored_matches_one_device(tiny_supernet, config, mirrored, steps=3)


def assert_mirrored_matches_one_device(model_fn, config, mirrored, steps):
    """`steps` steps of one trainer under `mirrored` (two replicas, half batches) and of one
    on the default strategy, from the same variables: the same updates (within float
    noise), identical replica copies, and most variables (weights, alphas, BN statistics)
    moved. Returns the mirrored trainer and the largest difference."""
    keras.utils.set_random_seed(0)
    single = search.SearchTrainer(model_fn, config, None, input_shape=(8, 8, 1))
    multi = search.SearchTrainer(model_fn, config, mirrored, input_shape=(8, 8, 1))
    for a, b in zip(multi.model.variables, single.model.variables):
        a.assign(b.numpy())
    initial = [v.numpy() for v in single.model.variables]
    for train, val in _batches(steps):
        single.step(train, val)
    for train, val in mirrored.experimental_distribute_dataset(_batches(steps)):
        multi.step(train, val)
    moved, worst = 0, 0.0
    for a, b, before in zip(multi.model.variables, single.model.variables, initial):
        change = float(np.max(np.abs(b.numpy() - before)))
        diff = float(np.max(np.abs(a.numpy() - b.numpy())))
        worst = max(worst, diff)
        assert diff < max(2e-5, 2e-3 * change), (b.path, diff, change)
        copies = _replicas(a)
        assert np.array_equal(copies[0], copies[1]), a.path
        moved += change > 1e-4
    assert moved > len(initial) // 2
    return multi, worst


@pytest.mark.parametrize("hessian", ["finite_difference", "exact"])
def test_replica_shares_of_the_alpha_gradient_sum_to_the_single_device_one(hessian, mirrored):
    """w', dw' and eps are built from all-reduced gradients; the replica shares then add up."""
    config = SearchConfig(batch_size=8, unrolled=True, hessian=hessian, w_lr=0.5)
    train, val = next(iter(_batches(1)))
    single = _trainer(None, config, batch_norm=False)
    multi = _trainer(mirrored, config, batch_norm=False)
    for a, b in zip(multi.model.variables, single.model.variables):
        a.assign(b.numpy())
    expected = single.architect.gradients(train, val, lr=0.5).grads[0].numpy()
    dist = mirrored.experimental_distribute_dataset(_batches(1))
    train_d, val_d = next(iter(dist))

    @tf.function(autograph=False)
    def distributed(train, val):
        shares = mirrored.run(lambda t, v: multi.architect.gradients(t, v, lr=0.5).grads[0],
                              args=(train, val))
        return mirrored.reduce(tf.distribute.ReduceOp.SUM, shares, axis=None)

    got = distributed(train_d, val_d).numpy()
    error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    print(f"{hessian}: replicas vs one device, relative error {error:.1e}")
    assert error < 1e-5


def test_replicas_stay_identical_with_keras_batch_norm(mirrored):
    """Keras BN statistics have aggregation NONE: a per-replica assign would split them."""
    config = SearchConfig(batch_size=8, unrolled=True, w_lr=0.1)
    trainer = _trainer(mirrored, config, batch_norm=True)
    moving_mean = trainer.model.norm.moving_mean
    assert moving_mean.aggregation == "none"
    for train, val in mirrored.experimental_distribute_dataset(_batches(2)):
        trainer.step(train, val)
    assert np.abs(moving_mean.numpy()).max() > 1e-3  # the statistics did move
    for v in trainer.model.variables + [b for b in trainer.w_opt.momentum_buffers]:
        copies = _replicas(v) if isinstance(v, keras.Variable) else [
            np.asarray(c.numpy()) for c in v.values]
        assert np.array_equal(copies[0], copies[1]), getattr(v, "path", v.name)


# Whole runs -----------------------------------------------------------------------------------


def _run(workdir, config=RUN_CONFIG):
    return search.run(config, workdir, model_fn=tiny_model_fn(config))


def kill_mid_epoch(workdir):
    """Runs RUN_CONFIG (tiny supernet) in a child process, slowed down, and SIGKILLs it as soon
    as it has written a checkpoint: mid-epoch 0. `_run(workdir)` then resumes it."""
    child = subprocess.Popen([sys.executable, __file__, str(workdir)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = Path(workdir) / "checkpoints" / "checkpoint"
    deadline = time.time() + 120
    while not marker.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL  # killed, not finished


@pytest.fixture(name="reference", scope="module")
def fixture_reference(tmp_path_factory):
    """An uninterrupted run of 2 epochs x 6 steps, and its log lines (logger "trainers")."""
    import io
    import logging

    out = io.StringIO()
    handler, logger = logging.StreamHandler(out), logging.getLogger("trainers")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    workdir = tmp_path_factory.mktemp("reference")
    try:
        result = _run(workdir)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return result, out.getvalue()


def test_a_run_writes_its_files_and_traces_the_step_once(reference):
    result, log = reference
    workdir = Path(result.workdir)
    assert result.step_traces == 1 and result.global_step == 12
    assert result.resumed_from_step is None
    assert SearchConfig(**json.loads((workdir / "config.json").read_text())) == RUN_CONFIG
    genotype = darts_tf.Genotype.from_dict(json.loads((workdir / "genotype.json").read_text()))
    assert genotype.to_dict() == result.architecture
    for epoch in (0, 1):
        record = json.loads((workdir / f"epoch_{epoch}.json").read_text())
        assert record["metrics"]["steps"] == 6 and record["epoch"] == epoch
        for weights in record["arch_weights"].values():
            np.testing.assert_allclose(np.sum(weights, axis=-1), 1.0, rtol=1e-6)
    assert record["architecture"] == result.architecture
    lines = [json.loads(l) for l in (workdir / "alphas.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [0, 1]
    for name, value in result.alphas.items():
        np.testing.assert_array_equal(np.asarray(lines[1]["alphas"][name], np.float32), value)
    # Plain log lines when stdout is not a terminal, and the epoch learning rates (cosine).
    assert "epoch 0 step 1/6 loss" in log and "epoch 1 step 6/6" in log
    # lr(e) = 0.001 + 0.024 * (1 + cos(pi * e / 2)) / 2, stepped at each epoch start.
    assert [h["w_lr"] for h in result.history] == pytest.approx([0.025, 0.013])
    # The cells drawn as a PNG, and TensorBoard events with the metrics and the alphas.
    assert (workdir / "cells.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tags = set()
    for event_file in (workdir / "tensorboard").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(v.tag for v in event.summary.value)
    assert {"epoch/loss", "epoch/val_accuracy", "epoch/w_lr", "step/loss"} <= tags
    # 2 edges (1 node: inputs c_{k-2}, c_{k-1}) x 4 candidate ops, per cell type.
    assert len([t for t in tags if t.startswith("alpha_softmax/")]) == 2 * 2 * 4
    # A finished run, run again, only rewrites its outputs.
    again = _run(workdir)
    assert again.resumed_from_step == 12 and again.step_traces == 0
    assert again.architecture == result.architecture


def test_same_seed_same_alphas(reference, tmp_path):
    result, _ = reference
    again = _run(tmp_path)
    assert again.architecture == result.architecture
    for name, value in result.alphas.items():
        np.testing.assert_array_equal(again.alphas[name], value)
    assert again.history == result.history


def test_a_run_with_the_step_cache_loads_what_the_run_before_traced(reference, tmp_path):
    """Whole runs with a step cache (trainers/runtime/step_cache.py): the first traces and
    writes the step and the monitor's product, the second loads both and traces nothing;
    both give the uncached run's alphas and history."""
    result, _ = reference
    config = RUN_CONFIG.replace(step_cache=str(tmp_path / "cache"))
    first = _run(tmp_path / "first", config)
    second = _run(tmp_path / "second", config)
    assert (first.step_traces, first.step_loads) == (1, 0)
    assert (second.step_traces, second.step_loads) == (0, 1)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.step")) == [
        "monitor_hvp", "search_full"]
    for run in (first, second):
        assert run.architecture == result.architecture and run.history == result.history
        for name, value in result.alphas.items():
            np.testing.assert_array_equal(run.alphas[name], value)


def test_resume_after_sigkill_mid_epoch(reference, tmp_path):
    result, _ = reference
    kill_mid_epoch(tmp_path)
    resumed = _run(tmp_path)
    print(f"killed and resumed at global step {resumed.resumed_from_step}")
    assert resumed.resumed_from_step is not None and resumed.resumed_from_step < 6  # mid-epoch 0
    assert resumed.architecture == result.architecture
    for name, value in result.alphas.items():
        np.testing.assert_allclose(resumed.alphas[name], value, rtol=0, atol=1e-6)
    lines = (tmp_path / "alphas.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [0, 1]


def test_divergence_stops_and_keeps_the_last_checkpoint(tmp_path):
    config = RUN_CONFIG.replace(w_lr=1e30, epochs=1, checkpoint_every=1, deterministic=False)
    with pytest.raises(search.DivergedError, match=r"epoch 0 step (\d)") as err:
        _run(tmp_path, config)
    # The step that diverged is not counted: `bad_step` steps were done before it.
    bad_step = int(err.value.args[0].split("step ")[1].split(" ")[0])
    print(err.value)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(), tmp_path / "checkpoints", 10)
    assert manager.latest_checkpoint.endswith(f"ckpt-{bad_step}")
    trainer = search.SearchTrainer(tiny_supernet, config, input_shape=(8, 8, 1))
    state = run_lib.RunState(tmp_path, trainer.strategy, trainer.model, trainer.state_objects(),
                             metrics=search.METRICS, checkpoint_every=1)
    assert state.restore() == bad_step
    assert all(np.isfinite(v.numpy()).all() for v in trainer.model.variables)


def test_bad_config_is_refused_before_anything_runs(tmp_path, reference, mirrored):
    with pytest.raises(ConfigError, match=r"w_lr=-1\.0"):
        search.run({"dataset": "digits", "w_lr": -1.0}, tmp_path / "new", model_fn=tiny_supernet)
    assert not (tmp_path / "new").exists()
    with pytest.raises(ConfigError, match=r"batch_size=5.*2 replicas"):
        search.SearchTrainer(tiny_supernet, RUN_CONFIG.replace(batch_size=5), mirrored,
                             input_shape=(8, 8, 1))
    with pytest.raises(ConfigError, match="mixed_precision='float8'"):
        RUN_CONFIG.replace(mixed_precision="float8")
    with pytest.raises(run_lib.RunMismatchError, match=r"different \['seed'\]"):  # another search
        _run(reference[0].workdir, RUN_CONFIG.replace(seed=4))


if __name__ == "__main__":
    # The child of `kill_mid_epoch`: the same run (RUN_CONFIG), slowed down on the host side
    # so that the parent's SIGKILL lands mid-epoch.
    _step = search.SearchTrainer.step

    def _slow_step(self, *batches):
        result = _step(self, *batches)
        time.sleep(0.25)
        return result

    search.SearchTrainer.step = _slow_step
    _run(sys.argv[1])


def test_searches_a_user_defined_choice_space_and_exports_its_decisions(tmp_path):
    """The trainer is generic: a Keras model built from LayerChoice / InputChoice is searched
    through the same loop, and its decisions are exported (NNI's export shape)."""

    def model_fn():
        inputs = keras.Input((8, 8, 1))
        stem = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
        block = darts_tf.LayerChoice(
            [keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv3"),
             keras.layers.Conv2D(8, 5, padding="same", activation="relu", name="conv5"),
             keras.layers.MaxPooling2D(3, strides=1, padding="same", name="pool")],
            label="block")(stem)
        merged = darts_tf.InputChoice(2, 1, label="skip", candidate_names=["stem", "block"])(
            [stem, block])
        logits = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(merged))
        return keras.Model(inputs, logits)

    config = SearchConfig(dataset="digits", data_limit=200, epochs=2, steps_per_epoch=4,
                          batch_size=16, alpha_lr=0.05, seed=1, log_every=2)
    result = search.run(config, tmp_path, model_fn=model_fn)
    decisions = json.loads((tmp_path / "architecture.json").read_text())
    assert decisions == result.architecture
    assert set(decisions) == {"block", "skip"}
    assert decisions["block"][0] in {"conv3", "conv5", "pool"} and len(decisions["block"]) == 1
    assert decisions["skip"][0] in {"stem", "block"}
    # The alphas were trained (they start at 1e-3 * N(0, 1)) and the decisions follow them.
    block_alpha = next(v for k, v in result.alphas.items() if k.startswith("block"))
    assert np.abs(block_alpha).max() > 1e-2
    assert decisions["block"][0] == ["conv3", "conv5", "pool"][int(np.argmax(block_alpha))]


def test_jit_compile_option_computes_the_same_step():
    """XLA is an option (off by default: it slows depthwise convolutions 3-4x on this CPU);
    when on, the step computes the same update."""
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        trainer = search.SearchTrainer(tiny_supernet, SearchConfig(batch_size=8, jit_compile=jit),
                                       input_shape=(8, 8, 1))
        if results:  # identical starting point
            for v, value in zip(trainer.model.variables, results[0][1]):
                v.assign(value)
        start = [v.numpy() for v in trainer.model.variables]
        for train, val in _batches(2):
            metrics = trainer.step(train, val)
        results.append((float(metrics["loss"]), start,
                        [v.numpy() for v in trainer.model.trainable_variables]))
    (loss, _, plain), (jit_loss, _, jitted) = results
    assert abs(loss - jit_loss) < 1e-4
    for a, b in zip(plain, jitted):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("unrolled,hessian", [(False, "finite_difference"),
                                               (True, "finite_difference"), (True, "exact")])
def test_the_step_traces_one_pass_and_computes_the_written_out_step(unrolled, hessian):
    """The step's passes (two in first order, four or five in second) are one nested
    function, traced once for all steps (start-up); the step computes the same update as
    with every pass written out."""
    config = SearchConfig(batch_size=8, unrolled=unrolled, hessian=hessian)
    moved, traces = {}, {}
    for nested in (True, False):
        keras.utils.set_random_seed(0)
        trainer = search.SearchTrainer(tiny_supernet, config, input_shape=(8, 8, 1))
        if not nested:
            trainer.architect._pass = None  # pylint: disable=protected-access
            for v, value in zip(trainer.model.variables, start):
                v.assign(value)
        start = [v.numpy() for v in trainer.model.variables]
        for train, val in _batches(3):
            trainer.step(train, val)
        moved[nested] = [v.numpy() for v in trainer.model.variables]
        traces[nested] = trainer.step_traces
    assert trainer.architect.unrolled == unrolled and traces == {True: 1, False: 1}
    keras.utils.set_random_seed(0)
    nested_trainer = search.SearchTrainer(tiny_supernet, config, input_shape=(8, 8, 1))
    for train, val in _batches(2):
        nested_trainer.step(train, val)
    assert nested_trainer.architect._pass.experimental_get_tracing_count() == 1  # pylint: disable=protected-access
    assert max(np.abs(a - b).max() for a, b in zip(moved[True], start)) > 1e-3
    for a, b in zip(moved[True], moved[False]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_all_reduce_adds_no_op_with_one_replica_and_reduces_over_two(mirrored):
    """distribute.all_reduce: with one replica the values themselves, without the default
    context's copies of every output of the ops behind them; with two replicas their sum or
    mean."""
    sum_, mean = tf.distribute.ReduceOp.SUM, tf.distribute.ReduceOp.MEAN

    def ops_traced(reduce):
        fn = tf.function(lambda x: reduce(sum_, tf.split(x * 2.0, 2)), autograph=False)
        graph = fn.get_concrete_function(tf.TensorSpec([4])).graph
        return collections.Counter(op.type for op in graph.get_operations())

    ours = ops_traced(distribute.all_reduce)
    theirs = ops_traced(lambda op, v: tf.distribute.get_replica_context().all_reduce(op, v))
    # x, 2.0, the product, the split axis, the split, one identity per returned value.
    assert ours == {"Placeholder": 1, "Const": 2, "Mul": 1, "Split": 1, "Identity": 2}
    assert theirs["Identity"] > ours["Identity"] and theirs["IdentityN"] >= 1
    x = tf.constant([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(
        [t.numpy() for t in distribute.all_reduce(sum_, tf.split(x, 2))], [[1, 2], [3, 4]])

    @tf.function(autograph=False)
    def on_two_replicas():
        def replica():
            ctx = tf.distribute.get_replica_context()
            value = tf.cast(ctx.replica_id_in_sync_group, tf.float32) + 1.0  # 1 and 2
            return distribute.all_reduce(sum_, value), distribute.all_reduce(mean, [value])[0]
        return mirrored.run(replica)

    summed, averaged = on_two_replicas()
    assert [float(t) for t in mirrored.experimental_local_results(summed)] == [3.0, 3.0]
    assert [float(t) for t in mirrored.experimental_local_results(averaged)] == [1.5, 1.5]


def test_shared_variable_kernels_drop_only_the_eager_handles_debug_name(tmp_path, monkeypatch):
    """distribute.shared_variable_kernels (start-up: variables of one shape share a handle
    kernel): eager handles get no debug name, graph ones keep theirs, the variables keep
    their names, values and checkpoints, and the block undoes itself."""
    from tensorflow.python.ops import gen_resource_variable_ops as gen

    calls = []
    original = gen.var_handle_op

    def spy(*args, **kwargs):
        calls.append((tf.executing_eagerly(), kwargs.get("debug_name")))
        return original(*args, **kwargs)

    monkeypatch.setattr(gen, "var_handle_op", spy)
    keras.utils.set_random_seed(0)
    plain = tiny_supernet()
    plain.build((None, 8, 8, 1))
    assert calls and all(name for _, name in calls)
    calls.clear()
    with distribute.shared_variable_kernels():
        with distribute.shared_variable_kernels():  # nested: one wrapper
            keras.utils.set_random_seed(0)
            shared = tiny_supernet()
            shared.build((None, 8, 8, 1))
        with tf.Graph().as_default():
            tf.Variable(1.0, name="in_a_graph")
    assert gen.var_handle_op is spy
    assert len(calls) == len(plain.variables) + 1
    assert all(name == "" for eager, name in calls if eager)
    assert [name for eager, name in calls if not eager] == ["in_a_graph/"]
    assert [v.path for v in shared.variables] == [
        v.path.replace(plain.name, shared.name, 1) for v in plain.variables]
    for a, b in zip(shared.variables, plain.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    checkpoint = tf.train.Checkpoint(**{str(i): v.value for i, v in enumerate(shared.variables)})
    path = checkpoint.write(str(tmp_path / "ckpt"))
    for v in shared.variables:
        v.assign(tf.zeros_like(v))
    checkpoint.read(path).assert_consumed()
    for a, b in zip(shared.variables, plain.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_fast_graph_optimization_is_scoped_and_computes_the_same_step():
    """graph_optimization="fast" (the CPU default) skips grappler passes that cost start-up
    time; the options hold inside the block only and the step computes the same update."""
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context

    def rewrites():
        serialized = context.context().function_call_options.config_proto_serialized
        return config_pb2.ConfigProto.FromString(serialized).graph_options.rewrite_options

    before = rewrites()
    with distribute.graph_optimization("fast", tf.distribute.get_strategy()):
        inside = rewrites()
        assert inside.memory_optimization == rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
        assert inside.meta_optimizer_iterations == rewriter_config_pb2.RewriterConfig.ONE
        assert inside.constant_folding == rewriter_config_pb2.RewriterConfig.OFF
        assert inside.loop_optimization == rewriter_config_pb2.RewriterConfig.OFF
        assert inside.disable_tfg_optimizer
    assert rewrites() == before
    with distribute.graph_optimization("auto", tf.distribute.get_strategy()):
        assert rewrites().memory_optimization == rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
    with pytest.raises(ConfigError, match="graph_optimization='none'"):
        SearchConfig(graph_optimization="none")

    moved = {}
    for mode in ("full", "fast"):
        keras.utils.set_random_seed(0)
        trainer = search.SearchTrainer(
            tiny_supernet, SearchConfig(batch_size=8, graph_optimization=mode, unrolled=True),
            input_shape=(8, 8, 1))
        if moved:  # identical starting point
            for v, value in zip(trainer.model.variables, start):
                v.assign(value)
        start = [v.numpy() for v in trainer.model.variables]
        initial = [v.numpy() for v in trainer.model.trainable_variables]
        for train, val in _batches(2):
            trainer.step(train, val)
        moved[mode] = [v.numpy() for v in trainer.model.trainable_variables]
    assert max(np.abs(a - b).max() for a, b in zip(moved["full"], initial)) > 1e-3
    for a, b in zip(moved["full"], moved["fast"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_determinism_is_scoped_to_the_run(reference):
    """deterministic=True switches TensorFlow's process-wide op determinism on for the run
    only; XLA cannot be deterministic here, so that combination is refused."""
    from tensorflow.python.framework import config as tf_config

    assert RUN_CONFIG.deterministic and reference[0].global_step == 12
    assert not tf_config.is_op_determinism_enabled()
    with pytest.raises(ConfigError, match="jit_compile=True"):
        RUN_CONFIG.replace(jit_compile=True)
