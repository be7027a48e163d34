"""The architect's hypergradient against independent computations, on a tiny float64 model.

The reference gradient is the true derivative of L_val(w'(a), a) with
w'(a) = w - xi * (mu * buf + grad_w L_train(w, a) + wd * w), taken here with
nested tapes straight through `model.stateless_call`, without the architect.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from trainers.runtime.losses import cross_entropy, global_mean
from trainers.search.architect import Architect

BATCH = 16


class MixedNet(keras.Model):
    """Dense -> BN -> softmax(alpha)-weighted mix of three branches -> Dense; float64."""

    def __init__(self):
        super().__init__(dtype="float64")
        self.hidden = keras.layers.Dense(6, activation="tanh", dtype="float64")
        self.norm = keras.layers.BatchNormalization(dtype="float64")
        self.branches = [keras.layers.Dense(6, activation=act, dtype="float64")
                         for act in ("tanh", "sigmoid", None)]
        self.head = keras.layers.Dense(3, dtype="float64")
        self.alpha = self.add_weight(name="alpha", shape=(3,), dtype="float64",
                                     initializer=keras.initializers.RandomNormal(stddev=0.5))

    @property
    def arch_variables(self):
        return [self.alpha]

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.norm.build((None, 6))
        for layer in self.branches:
            layer.build((None, 6))
        self.head.build((None, 6))

    def call(self, x, training=False):
        h = self.norm(self.hidden(x), training=training)
        p = tf.nn.softmax(tf.convert_to_tensor(self.alpha))
        return self.head(tf.add_n([p[i] * b(h) for i, b in enumerate(self.branches)]))


@pytest.fixture(name="setup")
def fixture_setup():
    keras.utils.set_random_seed(7)
    model = MixedNet()
    model.build((None, 5))
    rng = np.random.default_rng(0)
    batch = lambda: (tf.constant(rng.normal(size=(BATCH, 5))),  # noqa: E731
                     tf.constant(rng.integers(0, 3, BATCH), tf.int32))
    return model, batch(), batch()


def _split(model):
    """(weight variables, alpha variables, index of each) in trainable_variables order."""
    alpha_ids = {id(v) for v in model.arch_variables}
    trainable = model.trainable_variables
    w_idx = [i for i, v in enumerate(trainable) if id(v) not in alpha_ids]
    a_idx = [i for i, v in enumerate(trainable) if id(v) in alpha_ids]
    return w_idx, a_idx


def _loss(model, w, a, batch):
    """L(w, a) on a batch through stateless_call, written without the architect."""
    w_idx, a_idx = _split(model)
    values = [None] * len(model.trainable_variables)
    for i, t in zip(w_idx + a_idx, w + a):
        values[i] = t
    nt = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
    logits, _ = model.stateless_call(values, nt, batch[0], training=True)
    return global_mean(cross_entropy(batch[1], logits), BATCH)


def _values(model):
    w_idx, a_idx = _split(model)
    t = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    return [t[i] for i in w_idx], [t[i] for i in a_idx]


def true_hypergradient(model, train, val, xi, momentum=0.0, weight_decay=0.0, buffers=None):
    """d/da L_val(w - xi * (mu * buf + grad_w L_train(w, a) + wd * w), a), by nested tapes."""
    w, a = _values(model)
    buffers = buffers or [tf.zeros_like(v) for v in w]
    with tf.GradientTape() as outer:
        outer.watch(a)
        with tf.GradientTape() as inner:
            inner.watch(w)
            train_loss = _loss(model, w, a, train)
        grads = inner.gradient(train_loss, w)
        w_virtual = [v - xi * (momentum * b + g + weight_decay * v)
                     for v, g, b in zip(w, grads, buffers)]
        val_loss = _loss(model, w_virtual, a, val)
    return outer.gradient(val_loss, a)[0].numpy(), w_virtual


def _rel(x, y):
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


def _grad_at(model, w, a, batch):
    with tf.GradientTape() as tape:
        tape.watch(a)
        loss = _loss(model, w, a, batch)
    return tape.gradient(loss, a)[0].numpy(), float(loss)


def test_first_order_is_the_validation_gradient_at_w(setup):
    model, train, val = setup
    w, a = _values(model)
    expected, _ = _grad_at(model, w, a, val)
    result = Architect(model, global_batch_size=BATCH).gradients(train, val)
    assert _rel(result.grads[0].numpy(), expected) < 1e-12


@pytest.mark.parametrize("hessian, tolerance", [("finite_difference", 1e-3), ("exact", 1e-5)])
def test_second_order_is_the_true_hypergradient(setup, hessian, tolerance):
    model, train, val = setup
    xi = 0.3
    expected, w_virtual = true_hypergradient(model, train, val, xi)
    # The implicit (Hessian) term must matter, or the comparison could not fail.
    at_w_virtual, _ = _grad_at(model, w_virtual, _values(model)[1], val)
    assert _rel(at_w_virtual, expected) > 0.05
    arch = Architect(model, global_batch_size=BATCH, unrolled=True, hessian=hessian)
    got = arch.gradients(train, val, lr=xi).grads[0].numpy()
    print(f"{hessian}: relative error {_rel(got, expected):.2e}, "
          f"Hessian term / total {_rel(at_w_virtual, expected):.2f}")
    assert _rel(got, expected) < tolerance


@pytest.mark.parametrize("hessian, tolerance", [("finite_difference", 1e-3), ("exact", 1e-5)])
def test_momentum_and_weight_decay_enter_the_virtual_step(setup, hessian, tolerance):
    model, train, val = setup
    xi, momentum, weight_decay = 0.3, 0.9, 0.05
    w, _ = _values(model)
    rng = np.random.default_rng(1)
    buffers = [tf.constant(rng.normal(scale=0.5, size=v.shape)) for v in w]
    expected, _ = true_hypergradient(model, train, val, xi, momentum, weight_decay, buffers)
    plain, _ = true_hypergradient(model, train, val, xi)
    assert _rel(plain, expected) > 0.05  # momentum and decay change the answer
    arch = Architect(model, global_batch_size=BATCH, unrolled=True, hessian=hessian,
                     momentum=momentum, weight_decay=weight_decay)
    got = arch.gradients(train, val, lr=xi, momentum_buffers=buffers).grads[0].numpy()
    print(f"{hessian}: relative error {_rel(got, expected):.2e}")
    assert _rel(got, expected) < tolerance


def test_the_virtual_step_moves_the_weights_the_validation_loss_sees(setup):
    """The NNI slip (`w = w - lr * g` rebinding a local) would leave L_val at w."""
    model, train, val = setup
    xi = 0.5
    w, a = _values(model)
    _, w_virtual = true_hypergradient(model, train, val, xi)
    grad_at_w, loss_at_w = _grad_at(model, w, a, val)
    grad_at_w_virtual, loss_at_w_virtual = _grad_at(model, w_virtual, a, val)
    assert abs(loss_at_w - loss_at_w_virtual) > 1e-2

    arch = Architect(model, global_batch_size=BATCH, unrolled=True, hessian="exact")
    moved = arch.virtual_step(*arch.read_values(), train, xi)
    assert all(np.allclose(m, v, rtol=0, atol=1e-12) for m, v in zip(moved, w_virtual))
    assert max(float(tf.reduce_max(tf.abs(m - v))) for m, v in zip(moved, w)) > 1e-2
    result = arch.gradients(train, val, lr=xi)
    assert float(result.val_loss) == pytest.approx(loss_at_w_virtual, rel=1e-12)
    # The explicit term is the gradient at w': g + xi * Hv equals it, not the one at w.
    hvp = arch.hessian_vector_product(*arch.read_values()[:2], arch.read_values()[2], train,
                                      _dw_virtual(model, w_virtual, a, val))
    explicit = result.grads[0].numpy() + xi * hvp[0].numpy()
    assert _rel(explicit, grad_at_w_virtual) < 1e-10
    assert _rel(explicit, grad_at_w) > 1e-2


def _dw_virtual(model, w_virtual, a, val):
    with tf.GradientTape() as tape:
        tape.watch(w_virtual)
        loss = _loss(model, w_virtual, a, val)
    return tape.gradient(loss, w_virtual)


def test_nothing_leaks_into_the_model(setup):
    model, train, val = setup
    before = [v.numpy().copy() for v in model.variables]
    assert model.non_trainable_variables  # the BN statistics a training pass would move
    for unrolled, hessian in ((False, "exact"), (True, "finite_difference"), (True, "exact")):
        arch = Architect(model, global_batch_size=BATCH, unrolled=unrolled, hessian=hessian,
                         momentum=0.9, weight_decay=3e-4)
        tf.function(lambda a=arch: a.gradients(train, val, lr=0.5).grads)()
        arch.gradients(train, val, lr=0.5)
    for b, v in zip(before, model.variables):
        assert np.array_equal(b, v.numpy()), v.path
    model(train[0], training=True)  # while a stateful training call does move them
    assert not all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.variables))


def test_invalid_arguments_are_refused(setup):
    model, train, val = setup
    with pytest.raises(ValueError, match="hessian='fd'"):
        Architect(model, global_batch_size=BATCH, hessian="fd")
    with pytest.raises(ValueError, match="needs lr"):
        Architect(model, global_batch_size=BATCH, unrolled=True).gradients(train, val)


# The exact mode through max pooling: the same result on every call and in every process ------

def _pool_mix_product(dtype=tf.float32, seed=0, stride=1):
    """(f, a): f(a) = grad_a (grad_k L(k, a) . v) for L = sum((a0 maxpool(h) + a1 h)^2 c),
    h = relu(conv(x, k)) (at stride 2: h's every other pixel): the ReLU zeros tie in the
    pool windows, as in a supernet."""
    from darts_tf import kernels

    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(4, 12, 12, 6)), dtype)
    c = tf.constant(rng.normal(size=(4, 12 // stride, 12 // stride, 6)), dtype)
    k, v = (tf.constant(rng.normal(size=(1, 1, 6, 6)), dtype) for _ in range(2))

    def first(a):  # grad_k L . v: smooth in a (the pool's winners do not depend on a)
        with tf.GradientTape() as tape:
            tape.watch(k)
            h = tf.nn.relu(tf.nn.conv2d(x, k, 1, "SAME"))
            pooled = kernels.pool_3x3(h, "max", stride)
            loss = tf.reduce_sum((a[0] * pooled + a[1] * h[:, ::stride, ::stride]) ** 2 * c)
        return tf.reduce_sum(tape.gradient(loss, k) * v)

    def product(a):
        with tf.GradientTape() as tape:
            tape.watch(a)
            dot = first(a)
        return tape.gradient(dot, a)

    return product, first


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_second_derivative_is_the_same_on_every_call_and_right(stride):
    """TensorFlow's MaxPoolGradGrad kernel may write its output over its input's buffer,
    when the executor has already freed the other uses of that buffer: in a traced graph
    this gave 2-7 different products over 100 calls. kernels.pool_3x3 routes around it,
    at stride 1 and (through the stride-1 pool) at stride 2."""
    product, first = _pool_mix_product(stride=stride)
    a = tf.constant([0.3, 0.7])
    traced = tf.function(lambda: product(a))
    results = {traced().numpy().tobytes() for _ in range(60)}
    assert len(results) == 1
    # Against central differences of the first derivative in float64 (a polynomial in a).
    product64, first64 = _pool_mix_product(tf.float64, stride=stride)
    a64, eps = np.array([0.3, 0.7]), 1e-3
    expected = [(float(first64(tf.constant(a64 + eps * e))) -
                 float(first64(tf.constant(a64 - eps * e)))) / (2 * eps) for e in np.eye(2)]
    np.testing.assert_allclose(np.frombuffer(results.pop(), np.float32), expected, rtol=1e-4)
    np.testing.assert_allclose(product64(tf.constant(a64)).numpy(), expected, rtol=1e-8)


_EXACT_CHILD = """
import concurrent.futures, hashlib, keras, numpy as np, tensorflow as tf
import darts_tf
from trainers.runtime import distribute
from trainers.search.architect import Architect
keras.utils.set_random_seed(0)
model = darts_tf.Supernet(10, init_channels=4, num_cells=3, num_nodes=2, input_channels=3)
model.build((None, 16, 16, 3))
rng = np.random.default_rng(0)
train, val = ((tf.constant(rng.normal(size=(4, 16, 16, 3)), tf.float32),
               tf.constant(rng.integers(0, 10, 4), tf.int32)) for _ in range(2))
arch = Architect(model, global_batch_size=4, unrolled=True, hessian="exact", momentum=0.9,
                 weight_decay=3e-4)
step = tf.function(lambda: arch.gradients(train, val, lr=0.025).grads)


def digest(_):
    with distribute.graph_optimization("fast"):  # the trainers' default on CPUs
        return hashlib.sha256(b"".join(g.numpy().tobytes() for g in step())).hexdigest()


print(digest(None))  # traced and run alone
with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two at a time: another op order
    for result in pool.map(digest, range(10)):
        print(result)
"""


def test_exact_hypergradient_is_identical_on_every_call_in_a_fresh_process():
    """The exact second-order alpha gradient (C=4, 3 cells of 2 nodes, all 8 ops, 16x16,
    batch 4) under the trainers' CPU graph optimisation ("fast"), in a fresh process: one
    call alone, then ten from two threads at once. One result, to the bit.

    The max-pool fault (fixed in kernels._max_pool_3x3_same) shows only when the executor
    runs the ops in another order. With the fix taken out (2026-12-04, 2-core AMD EPYC):
    this child gave 2 and 3 distinct results in 2 runs (the concurrent calls mostly agreeing
    with each other, not with the call alone); with 4 nodes, 2 in each of 3 runs. Ten calls
    in a row instead gave 1 result in a process alone and 3-4 in each of two processes run
    at the same time, which is how this test ran (4 nodes, 108 s in the suite) until the
    second thread took the second process's place (2 nodes: 41-47 s alone)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    child = subprocess.run(
        [sys.executable, "-c", _EXACT_CHILD], cwd=root, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "0"}, timeout=300,
        check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    digests = child.stdout.split()[-11:]
    assert len(digests) == 11 and len(set(digests)) == 1, digests
