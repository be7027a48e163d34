"""PC-DARTS, DARTS- and the P-DARTS skip guard: counts, equivalences, derivation, training.

PC-DARTS' count is the authors' search network's (yuhuixu1993/PC-DARTS, counted in PyTorch
by tools/reference_fixtures.py, see tests/data/README.md). The equivalences copy every
variable between two networks and compare their outputs.
"""
import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import ConfigError, SearchConfig
from configs import search as search_presets
from darts_tf import genotype as genotype_lib, methods
from darts_tf.genotype import PRIMITIVES, Genotype, derive_genotype
from darts_tf.supernet import Supernet
from trainers import search
from test_search import (RUN_CONFIG, _batches, _run, assert_mirrored_matches_one_device,
                         tiny_supernet)

DATA = pathlib.Path(__file__).parent / "data"
TINY = dict(num_classes=10, init_channels=4, num_cells=3, num_nodes=2, input_channels=3)


def _count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


def test_pc_darts_counts_match_the_authors_search_network():
    model = Supernet(num_classes=10, init_channels=16, num_cells=8, method="pc_darts")
    reference = json.loads((DATA / "reference_counts.json").read_text())["pc_darts_search_network"]
    assert _count(model.weight_variables) == reference["params"] == 299_578
    assert _count(model.arch_variables) == reference["alphas"] + reference["betas"] == 252
    assert [tuple(v.shape) for v in model.arch_variables] == [(14, 8), (14, 8), (14,), (14,)]
    assert _count(model.non_trainable_variables) == reference["bn_running_stats"] == 19_680
    # arch and weight variables: disjoint, together all trainable variables.
    arch, weights = {id(v) for v in model.arch_variables}, {id(v) for v in model.weight_variables}
    assert not arch & weights and arch | weights == {id(v) for v in model.trainable_variables}


def test_darts_minus_adds_one_factorized_reduce_per_stride_2_edge():
    """Per reduction cell, each stride-2 edge (2 per node) gains C^2 weights (two 1x1 convs
    C -> C/2) and 2C BN statistics; plus skip_beta. At C=16, 8 cells, 4 nodes: DARTS'
    1,930,618 + 8 * (32^2 + 64^2) = 1,971,578. Here C=4, 3 cells (reductions at C = 8, 16),
    2 nodes."""
    darts, minus = Supernet(**TINY), Supernet(**TINY, method="darts_minus")
    assert _count(minus.weight_variables) - _count(darts.weight_variables) == 4 * (8 ** 2 + 16 ** 2)
    assert _count(minus.non_trainable_variables) - _count(darts.non_trainable_variables) == \
        4 * 2 * (8 + 16) + 1
    assert minus.skip_beta.trainable is False and len(minus.arch_variables) == 2


def _copy_by_path(source, target):
    """Assigns each of `target`'s variables from `source`'s variable of the same relative path."""
    values = {v.path.split("/", 1)[1]: v for v in source.variables}
    copied = 0
    for v in target.variables:
        key = v.path.split("/", 1)[1]
        if key in values:
            v.assign(values[key])
            copied += 1
    return copied


def _darts_and(method_kwargs, seed=0):
    """A DARTS supernet, alphas ~ N(0, 1), and a `method_kwargs` one with its variables copied."""
    keras.utils.set_random_seed(seed)
    darts = Supernet(**TINY)
    for alpha in darts.arch_variables:
        alpha.assign(np.random.default_rng(seed).normal(size=alpha.shape))
    other = Supernet(**TINY, **method_kwargs)
    assert _copy_by_path(darts, other) == len(darts.variables)
    return darts, other


def _outputs(model, x):
    """Logits in training mode (batch statistics, which also moves the moving statistics) and
    then in inference mode."""
    return model(x, training=True).numpy(), model(x, training=False).numpy()


@pytest.mark.parametrize("method_kwargs,free", [
    (dict(method="pc_darts", partial_channels=1, edge_normalization=False), 0),
    (dict(method="darts_minus"), 1),
], ids=["pc_darts_k1", "darts_minus_beta0"])
def test_equivalent_to_darts(method_kwargs, free):
    """PC-DARTS with K=1 and no edge normalisation, and DARTS- at beta = 0, compute what the
    DARTS supernet computes, weights copied (DARTS- has more: its auxiliary skips)."""
    darts, other = _darts_and(method_kwargs)
    if other.skip_beta is not None:
        other.skip_beta.assign(0.0)
    x = tf.random.stateless_normal((4, 8, 8, 3), seed=(1, 2))
    expected, got = _outputs(darts, x), _outputs(other, x)
    for e, g in zip(expected, got):
        error = float(np.max(np.abs(e - g)))
        print(f"{method_kwargs}: max |difference| {error:.1e}, logits up to {np.abs(e).max():.1f}")
        assert error <= 1e-6 * max(1.0, np.abs(e).max())
    assert len(other.variables) > len(darts.variables) if free else len(other.variables) == len(
        darts.variables)
    if other.skip_beta is not None:  # the auxiliary skip does act when beta > 0
        other.skip_beta.assign(1.0)
        assert np.abs(other(x, training=False).numpy() - got[1]).max() > 1e-3


@pytest.mark.parametrize("stride", [1, 2])
def test_auxiliary_skip_is_beta_times_skip(stride):
    """DARTS-' mixed op = DARTS' mixed op + beta * skip(x); at stride 1 beta is folded into
    the skip_connect candidate's weight (one op fewer per edge), which must not change it."""
    op = methods.AuxiliarySkipMixedOp(4, stride, num_inputs=2)
    x = [tf.random.stateless_normal((2, 8, 8, 4), seed=(i, 3)) for i in range(2)]
    weights = tf.nn.softmax(tf.random.stateless_normal((2, len(PRIMITIVES)), seed=(5, 6)))
    op(x, weights, training=True)  # builds
    plain = op(x, weights, training=True).numpy()
    skip = op.auxiliary_skip(tf.concat(x, axis=-1), training=True)
    expected = plain + 0.6 * tf.reduce_sum(tf.reshape(skip, [2, *skip.shape[1:3], 2, 4]), axis=3)
    got = op(x, weights, training=True, skip_beta=tf.constant(0.6)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(got - plain).max() > 0.1


def _numpy_shuffle(x, groups):
    """channel_shuffle by its definition: output channel j * groups + g = input g * (C/G) + j."""
    out = np.empty_like(x)
    per_group = x.shape[-1] // groups
    for g in range(groups):
        for j in range(per_group):
            out[..., j * groups + g] = x[..., g * per_group + j]
    return out


def test_channel_shuffle_matches_numpy():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 12)).astype(np.float32)
    for groups in (1, 2, 3, 4, 12):
        np.testing.assert_array_equal(methods.channel_shuffle(tf.constant(x), groups).numpy(),
                                      _numpy_shuffle(x, groups))


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channel_mixed_op_by_its_definition(stride):
    """Per edge: shuffle_K(concat[mix(x[:C/K]), bypass(x[C/K:])]) weighted by its edge weight,
    summed over edges; the bypass max-pooled 2x2 at stride 2 (numpy here)."""
    k, c, edges = 4, 8, 3
    op = methods.PartialChannelMixedOp(c, stride, PRIMITIVES, num_inputs=edges,
                                       partial_channels=k)
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(2, 6, 6, c)).astype(np.float32) for _ in range(edges)]
    weights = tf.nn.softmax(rng.normal(size=(edges, len(PRIMITIVES))).astype(np.float32))
    edge_w = tf.constant([0.2, 0.5, 0.3])
    got = op([tf.constant(x) for x in inputs], weights, training=False, edge_weights=edge_w)
    # The candidates' part through the op's own mix (DARTS' mixed op, tested elsewhere).
    part = tf.concat([x[..., :c // k] for x in inputs], axis=-1)
    mixed = op._mix(part, weights, False).numpy()  # pylint: disable=protected-access
    expected = 0
    for e, x in enumerate(inputs):
        bypass = x[..., c // k:]
        if stride == 2:
            bypass = bypass.reshape(2, 3, 2, 3, 2, -1).max(axis=(2, 4))
        y = np.concatenate([mixed[..., e * (c // k):(e + 1) * (c // k)], bypass], axis=-1)
        expected = expected + float(edge_w[e]) * _numpy_shuffle(y, k)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_edge_weights_sum_to_one_per_node():
    beta = np.random.default_rng(2).normal(size=14)
    tf_weights = methods.edge_weights(tf.constant(beta), 4).numpy()
    np_weights = genotype_lib.edge_weights(beta, 4)
    np.testing.assert_allclose(tf_weights, np_weights, rtol=1e-6)
    sums = [np_weights[s:s + n].sum() for s, n in ((0, 2), (2, 3), (5, 4), (9, 5))]
    np.testing.assert_allclose(sums, 1.0, rtol=1e-12)
    model = Supernet(**TINY, method="pc_darts", partial_channels=2)
    model.beta_reduce.assign(beta[:5])
    np.testing.assert_allclose(model.arch_weights()["reduce_edges"],
                               genotype_lib.edge_weights(beta[:5], 2), rtol=1e-6)
    np.testing.assert_allclose(np_weights[:2], np.exp(beta[:2]) / np.exp(beta[:2]).sum())
    # What epoch_N.json and TensorBoard report: the same per-node weights (not one softmax
    # over all the edges of the cell), and softmax rows for the alphas.
    from trainers.search.loop import arch_weights
    values = {"alpha_reduce": model.alpha_reduce.numpy(), "beta_reduce": beta[:5]}
    reported = arch_weights(model, values)
    np.testing.assert_allclose(reported["beta_reduce"], genotype_lib.edge_weights(beta[:5], 2))
    np.testing.assert_allclose(reported["beta_reduce"][:2].sum(), 1.0)
    np.testing.assert_allclose(reported["alpha_reduce"], model.arch_weights()["reduce"], rtol=1e-6)


def test_pc_darts_genotype_weighs_the_ops_by_the_edge_weights():
    """Node 0 (edges from 0, 1) and node 1 (edges from 0, 1, 2), 2 nodes: the op weights alone
    pick edges 0 and 2 of node 1; edge 1's much larger edge weight makes it win over edge 2."""
    alpha = np.zeros((5, 8))
    alpha[:, 4] = 1.0  # sep_conv_3x3 everywhere
    alpha[2, 4] = alpha[4, 4] = 2.0  # node 1: edges from 0 and 2 strongest by op weight
    beta = np.zeros(5)
    beta[3] = 3.0  # node 1: the edge from input 1 weighs exp(3) / (2 + exp(3)) = 0.91
    plain = derive_genotype(alpha, alpha, num_nodes=2)
    weighted = derive_genotype(alpha, alpha, num_nodes=2, beta_normal=beta, beta_reduce=beta)
    assert [i for _, i in plain.normal[2:]] == [0, 2]
    assert [i for _, i in weighted.normal[2:]] == [1, 0]
    with pytest.raises(genotype_lib.GenotypeError, match="beta_normal: expected shape \\(5,\\)"):
        derive_genotype(alpha, alpha, num_nodes=2, beta_normal=np.zeros(4), beta_reduce=beta)


def _skip_heavy_alphas():
    """Logits whose softmax is a normal cell holding 4 skip-connects of weights .9 > .8 > .6 > .55.

    alpha = log(W) with rows of W summing to 1, so softmax(alpha) = W. Edge rows (node:
    inputs): 0-1 (n0: 0, 1), 2-4 (n1: 0, 1, 2), 5-8 (n2), 9-13 (n3). Every op not set has
    .005; `none` takes the rest of the row.
    """
    skip, sep, dil = 3, 4, 6
    w = np.full((14, 8), 0.005)
    for row, (skip_w, sep_w) in {0: (.9, .05), 2: (.8, .1), 5: (.6, .3), 9: (.55, .2)}.items():
        w[row, skip], w[row, sep] = skip_w, sep_w  # the skip edge of each node
    w[[1, 3, 6, 10], sep] = .5  # each node's other edge
    w[12, dil] = .3  # node 3, from node 1 (state 3): below .5 and .55, above .2
    w[:, 0] = 0
    w[:, 0] = 1 - w.sum(axis=1)
    assert w.min() > 0
    return np.log(w)


def test_max_skip_connect_keeps_the_strongest_and_rederives():
    alpha, reduce = _skip_heavy_alphas(), _skip_heavy_alphas()
    unlimited = derive_genotype(alpha, reduce)
    assert [op for op, _ in unlimited.normal].count("skip_connect") == 4
    limited = derive_genotype(alpha, reduce, max_skip_connect=2)
    # The weakest skip goes first: row 9 (.55) falls back to its sep_conv (.2), below row
    # 12's dil_conv (.3), which replaces it as node 3's second edge. Then row 5 (.6): its
    # sep_conv (.3) now ranks after node 2's other edge (.5). The strongest two (.9, .8) stay.
    assert limited.normal == (
        ("skip_connect", 0), ("sep_conv_3x3", 1),
        ("skip_connect", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1), ("dil_conv_3x3", 3))
    assert limited.reduce == unlimited.reduce  # P-DARTS limits the normal cell only
    assert derive_genotype(alpha, reduce, max_skip_connect=4) == unlimited
    none_left = derive_genotype(alpha, reduce, max_skip_connect=0)
    assert [op for op, _ in none_left.normal].count("skip_connect") == 0
    # The same through the supernet's derivation.
    model = Supernet(num_classes=10, init_channels=4, num_cells=3, max_skip_connect=2)
    model.alpha_normal.assign(alpha)
    model.alpha_reduce.assign(reduce)
    assert model.genotype() == limited
    with pytest.raises(genotype_lib.GenotypeError, match="max_skip_connect.*Received: -1"):
        derive_genotype(alpha, reduce, max_skip_connect=-1)
    with pytest.raises(genotype_lib.GenotypeError, match="an op besides"):
        derive_genotype(np.zeros((14, 2)), np.zeros((14, 2)), primitives=("none", "skip_connect"),
                        max_skip_connect=1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="gdas"), "method='gdas'"),
    (dict(method="darts", partial_channels=4), "partial_channels=4"),
    (dict(method="darts_minus", edge_normalization=True), "edge_normalization=True"),
    (dict(method="pc_darts", partial_channels=3), "partial_channels=3, init_channels=4"),
    (dict(method="pc_darts", edge_normalization="yes"), "edge_normalization='yes'"),
    (dict(max_skip_connect=-2), "max_skip_connect=-2"),
    (dict(recompute_cells=4), "recompute_cells=4, num_cells=3"),
    (dict(recompute_cells=True), "recompute_cells=True"),
])
def test_supernet_refuses_nonsense(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Supernet(**TINY, **kwargs)


def test_supernet_config_round_trips():
    for kwargs in (dict(method="pc_darts"), dict(method="darts_minus"),
                   dict(method="pc_darts", partial_channels=2, edge_normalization=False,
                        max_skip_connect=1)):
        model = tiny_supernet(**kwargs)
        config = model.get_config()
        json.dumps(config)
        clone = Supernet.from_config(config)
        assert clone.get_config() == config
        assert _count(clone.weight_variables) == _count(model.weight_variables)
        assert [v.shape for v in clone.arch_variables] == [v.shape for v in model.arch_variables]
    assert config["max_skip_connect"] == 1 and config["partial_channels"] == 2


@pytest.mark.parametrize("changes,match", [
    (dict(method="gdas"), "method='gdas'"),
    (dict(method="pc_darts", partial_channels=3), "partial_channels=3.*init_channels=8"),
    (dict(method="pc_darts", partial_channels=0), "partial_channels=0"),
    (dict(method="darts", partial_channels=2), "partial_channels=2.*method='darts'"),
    (dict(method="darts_minus", edge_normalization=True), "edge_normalization=True"),
    (dict(arch_start_epoch=15), "arch_start_epoch=15.*epochs=15"),
    (dict(max_skip_connect=-1), "max_skip_connect=-1"),
    (dict(recompute_cells=6), "recompute_cells=6.*num_cells=5"),
    (dict(recompute_cells=-1), "recompute_cells=-1"),
])
def test_config_refuses_nonsense(changes, match):
    with pytest.raises(ConfigError, match=match):
        search_presets.digits().replace(**changes)


def test_presets():
    assert search_presets.METHODS == methods.METHODS  # configs/ imports no TensorFlow
    pc = search_presets.get("pc_darts")
    assert (pc.method, pc.partial_channels, pc.edge_normalization, pc.batch_size, pc.w_lr,
            pc.w_lr_min, pc.alpha_lr, pc.alpha_weight_decay, pc.epochs, pc.arch_start_epoch,
            pc.recompute_cells) == ("pc_darts", 4, True, 256, 0.1, 0.0, 6e-4, 1e-3, 50, 15, 2)
    minus = search_presets.get("darts_minus")
    assert minus.replace(method="darts") == search_presets.cifar10()
    digits = search_presets.digits()
    for name, method in (("digits_pc_darts", "pc_darts"), ("digits_darts_minus", "darts_minus")):
        preset = search_presets.get(name)
        assert preset.method == method
        assert (preset.dataset, preset.init_channels, preset.num_cells, preset.epochs,
                preset.batch_size) == (digits.dataset, 8, 5, 15, 64)
    # The loop's default model is the method's supernet, with the derivation's guard.
    from trainers.search import loop  # pylint: disable=import-outside-toplevel
    model_fn = loop._default_model_fn(  # pylint: disable=protected-access
        search_presets.get("digits_pc_darts").replace(max_skip_connect=2))
    assert {k: model_fn.keywords[k] for k in ("method", "partial_channels",
                                              "edge_normalization", "max_skip_connect",
                                              "recompute_cells")} == {
        "method": "pc_darts", "partial_channels": 4, "edge_normalization": True,
        "max_skip_connect": 2, "recompute_cells": 0}


def test_darts_minus_beta_decays_linearly_and_warm_up_keeps_the_alphas():
    """DARTS-' authors: beta = (epochs - epoch) / epochs at each epoch start; before
    arch_start_epoch the weights train and the alphas (and Adam's state) stay."""
    assert [methods.skip_beta(e, 4) for e in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    config = SearchConfig(batch_size=8, epochs=4, arch_start_epoch=1, method="darts_minus")
    trainer = search.SearchTrainer(lambda: tiny_supernet(method="darts_minus"), config,
                                   input_shape=(8, 8, 1))
    model = trainer.model
    train, val = next(iter(_batches(1)))
    trainer.set_epoch(0)
    assert float(model.skip_beta.numpy()) == 1.0 and trainer.arch_active is False
    alphas = [v.numpy() for v in model.arch_variables]
    weights = [v.numpy() for v in model.weight_variables]
    trainer.step(train, val)
    for a, b in zip(alphas, model.arch_variables):
        np.testing.assert_array_equal(a, b.numpy())
    assert int(trainer.a_opt.iterations.numpy()) == 0
    assert max(np.abs(a - b.numpy()).max() for a, b in zip(weights, model.weight_variables)) > 0
    trainer.set_epoch(3)
    assert float(model.skip_beta.numpy()) == 0.25 and trainer.arch_active is True
    trainer.step(train, val)
    assert max(np.abs(a - b.numpy()).max() for a, b in zip(alphas, model.arch_variables)) > 0


@pytest.mark.parametrize("method", ["pc_darts", "darts_minus"])
def test_second_order_step(method):
    """One second-order step: every architecture variable (PC-DARTS' betas too) moves."""
    config = SearchConfig(batch_size=8, unrolled=True, alpha_lr=3e-3, method=method)
    keras.utils.set_random_seed(0)
    trainer = search.SearchTrainer(lambda: tiny_supernet(method=method, **(
        {"partial_channels": 2} if method == "pc_darts" else {})), config, input_shape=(8, 8, 1))
    trainer.set_epoch(0)
    before = [v.numpy() for v in trainer.model.trainable_variables]
    train, val = next(iter(_batches(1)))
    metrics = trainer.step(train, val)
    assert np.isfinite(float(metrics["val_loss"]))
    arch = {id(v) for v in trainer.model.arch_variables}
    assert len(arch) == (4 if method == "pc_darts" else 2)
    for v, b in zip(trainer.model.trainable_variables, before):
        if id(v) in arch:
            assert np.abs(v.numpy() - b).max() > 1e-4, v.path


class Crash(Exception):
    """Raised in place of a search step, to stop a run as a crash does."""


def crash_mid_epoch(workdir, config, monkeypatch, at_call=3):
    """Runs `config` (tiny supernet) in this process until its step number `at_call` (0-based)
    raises: a run stopped mid-epoch 0, after the checkpoint of global step 2. Nothing is
    saved on the way out, so what is on disk is what a SIGKILL there leaves (the kill itself,
    in a child process: tests/test_search.py::test_resume_after_sigkill_mid_epoch)."""
    step, calls = search.SearchTrainer.step, []

    def crashing_step(self, train_batch, val_batch):
        if len(calls) == at_call:
            raise Crash(f"step call {at_call}")
        calls.append(1)
        return step(self, train_batch, val_batch)

    with monkeypatch.context() as patch:
        patch.setattr(search.SearchTrainer, "step", crashing_step)
        with pytest.raises(Crash):
            _run(workdir, config)


@pytest.mark.parametrize("method", ["pc_darts", "darts_minus"])
def test_resume_after_a_crash_gives_the_same_genotype(method, tmp_path, monkeypatch):
    """Stopped mid-epoch 0 and resumed, a run ends where an uninterrupted one does (PC-DARTS
    with a weights-only first epoch; DARTS- with beta 1, then 0.5)."""
    config = RUN_CONFIG.replace(method=method, **(
        {"partial_channels": 2, "arch_start_epoch": 1} if method == "pc_darts" else {}))
    reference = _run(tmp_path / "reference", config)
    crash_mid_epoch(tmp_path / "resumed", config, monkeypatch)
    resumed = _run(tmp_path / "resumed", config)
    assert resumed.resumed_from_step == 2
    assert resumed.architecture == reference.architecture
    for name, value in reference.alphas.items():
        np.testing.assert_allclose(resumed.alphas[name], value, rtol=0, atol=1e-6)
    assert len(reference.alphas) == (4 if method == "pc_darts" else 2)
    assert Genotype.from_dict(resumed.architecture).num_nodes == 1


def test_mirrored_pc_darts_matches_the_default_strategy(mirrored):
    """Two replicas on half batches make PC-DARTS' updates of one device on the whole batch
    (first order: second order's extra passes are the same mirrored code, see
    tests/test_search.py, and cost a minute more here). The first cell is recomputed in the
    backward pass, as the preset's cells are: its batch norms all-reduce their statistics
    in the recomputation too."""
    config = SearchConfig(batch_size=8, alpha_lr=3e-3, w_lr=0.1, method="pc_darts",
                          partial_channels=2, recompute_cells=1)

    def model_fn():
        return tiny_supernet(method="pc_darts", partial_channels=2, recompute_cells=1)

    multi, worst = assert_mirrored_matches_one_device(model_fn, config, mirrored, steps=2)
    print(f"mirrored - default: at most {worst:.1e}")
    betas = [v for v in multi.model.arch_variables if "beta" in v.path]
    assert len(betas) == 2


def test_pc_darts_matches_the_authors_network():
    """Weights, alphas and betas copied from PC-DARTS' own search network (K=4, C=8, 3 cells,
    tests/data/pc_darts_tiny.npz): the same logits, in inference and in training mode."""
    from test_reference_equivalence import _close, _load, _nhwc, map_search_network

    arrays = _load("pc_darts_tiny.npz")
    model = Supernet(num_classes=10, init_channels=8, num_cells=3, method="pc_darts")
    map_search_network(model, arrays)
    for name in ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce"):
        getattr(model, name).assign(arrays[name.replace("_", "s_", 1)])
    x = _nhwc(arrays["input"])
    for training, key in ((False, "logits_eval"), (True, "logits_train")):
        logits = model(x, training=training).numpy()
        print(f"{key}: max |ours - authors'| {np.abs(logits - arrays[key]).max():.1e}")
        _close(logits, arrays[key])


# One op of each kind the cells hold (a pool, a separable and a dilated conv, the identity,
# the zero op). The 5x5 convs and the average pool are built the same way and add nothing
# the recomputation treats differently; with them the three cases below took 113 s here,
# against 90 s without (alone, on the 2-core AMD EPYC, 2026-12-04).
RECOMPUTE_OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


def _recompute_pair(method_kwargs, config):
    """Two trainers of the same supernet (3 cells of 1 node, 1 input channel, RECOMPUTE_OPS),
    with the same variables: one keeps every activation, one recomputes every cell's."""
    def model_fn(recompute_cells):
        return lambda: Supernet(**{**TINY, "input_channels": 1, "num_nodes": 1}, **method_kwargs,
                                primitives=RECOMPUTE_OPS, recompute_cells=recompute_cells)

    keras.utils.set_random_seed(0)
    plain = search.SearchTrainer(model_fn(0), config, input_shape=(8, 8, 1))
    again = search.SearchTrainer(model_fn(3), config, input_shape=(8, 8, 1))
    for a, b in zip(again.model.variables, plain.model.variables):
        a.assign(b.numpy())
    return plain, again


@pytest.mark.parametrize("method_kwargs,unrolled,hessian", [
    (dict(method="pc_darts", partial_channels=2), False, "finite_difference"),
    (dict(method="darts"), True, "exact"),
    (dict(method="darts_minus"), True, "finite_difference"),
])
def test_recomputed_cells_make_the_same_steps(method_kwargs, unrolled, hessian):
    """recompute_cells: the same updates of weights, alphas (betas) and running statistics as
    keeping the activations, within float rounding, and the same exact Hessian-vector product
    in the alphas (the collapse monitor's), which differentiates the recomputing gradient."""
    config = SearchConfig(batch_size=8, alpha_lr=3e-3, w_lr=0.1, unrolled=unrolled,
                          hessian=hessian, **method_kwargs)
    plain, again = _recompute_pair(method_kwargs, config)
    initial = [v.numpy() for v in plain.model.variables]
    for train, val in _batches(2):
        plain.step(train, val)
        again.step(train, val)
    moved = 0
    for a, b, before in zip(again.model.variables, plain.model.variables, initial):
        change = float(np.max(np.abs(b.numpy() - before)))
        assert float(np.max(np.abs(a.numpy() - b.numpy()))) < max(1e-6, 1e-4 * change), b.path
        moved += change > 1e-4
    assert moved > len(initial) // 2
    _, val = next(iter(_batches(1, seed=1)))
    vector = [tf.random.stateless_normal(v.shape, [1, i])
              for i, v in enumerate(plain.architect.arch_variables)]
    products = []
    for trainer in (plain, again):
        arch = trainer.architect
        product = tf.function(lambda w, a, nt, batch, arch=arch: arch.exact_product(
            w, a, nt, batch, "a", vector), autograph=False)
        products.append([p.numpy() for p in product(*arch.read_values(), val)])
    for p, q in zip(*products):
        assert np.abs(p).max() > 1e-3
        np.testing.assert_allclose(q, p, rtol=1e-4, atol=1e-6 * np.abs(p).max())


def test_recomputed_cells_run_again_in_the_backward_pass():
    """What recompute_cells changes in the graph: the gradient runs each recomputed cell's
    forward pass once more (as many batch norms again as the cell's forward pass holds; a
    batch norm's gradient is another op type)."""
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), tf.float32)

    def count(fn):
        graph = tf.function(fn, autograph=False).get_concrete_function().graph
        return sum(op.type == "FusedBatchNorm" for op in graph.get_operations())

    counts = {}
    for recompute_cells in (0, 1, 3):
        model = Supernet(**{**TINY, "num_nodes": 1}, primitives=RECOMPUTE_OPS,
                         recompute_cells=recompute_cells)

        def step(model=model):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x, training=True))
            return tape.gradient(loss, model.trainable_variables)

        counts[recompute_cells] = count(step)
        if recompute_cells == 0:
            forward = count(lambda model=model: model(x, training=True))
            stem = count(lambda model=model: model.stem(x, training=True))
            first = count(lambda model=model: model.cells[0](
                *[model.stem(x, training=True)] * 2, tf.ones([2, 5]) / 5, training=True)) - stem
    assert forward > first > 0 and stem == 1
    assert counts[0] == forward
    assert counts[3] == counts[0] + forward - stem
    assert counts[1] == counts[0] + first
