"""Supernet and fixed networks: parameter counts, shapes, variables, round trips, export.

The pinned counts are the reference implementation's (quark0/darts, counted in
PyTorch by tools/reference_fixtures.py, see tests/data/reference_counts.json).
"""
import json
import os
import pathlib
import platform
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import darts_tf
from darts_tf import cells, genotypes, heads, kernels, ops, search_space
from darts_tf.genotype import PRIMITIVES
from darts_tf.networks import NetworkCIFAR, NetworkImageNet
from darts_tf.supernet import Supernet

DATA = pathlib.Path(__file__).parent / "data"


def _count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


def _reference_counts():
    return json.loads((DATA / "reference_counts.json").read_text())


def test_supernet_counts_match_reference():
    model = Supernet(num_classes=10, init_channels=16, num_cells=8)
    # quark0's train_search.py logs "param size = 1.930618MB" for this configuration.
    assert _count(model.weight_variables) == 1_930_618
    assert _count(model.arch_variables) == 224
    assert [tuple(v.shape) for v in model.arch_variables] == [(14, 8), (14, 8)]
    # BN running statistics: the reference's buffers, element for element.
    assert _count(model.non_trainable_variables) == 74_592
    reference = _reference_counts()["search_network"]
    assert (reference["params"], reference["alphas"]) == (1_930_618, 224)


def test_arch_and_weight_variables_disjoint_and_covering():
    model = Supernet(num_classes=10, init_channels=4, num_cells=3, num_nodes=2)
    arch = {id(v) for v in model.arch_variables}
    weights = {id(v) for v in model.weight_variables}
    assert not arch & weights
    assert arch | weights == {id(v) for v in model.trainable_variables}
    assert search_space.arch_variables(model) == model.arch_variables
    # BN moving statistics are not trainable and are averaged across replicas.
    assert all(v.aggregation == "mean" for v in model.non_trainable_variables)


def test_alpha_init_is_small_and_distinct():
    model = Supernet(num_classes=10, init_channels=4, num_cells=3, num_nodes=2)
    normal, reduce = (v.numpy() for v in model.arch_variables)
    assert 1e-4 < normal.std() < 1e-2 and 1e-4 < reduce.std() < 1e-2
    assert not np.allclose(normal, reduce)


@pytest.mark.parametrize("genotype,no_aux,with_aux", [
    ("DARTS_V2", 3_349_342, 3_825_768),
    ("DARTS_V1", 3_169_414, 3_645_840),
])
def test_cifar_counts_match_reference(genotype, no_aux, with_aux):
    model = NetworkCIFAR(getattr(genotypes, genotype), num_classes=10)
    assert model.count_params(include_auxiliary=False) == no_aux
    assert model.count_params(include_auxiliary=True) == with_aux
    reference = _reference_counts()["cifar"][genotype]["auxiliary"]
    assert (reference["excluding_auxiliary"], reference["total"]) == (no_aux, with_aux)


def test_imagenet_counts_match_reference():
    model = NetworkImageNet(genotypes.DARTS_V2, num_classes=1000)
    assert model.count_params(include_auxiliary=False) == 4_718_752
    assert model.count_params(include_auxiliary=True) == 5_979_528


@pytest.mark.parametrize("network,genotype,shape,key", [
    (NetworkImageNet, "DARTS_V2", (224, 224, 3), "imagenet_DARTS_V2_224"),
    (NetworkCIFAR, "DARTS_V2", (32, 32, 3), "cifar_DARTS_V2_32"),
])
def test_multiply_adds_match_reference_count(network, genotype, shape, key):
    """Same counting rule as the reference's hook count (the paper's 574M for ImageNet
    was counted some other way: see tests/data/README.md)."""
    counts = darts_tf.count_multiply_adds(network(getattr(genotypes, genotype)), shape)
    assert counts["total"] == _reference_counts()["macs"][key]["macs"]
    assert counts["total"] == {"imagenet_DARTS_V2_224": 529_911_552,
                               "cifar_DARTS_V2_32": 528_359_040}[key]


def test_cell_layout_reference_positions():
    layout = cells.cell_layout(20, 36, 108, 4)
    assert [i for i, s in enumerate(layout) if s.reduction] == [6, 13]
    assert [s.channels for s in layout][5:8] == [36, 72, 72]
    assert layout[7].reduction_prev and not layout[8].reduction_prev
    assert (layout[0].prev_prev_channels, layout[0].prev_channels) == (108, 108)
    assert (layout[1].prev_prev_channels, layout[1].prev_channels) == (108, 144)


def test_shapes_after_each_reduction():
    model = Supernet(num_classes=7, init_channels=4, num_cells=5, num_nodes=2)
    x = tf.random.normal((2, 16, 16, 3))
    s0 = s1 = model.stem(x, training=False)
    weights = tf.nn.softmax(model.alpha_normal)
    shapes = []
    for cell in model.cells:
        s0, s1 = s1, cell(s0, s1, weights, training=False)
        shapes.append(tuple(s1.shape))
    # Reductions at cells 1 and 3; a cell outputs num_nodes * C channels.
    assert shapes == [(2, 16, 16, 8), (2, 8, 8, 16), (2, 8, 8, 16), (2, 4, 4, 32), (2, 4, 4, 32)]
    assert tuple(model(x).shape) == (2, 7)


def test_imagenet_shapes_and_aux():
    model = NetworkImageNet(genotypes.DARTS_V2, num_classes=5, init_channels=8, num_cells=3)
    logits, aux = model(tf.random.normal((1, 224, 224, 3)), training=True, return_aux=True)
    assert tuple(logits.shape) == (1, 5) and tuple(aux.shape) == (1, 5)


def test_cifar_aux_only_when_asked():
    model = NetworkCIFAR(genotypes.DARTS_V1, num_classes=10, init_channels=4, num_cells=3)
    x = tf.random.normal((2, 32, 32, 3))
    logits, aux = model(x, training=True, return_aux=True)
    assert tuple(aux.shape) == (2, 10)
    assert tuple(model(x, training=False).shape) == (2, 10)
    no_head = NetworkCIFAR(genotypes.DARTS_V1, num_classes=10, init_channels=4, num_cells=3,
                           auxiliary=False)
    assert no_head(x, training=True, return_aux=True)[1] is None


def test_drop_path_only_in_training_and_never_on_identity():
    model = NetworkCIFAR(genotypes.DARTS_V2, num_classes=10, init_channels=4, num_cells=3,
                         auxiliary=False, drop_path_rate=0.5)
    x = tf.random.normal((4, 16, 16, 3))
    # Inference ignores drop path: deterministic.
    np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())
    # Training with p > 0 is random (BN uses batch stats, so compare two training calls).
    a, b = model(x, training=True).numpy(), model(x, training=True).numpy()
    assert not np.allclose(a, b)
    model.drop_path_prob.assign(0.0)
    a, b = model(x, training=True).numpy(), model(x, training=True).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_supernet_genotype_follows_alphas():
    model = Supernet(num_classes=10, init_channels=4, num_cells=3)
    # (edge, op, logit): edge = offset(node) + input with offsets 0, 2, 5, 9; op indices in
    # PRIMITIVES order (1 max_pool, 3 skip, 4 sep_conv_3x3, 6 dil_conv_3x3). Within a node
    # the first pair of DARTS_V2 gets the larger logit, as the derivation emits the stronger
    # edge first.
    normal = np.zeros((14, 8), np.float32)
    for edge, op, logit in ((0, 4, 10), (1, 4, 9), (2, 4, 10), (3, 4, 9), (6, 4, 10),
                            (5, 3, 9), (9, 3, 10), (11, 6, 9)):
        normal[edge, op] = logit
    reduce = np.zeros((14, 8), np.float32)
    for edge, op, logit in ((0, 1, 10), (1, 1, 9), (4, 3, 10), (3, 1, 9), (5, 1, 10),
                            (7, 3, 9), (11, 3, 10), (10, 1, 9)):
        reduce[edge, op] = logit
    model.alpha_normal.assign(normal)
    model.alpha_reduce.assign(reduce)
    assert model.genotype() == genotypes.DARTS_V2


def test_supernet_config_and_keras_round_trip(tmp_path):
    model = Supernet(num_classes=5, init_channels=4, num_cells=3, num_nodes=2, input_channels=1)
    x = tf.random.normal((2, 8, 8, 1))
    expected = model(x, training=False).numpy()
    clone = Supernet.from_config(model.get_config())
    assert _count(clone.weight_variables) == _count(model.weight_variables)
    path = tmp_path / "supernet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), expected)
    assert loaded.genotype() == model.genotype()


def test_cifar_config_and_keras_round_trip(tmp_path):
    model = NetworkCIFAR(genotypes.DARTS_V2, num_classes=10, init_channels=4, num_cells=3)
    x = tf.random.normal((2, 32, 32, 3))
    model(x, training=True)  # moves the BN statistics away from their initial values
    expected = model(x, training=False).numpy()
    config = model.get_config()
    json.dumps(config)  # JSON-able
    clone = NetworkCIFAR.from_config(config)
    assert clone.genotype == genotypes.DARTS_V2 and clone.count_params() == model.count_params()
    model.save(tmp_path / "net.keras")
    loaded = keras.models.load_model(tmp_path / "net.keras")
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), expected)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="init_channels=5"):
        Supernet(init_channels=5)
    with pytest.raises(ValueError, match="num_cells=2"):
        NetworkCIFAR(genotypes.DARTS_V2, num_cells=2)
    with pytest.raises(ValueError, match="drop_path_rate=1.5"):
        NetworkCIFAR(genotypes.DARTS_V2, drop_path_rate=1.5)
    with pytest.raises(ValueError, match="bogus"):
        Supernet(primitives=("none", "bogus"))


def test_op_registry_follows_primitives_and_refuses_unknown_ops():
    assert tuple(ops.OPS) == PRIMITIVES  # the alpha columns' order
    with pytest.raises(ValueError, match="op_name='bogus'"):
        ops.make_op("bogus", 4, 1, affine=True)
    with pytest.raises(ValueError, match="stride=3"):
        ops.make_op("sep_conv_3x3", 4, 3, affine=True)


def test_depthwise_conv2d_refuses_strided_dilation_it_cannot_compute():
    x, kernel = tf.zeros((1, 8, 8, 2)), tf.zeros((3, 3, 2, 1))
    with pytest.raises(ValueError, match="stride=2, dilation=3, padding=3"):
        kernels.depthwise_conv2d(x, kernel, stride=2, padding=3, dilation=3)
    with pytest.raises(ValueError, match="stride=2, dilation=2, padding=1"):
        kernels.depthwise_conv2d(x, kernel, stride=2, padding=1, dilation=2)


@pytest.mark.parametrize("size,groups,dtype", [
    (8, 1, "float64"), (8, 2, "float64"),  # one 2x2 conv, full and grouped
    (8, 2, "float16"),  # grouped without a float16 gradient kernel: the two strided paths
])
def test_factorized_reduce_is_the_two_strided_paths(size, groups, dtype):
    """kernels.factorized_reduce against numpy's two strided 1x1 paths: values, and the
    input and kernel gradients against TensorFlow's of those paths."""
    rng = np.random.default_rng(3)
    c_in, half = 3, 2
    x = rng.normal(size=(2, size, size, groups * c_in))
    k1, k2 = (rng.normal(size=(1, 1, c_in, groups * half)) for _ in range(2))

    def paths(x, k1, k2, relu, matmul, concat, reshape):
        outs = []
        for k, (i, j) in ((k1, (0, 0)), (k2, (1, 1))):
            xs = relu(x[:, i::2, j::2, :])
            outs.append(concat([matmul(xs[..., g * c_in:(g + 1) * c_in],
                                       k[0, 0, :, g * half:(g + 1) * half])
                                for g in range(groups)]))
        shape = [-1, size // 2, size // 2, groups, half]
        return reshape(concat([reshape(outs[0], shape), reshape(outs[1], shape)]),
                       [-1, size // 2, size // 2, 2 * groups * half])

    expected = paths(x, k1, k2, lambda t: np.maximum(t, 0), np.matmul,
                     lambda ts: np.concatenate(ts, axis=-1), np.reshape)
    tensors = [tf.constant(a, dtype) for a in (x, k1, k2)]
    upstream = tf.constant(rng.normal(size=expected.shape), dtype)
    results = []
    for compute in (kernels.factorized_reduce, lambda *t: paths(
            *t, tf.nn.relu, tf.matmul, lambda ts: tf.concat(ts, axis=-1), tf.reshape)):
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            y = compute(*tensors)
        results.append([y, *tape.gradient(y, tensors, output_gradients=upstream)])
    tol = 1e-12 if dtype == "float64" else 2e-2
    np.testing.assert_allclose(results[0][0].numpy(), expected, rtol=tol, atol=tol)
    for ours, theirs in zip(results[0], results[1]):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("size,dtype,expected_op", [
    (8, "float64", "MatMul"), (8, "float16", "MatMul"),  # small maps: a matmul
    (9, "float64", "Conv2D"),  # 81 pixels: TensorFlow's conv
])
def test_pointwise_conv_and_its_input_grad_match_tensorflow_conv(size, dtype, expected_op):
    """kernels.conv2d of an ungrouped 1x1 conv (a matmul on maps of at most
    POINTWISE_MATMUL_MAX_PIXELS pixels) and kernels.pointwise_input_grad against
    tf.nn.conv2d and its gradients: values, input and filter gradients."""
    rng = np.random.default_rng(size)
    x = tf.constant(rng.normal(size=(3, size, size, 6)), dtype)
    kernel = tf.constant(rng.normal(size=(1, 1, 6, 5)), dtype)
    upstream = tf.constant(rng.normal(size=(3, size, size, 5)), dtype)

    def derivatives(conv, x, kernel, upstream):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = conv(x, kernel)
        return [y, *tape.gradient(y, [x, kernel], output_gradients=upstream)]

    graph = tf.function(lambda: kernels.conv2d(x, kernel)).get_concrete_function().graph
    op_types = {op.type for op in graph.get_operations()}
    other_op = "Conv2D" if expected_op == "MatMul" else "MatMul"
    assert expected_op in op_types and other_op not in op_types
    assert kernels.pointwise_as_matmul(x.shape, kernel.shape) == (expected_op == "MatMul")
    ours = derivatives(kernels.conv2d, x, kernel, upstream)
    theirs = derivatives(lambda x, kernel: tf.nn.conv2d(x, kernel, 1, "VALID"),
                         *(tf.cast(t, tf.float32) for t in (x, kernel, upstream)))
    ours.append(kernels.pointwise_input_grad(upstream, kernel, 6))
    theirs.append(theirs[1])
    tol = 1e-5 if dtype == "float64" else 2e-2
    for name, a, b in zip(["y", "dx", "dkernel", "input_grad"], ours, theirs):
        assert a.dtype == x.dtype, name
        scale = float(tf.reduce_max(tf.abs(b)))
        np.testing.assert_allclose(tf.cast(a, tf.float32).numpy(), b.numpy(), rtol=tol,
                                   atol=tol * scale, err_msg=name)


@pytest.mark.parametrize("size,padding,dilation,native,batch", [
    (8, 1, 1, True, 3), (8, 2, 1, True, 3), (8, 0, 1, True, 3),  # sep conv 3x3 / 5x5, VALID
    (16, 2, 2, True, 3), (16, 4, 2, True, 3),  # dil conv 3x3 / 5x5: oneDNN's dilated kernel
    (16, 2, 2, False, 3),  # without it: an undilated conv on the phases
    # Batch 4: the filter gradient with 4 examples side by side on the channel axis (thin
    # channels), and with 2 on the phases (batch 16).
    (8, 1, 1, True, 4), (8, 2, 1, True, 4), (16, 2, 2, False, 4),
])
def test_depthwise_conv2d_matches_tensorflow_in_values_and_two_derivatives(
        size, padding, dilation, native, batch, monkeypatch):
    """The stride-1 depthwise convs' own gradient (the input gradient as a conv with the
    turned filter, the filter gradient with examples folded into channels) against
    TensorFlow's ops in float64: values, both gradients and the derivatives of the
    gradients (the exact Hessian-vector product's)."""
    monkeypatch.setattr(kernels, "native_dilated_depthwise", lambda: native)
    k = 3 if padding <= dilation else 5
    rng = np.random.default_rng(size + padding)
    x = tf.constant(rng.normal(size=(batch, size, size, 5)))
    kernel = tf.constant(rng.normal(size=(k, k, 5, 1)))
    pads = [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    upstream = tf.constant(rng.normal(size=(batch, size + 2 * padding - dilation * (k - 1),
                                            size + 2 * padding - dilation * (k - 1), 5)))

    def derivatives(conv, x, kernel):
        with tf.GradientTape() as outer:
            outer.watch([x, kernel])
            with tf.GradientTape() as inner:
                inner.watch([x, kernel])
                y = conv(x, kernel)
            grads = inner.gradient(y, [x, kernel], output_gradients=tf.cast(upstream, y.dtype))
            norm = tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
        return [y, *grads, *outer.gradient(norm, [x, kernel])]

    expected = tf.function(lambda x, kernel: derivatives(
        lambda x, kernel: tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], pads,
                                                 dilations=[dilation, dilation]),
        x, kernel), autograph=False)(x, kernel)
    ours = tf.function(lambda x, kernel: derivatives(
        lambda x, kernel: kernels.depthwise_conv2d(x, kernel, 1, padding, dilation),
        x, kernel), autograph=False)(tf.cast(x, tf.float32), tf.cast(kernel, tf.float32))
    for name, a, b in zip(["y", "dx", "dkernel", "d2x", "d2kernel"], ours, expected):
        assert float(tf.reduce_max(tf.abs(b))) > 1.0, name
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                   atol=2e-6 * float(tf.reduce_max(tf.abs(b))), err_msg=name)


def test_registered_names_are_those_saved_models_carry():
    """Old `.keras` files name their classes "darts_tf>ClassName"; moving a class between
    modules must keep that name."""
    classes = [ops.Op, ops.Zero, ops.Identity, ops.Pool, ops.ReLUConvBN, ops.FactorizedReduce,
               ops.SepConv, ops.DilConv, heads.Stem, heads.ImageNetStem, heads.Classifier,
               heads.AuxiliaryHead, Supernet, NetworkCIFAR, NetworkImageNet]
    for cls in classes:
        assert keras.saving.get_registered_name(cls) == f"darts_tf>{cls.__name__}"
        assert keras.saving.get_registered_object(f"darts_tf>{cls.__name__}") is cls


def test_saved_model_serves_without_darts_tf(tmp_path):
    model = NetworkCIFAR(genotypes.DARTS_V2, num_classes=10, init_channels=4, num_cells=3)
    x = np.random.RandomState(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
    model(x, training=True)
    expected = model(x, training=False).numpy()
    model.export(str(tmp_path / "saved"), verbose=False)
    np.save(tmp_path / "x.npy", x)
    # A fresh process in which darts_tf cannot be imported.
    script = textwrap.dedent(f"""
        import sys
        sys.modules["darts_tf"] = None
        import numpy as np, tensorflow as tf
        served = tf.saved_model.load({str(tmp_path / "saved")!r})
        out = served.serve(tf.constant(np.load({str(tmp_path / "x.npy")!r})))
        np.save({str(tmp_path / "out.npy")!r}, out.numpy())
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env,
                   timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-5, atol=1e-5)


_GRADIENT_SCRIPT = textwrap.dedent("""
    import json, sys
    import keras, numpy as np, tensorflow as tf
    from darts_tf.supernet import Supernet
    keras.utils.set_random_seed(0)
    model = Supernet(num_classes=3, init_channels=4, num_cells=3, num_nodes=2, input_channels=1)
    model.build((None, 8, 8, 1))
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    print(json.dumps([float(loss)] + [float(tf.reduce_sum(tf.abs(g))) for g in grads]))
""")


def test_supernet_gradients_without_onednn_equal_the_default():
    """TensorFlow's CPU kernels have no grouped-convolution gradient without oneDNN
    (TF_ENABLE_ONEDNN_OPTS=0); the grouped 1x1 convs then run as per-group matmuls, the same
    function: the loss and every gradient agree with the default (oneDNN) build."""
    results = []
    for onednn in ("1", "0"):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "CUDA_VISIBLE_DEVICES": ""}
        out = subprocess.run([sys.executable, "-c", _GRADIENT_SCRIPT], env=env, text=True,
                             capture_output=True, timeout=300, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        results.append(np.array(json.loads(out.stdout.strip().splitlines()[-1])))
    assert len(results[0]) > 10 and np.all(results[0][1:] > 0)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-4, atol=1e-5)


_ONEDNN_SCRIPT = """
import json, logging, os, sys
if sys.argv[1] == "tensorflow_first":
    import tensorflow
import darts_tf
from darts_tf import kernels
messages = []
handler = logging.Handler()
handler.emit = lambda record: messages.append(record.getMessage())
logging.getLogger("darts_tf.kernels").addHandler(handler)
print(json.dumps({"setting": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                  "enabled": kernels.onednn_enabled(),
                  "warned": any("TF_ENABLE_ONEDNN_OPTS=1" in m for m in messages)}))
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 only")
@pytest.mark.parametrize("order,setting", [("darts_tf_first", None),
                                           ("tensorflow_first", None),
                                           ("darts_tf_first", "0")])
def test_importing_darts_tf_first_turns_onednn_on_unless_the_user_chose(order, setting):
    """TensorFlow leaves its oneDNN kernels off on x86 CPUs without AVX-512 VNNI/BF16,
    AVX-VNNI or AMX (2.3x slower search steps there, BENCHMARKS.md): darts_tf, imported
    before TensorFlow, turns them on; imported after, it cannot, and warns if they are off;
    the user's own TF_ENABLE_ONEDNN_OPTS wins, without a warning."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    out = subprocess.run([sys.executable, "-c", _ONEDNN_SCRIPT, order], env=env, text=True,
                         capture_output=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if setting == "0":
        assert result == {"setting": "0", "enabled": False, "warned": False}
    elif order == "darts_tf_first":
        assert result == {"setting": "1", "enabled": True, "warned": False}
    else:  # TensorFlow's own default for this CPU: a warning exactly when it is off
        assert result["setting"] is None and result["warned"] == (not result["enabled"])


@pytest.mark.parametrize("cls,kwargs,size", [
    (ops.SepConv, dict(kernel_size=3, stride=1), 8),
    (ops.SepConv, dict(kernel_size=5, stride=2, groups=2), 8),
    (ops.DilConv, dict(kernel_size=3, stride=1), 8),
    (ops.DilConv, dict(kernel_size=5, stride=2, groups=2), 8),  # every other pixel
    (ops.DilConv, dict(kernel_size=3, stride=1), 7),  # odd size: TensorFlow's dilated path
    (ops.SepConv, dict(kernel_size=3, stride=1), None),  # batch size unknown when traced
])
def test_recomputing_convs_give_the_same_values_and_first_and_second_derivatives(
        cls, kwargs, size):
    """The search convs recompute their ReLU and depthwise outputs in the backward pass
    (memory); values, gradients and the second derivatives the exact Hessian-vector
    product takes through them are those of the plain op."""
    channels = 3 * kwargs.get("groups", 1)
    plain = cls(3, affine=False, **kwargs)
    recomputing = cls(3, affine=False, recompute=True, **kwargs)
    for op in (plain, recomputing):
        op.build(None)
    for a, b in zip(plain.weights, recomputing.weights):
        b.assign(a)
    assert recomputing.get_config()["recompute"] and not plain.get_config()["recompute"]
    x = tf.random.stateless_normal((2, size or 8, size or 8, channels), seed=(1, 2))
    direction = [tf.random.stateless_normal(v.shape, seed=(3, i))
                 for i, v in enumerate(plain.trainable_weights)]
    signature = [tf.TensorSpec((None, 8, 8, channels))] if size is None else None

    def derivatives(op, x):
        return tf.function(lambda x: _derivatives(op, x), input_signature=signature,
                           autograph=False)(x)

    def _derivatives(op, x):
        kernels = op.trainable_weights
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = op(x, training=True)
                loss = tf.reduce_sum(tf.sin(y))
            grads = inner.gradient(loss, [x] + kernels)
            dot = tf.add_n([tf.reduce_sum(g * d) for g, d in zip(grads[1:], direction)])
        return y, grads, outer.gradient(dot, x)

    (y0, g0, h0), (y1, g1, h1) = derivatives(plain, x), derivatives(recomputing, x)
    np.testing.assert_array_equal(y0.numpy(), y1.numpy())
    assert float(tf.reduce_max(tf.abs(h0))) > 1e-3
    for a, b in zip(g0 + [h0], g1 + [h1]):  # values of order 1-10
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_batch_norm_keeping_output_matches_fused_batch_norm_and_reads_only_its_output():
    """The search cells' batch norm: the same outputs and running estimates as
    FusedBatchNorm, its gradient against a float64 computation, its second derivative
    against the built-in one, and no gradient op reads the input (memory)."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(6, 5, 5, 4)).astype(np.float32) * 3 + 1)
    dy = tf.constant(rng.normal(size=(6, 5, 5, 4)).astype(np.float32))
    direction = tf.constant(rng.normal(size=(6, 5, 5, 4)).astype(np.float32))
    moving_mean = tf.constant(rng.normal(size=4).astype(np.float32))
    moving_variance = tf.constant(rng.uniform(0.5, 2.0, size=4).astype(np.float32))

    def builtin(x):
        return tuple(tf.raw_ops.FusedBatchNorm(
            x=x, scale=tf.ones(4), offset=tf.zeros(4), mean=moving_mean,
            variance=moving_variance, epsilon=ops.BN_EPSILON, is_training=True,
            exponential_avg_factor=ops.BN_MOMENTUM)[:3])

    def ours(x):
        return kernels.batch_norm_keeping_output(x, moving_mean, moving_variance,
                                                 ops.BN_EPSILON, ops.BN_MOMENTUM)

    def derivatives(bn, x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                x_in = tf.identity(x, name="bn_input")
                outputs = bn(x_in)
            grad = inner.gradient(outputs[0], x_in, output_gradients=dy)
            dot = tf.reduce_sum(tf.sin(grad) * direction)
        return outputs, grad, outer.gradient(dot, x)

    (b_out, b_grad, b_second), (o_out, o_grad, o_second) = [
        tf.function(lambda x, bn=bn: derivatives(bn, x), autograph=False)(x)
        for bn in (builtin, ours)]
    for b, o in zip(b_out, o_out):
        np.testing.assert_array_equal(b.numpy(), o.numpy())
    x64, g64 = x.numpy().astype(np.float64), dy.numpy().astype(np.float64)
    variance = x64.var(axis=(0, 1, 2))
    normalised = (x64 - x64.mean(axis=(0, 1, 2))) / np.sqrt(variance + ops.BN_EPSILON)
    expected = (g64 - g64.mean(axis=(0, 1, 2))
                - normalised * (g64 * normalised).mean(axis=(0, 1, 2))) / np.sqrt(
                    variance + ops.BN_EPSILON)
    np.testing.assert_allclose(o_grad.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b_grad.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(b_second.numpy()).max() > 1e-2
    np.testing.assert_allclose(o_second.numpy(), b_second.numpy(), rtol=1e-5, atol=1e-6)

    def readers_of_the_input(bn):
        """The ops of a first-order gradient's graph that read the batch norm's input."""
        def gradient(x):
            with tf.GradientTape() as tape:
                x_in = tf.identity(x, name="bn_input")
                tape.watch(x_in)
                y = bn(x_in)[0]
            return tape.gradient(y, x_in, output_gradients=dy)

        graph = tf.function(gradient, autograph=False).get_concrete_function(x).graph
        x_in = graph.get_operation_by_name("bn_input").outputs[0]
        return [op.type for op in graph.get_operations()
                if x_in.ref() in {t.ref() for t in op.inputs}]

    assert "FusedBatchNormGrad" in readers_of_the_input(builtin)  # the check below can fail
    assert "FusedBatchNorm" in readers_of_the_input(ours)
    assert not [t for t in readers_of_the_input(ours) if t.endswith("Grad")]


@pytest.mark.parametrize("channels", [24, 40, 32])
def test_batch_norm_training_matches_fused_batch_norm_in_values_and_two_derivatives(channels):
    """The training batch norms with a scale (the candidates' last ones, retraining's):
    outputs, running estimates, gradients (input, scale, offset) and second derivatives
    as FusedBatchNorm on NHWC; on an odd multiple of 8 channels above 16 (oneDNN's slow
    case) the forward op runs on the NCHW view, the gradient op on NHWC."""
    rng = np.random.default_rng(channels)
    shape = (4, 6, 6, channels)
    x = tf.constant(rng.normal(size=shape).astype(np.float32) * 3 + 1)
    dy = tf.constant(rng.normal(size=shape).astype(np.float32))
    direction = tf.constant(rng.normal(size=shape).astype(np.float32))
    scale = tf.constant(rng.uniform(0.5, 1.5, size=channels).astype(np.float32))
    offset = tf.constant(rng.normal(size=channels).astype(np.float32))
    moving_mean = tf.constant(rng.normal(size=channels).astype(np.float32))
    moving_variance = tf.constant(rng.uniform(0.5, 2.0, size=channels).astype(np.float32))

    def builtin(x, scale, offset):
        return tuple(tf.raw_ops.FusedBatchNorm(
            x=x, scale=scale, offset=offset, mean=moving_mean, variance=moving_variance,
            epsilon=ops.BN_EPSILON, is_training=True,
            exponential_avg_factor=ops.BN_MOMENTUM)[:3])

    def ours(x, scale, offset):
        return kernels.batch_norm_training(x, scale, offset, moving_mean, moving_variance,
                                           ops.BN_EPSILON, ops.BN_MOMENTUM)

    def derivatives(bn, x, scale, offset):
        with tf.GradientTape() as outer:
            outer.watch([x, scale])
            with tf.GradientTape() as inner:
                inner.watch([x, scale, offset])
                outputs = bn(x, scale, offset)
            grads = inner.gradient(outputs[0], [x, scale, offset], output_gradients=dy)
            dot = tf.reduce_sum(tf.sin(grads[0]) * direction) + tf.reduce_sum(grads[1] ** 2)
        return outputs, grads, outer.gradient(dot, [x, scale])

    results = {}
    for bn in (builtin, ours):
        fn = tf.function(lambda x, s, o, bn=bn: derivatives(bn, x, s, o), autograph=False)
        results[bn] = fn(x, scale, offset)
        graph = fn.get_concrete_function(x, scale, offset).graph
        formats = {op.type: op.get_attr("data_format").decode() for op in graph.get_operations()
                   if op.type in ("FusedBatchNorm", "FusedBatchNormGrad")}
        view = bn is ours and channels % 16 == 8 and kernels.onednn_enabled()
        assert formats == {"FusedBatchNorm": "NCHW" if view else "NHWC",
                           "FusedBatchNormGrad": "NHWC"}
    (b_out, b_grads, b_second), (o_out, o_grads, o_second) = results[builtin], results[ours]
    for b, o in zip(list(b_out) + list(b_grads), list(o_out) + list(o_grads)):
        np.testing.assert_allclose(o.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    x64, g64 = x.numpy().astype(np.float64), dy.numpy().astype(np.float64)
    normalised = (x64 - x64.mean(axis=(0, 1, 2))) / np.sqrt(x64.var(axis=(0, 1, 2))
                                                            + ops.BN_EPSILON)
    np.testing.assert_allclose(o_grads[1].numpy(), (g64 * normalised).sum(axis=(0, 1, 2)),
                               rtol=1e-5, atol=1e-5)
    for b, o in zip(b_second, o_second):
        assert np.abs(b.numpy()).max() > 1e-2
        np.testing.assert_allclose(o.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_output_scale_equals_scaling_the_output_in_values_and_derivatives(stride):
    """Each search candidate applies the mixed op's per-channel weights itself (most in
    their last batch norm): the same output, running estimates, gradients (input, weights,
    scale) and second derivatives as multiplying the unscaled output, on two edges."""
    rng = np.random.default_rng(1)
    channels, groups = 4, 2
    x = tf.constant(rng.normal(size=(3, 8, 8, groups * channels)).astype(np.float32))
    out_size = 8 // stride
    dy = tf.constant(rng.normal(size=(3, out_size, out_size, groups * channels)).astype(
        np.float32))
    # Softmax-like weights of two edges, one of them tiny (a collapsed op).
    scale = tf.constant(np.repeat([0.3, 1e-7], channels).astype(np.float32))
    for name in PRIMITIVES[1:]:
        op = ops.make_op(name, channels, stride, affine=False, search=True, groups=groups)

        def derivatives(fused):
            state = [v.numpy() for v in op.variables]
            with tf.GradientTape() as outer:
                outer.watch([x, scale])
                with tf.GradientTape() as tape:
                    tape.watch([x, scale])
                    y = (op(x, training=True, output_scale=scale) if fused
                         else tf.reshape(scale, [1, 1, 1, -1]) * op(x, training=True))
                grads = tape.gradient(y, [x, scale, *op.trainable_variables],
                                      output_gradients=dy)
                dot = tf.reduce_sum(tf.sin(grads[0]))
            second = outer.gradient(dot, [x, scale])
            moving = [v.numpy() for v in op.non_trainable_variables]
            for v, value in zip(op.variables, state):
                v.assign(value)
            return y, grads, second, moving

        (y_f, g_f, s_f, m_f), (y_m, g_m, s_m, m_m) = derivatives(True), derivatives(False)
        np.testing.assert_allclose(y_f.numpy(), y_m.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
        for f, m in zip(g_f, g_m):
            assert f is not None and m is not None, name
            np.testing.assert_allclose(f.numpy(), m.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=name)
        for f, m in zip(s_f, s_m):  # of the input gradient, as the exact Hessian takes them
            assert (f is None) == (m is None), name  # None: the identity's, on x
            if f is None:
                continue
            np.testing.assert_allclose(f.numpy(), m.numpy(), rtol=1e-4,
                                       atol=1e-5 * max(1.0, np.abs(m.numpy()).max()),
                                       err_msg=name)
        for f, m in zip(m_f, m_m):
            np.testing.assert_array_equal(f, m, err_msg=name)
    # Neither the scale's gradient nor its second derivative is trivially zero.
    assert np.abs(g_f[1].numpy()).max() > 1e-2 and np.abs(s_f[1].numpy()).max() > 1e-3


def test_custom_gradient_records_only_results_and_matches_tf_custom_gradient():
    """kernels.custom_gradient: the gradient of tf.custom_gradient, by tape (first and
    second order) and by tf.gradients, with no zero tensors built for its inputs' copies;
    a function that reads a variable is refused."""
    def f(x, w):
        y = tf.sin(x) * w

        def grad(dy):  # deliberately not the true gradient: the custom one must be used
            return dy * 2.0 * tf.cos(x) * w, tf.reduce_sum(dy * x * x)

        return y, grad

    ours, theirs = kernels.custom_gradient(f), tf.custom_gradient(f)
    x = tf.constant(np.linspace(-1.0, 1.5, 6).astype(np.float32))
    w = tf.constant(0.7)

    def derivatives(g, x, w):
        with tf.GradientTape() as outer:
            outer.watch([x, w])
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                y = g(x, w)
                loss = tf.reduce_sum(y * y)
            dx, dw = tape.gradient(loss, [x, w])
            dot = tf.reduce_sum(dx) + dw
        return y, dx, dw, outer.gradient(dot, [x, w])

    expected = derivatives(theirs, x, w)
    for result in (derivatives(ours, x, w),  # eagerly: tf.custom_gradient itself
                   tf.function(lambda x, w: derivatives(ours, x, w))(x, w)):
        for a, b in zip(tf.nest.flatten(result), tf.nest.flatten(expected)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    np.testing.assert_allclose(expected[1].numpy(),
                               2 * np.sin(x.numpy()) * 0.7 * 2 * np.cos(x.numpy()) * 0.7,
                               rtol=1e-5)  # the custom rule, not the true one (half of it)

    @tf.function
    def symbolic(x, w):
        return tf.gradients(tf.reduce_sum(ours(x, w)), [x, w])
    for a, b in zip(symbolic(x, w), [2.0 * tf.cos(x) * w, tf.reduce_sum(x * x)]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)

    def zeros(g):
        """The dead zero tensors in the graph of a first-order gradient."""
        graph = tf.function(lambda x, w: derivatives(g, x, w)[1]).get_concrete_function(
            x, w).graph
        return [op.name for op in graph.get_operations()
                if op.outputs and not any(t.consumers() for t in op.outputs)
                and op.name.startswith("zeros")]
    assert len(zeros(theirs)) >= 2 and not zeros(ours)  # the zeros for x's and w's copies

    v = tf.Variable(1.0)
    reads_variable = kernels.custom_gradient(lambda x: (x * v, lambda dy: dy))
    with pytest.raises(ValueError, match="reads variables"):
        tf.function(reads_variable)(x)


@pytest.mark.parametrize("size", [8, 7])
def test_strided_max_pool_is_minus_inf_padded_pooling_in_values_and_gradient(size):
    """`kernels.pool_3x3(x, "max", 2)` (the stride-1 pool at every other pixel) against the
    reference's definition, padding 1 with -inf and a VALID stride-2 window: bit for bit in
    value and input gradient, eagerly, on even and odd sizes, with ReLU zeros tying in the
    windows (traced, TensorFlow's kernels may add overlapping windows' gradients in another
    order, for either formulation: 1 ulp)."""
    rng = np.random.default_rng(3)
    x = tf.constant(np.maximum(rng.normal(size=(2, size, size, 3)) - 1.0, 0.0).astype(np.float32))
    out = (size - 1) // 2 + 1
    dy = tf.constant(rng.normal(size=(2, out, out, 3)).astype(np.float32))
    pads = [[0, 0], [1, 1], [1, 1], [0, 0]]

    def padded(x):
        return tf.nn.max_pool2d(tf.pad(x, pads, constant_values=float("-inf")), 3, 2, "VALID")

    results = []
    for pool in (lambda x: kernels.pool_3x3(x, "max", 2), padded):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = pool(x)
        results.append((y.numpy(), tape.gradient(y, x, output_gradients=dy).numpy()))
    (y, grad), (y_ref, grad_ref) = results
    assert y.shape == (2, out, out, 3) and (y_ref == 0).sum() > 0  # all-zero windows: ties
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(grad, grad_ref)
    assert np.count_nonzero(grad) > 0


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_shares_its_candidates_relu_with_the_same_values_and_derivatives(stride):
    """A search mixed op takes ReLU(x) once for its four candidates that start with one
    (the separable and dilated convs, which recompute their activations in the backward
    pass): the same output, gradients (input, alphas' weights, every weight) and second
    derivatives as each candidate taking its own ReLU, on two edges side by side."""
    channels, edges = 4, 2
    mixed = cells.MixedOp(channels, stride, num_inputs=edges)
    assert sum(op.starts_with_relu for op in mixed.candidates) == 4
    rng = np.random.default_rng(2)
    inputs = [tf.constant(rng.normal(size=(3, 8, 8, channels)).astype(np.float32))
              for _ in range(edges)]
    weights = tf.constant(rng.dirichlet(np.ones(len(PRIMITIVES)), size=edges).astype(np.float32))
    mixed(inputs, weights, training=True)  # builds the candidates
    state = [v.numpy() for v in mixed.variables]
    graph = tf.function(lambda: mixed(inputs, weights, training=True)).get_concrete_function().graph
    # One ReLU of the input, the separable convs' second ones (one per sep_conv) and, at
    # stride 2, FactorizedReduce's own (on the strided pixels only).
    assert sum(op.type == "Relu" for op in graph.get_operations()) == 1 + 2 + (stride == 2)

    def unshared(inputs, weights, training):
        x = tf.concat(inputs, axis=-1)
        per_channel = tf.gather(weights, np.repeat(np.arange(edges), channels))
        columns = tf.unstack(per_channel, axis=1)
        return mixed._sum_edges(tf.add_n([  # pylint: disable=protected-access
            op(x, training=training, output_scale=columns[i])
            for i, op in zip(mixed._indices, mixed.candidates)]))  # pylint: disable=protected-access

    def derivatives(call):
        for v, value in zip(mixed.variables, state):
            v.assign(value)
        sources = [*inputs, weights]
        with tf.GradientTape() as outer:
            outer.watch(sources)
            with tf.GradientTape() as tape:
                tape.watch(sources)
                y = call(inputs, weights, training=True)
                loss = tf.reduce_sum(tf.sin(y))
            grads = tape.gradient(loss, [*sources, *mixed.trainable_variables])
            dot = tf.reduce_sum(tf.square(grads[0])) + tf.reduce_sum(tf.square(grads[1]))
        second = outer.gradient(dot, sources)
        return (y, [tf.convert_to_tensor(g) for g in grads],  # the weights': IndexedSlices
                [tf.convert_to_tensor(g) for g in second],
                [v.numpy() for v in mixed.non_trainable_variables])

    shared = derivatives(lambda *a, **k: mixed(*a, **k))
    own = derivatives(unshared)
    np.testing.assert_allclose(shared[0].numpy(), own[0].numpy(), rtol=1e-5, atol=1e-6)
    for s, o in zip(shared[1] + shared[2], own[1] + own[2]):
        assert s is not None and o is not None
        np.testing.assert_allclose(s.numpy(), o.numpy(), rtol=1e-4,
                                   atol=1e-5 * max(1.0, np.abs(o.numpy()).max()))
    for s, o in zip(shared[3], own[3]):
        np.testing.assert_array_equal(s, o)
    assert np.abs(shared[2][2].numpy()).max() > 1e-3  # the weights' second derivative


def test_fixed_network_recompute_keeps_values_and_gradients_and_recomputes_each_block():
    """NetworkCIFAR(recompute=True): the separable and dilated convs keep only their inputs for
    the backward pass and recompute the rest there (less memory): the same loss and
    gradients as without (to float32 rounding: the two graphs' kernels may order their
    sums differently), one more depthwise conv per ReLU-depthwise-pointwise block in the
    traced gradient, and the option in the model's config."""
    kwargs = dict(num_classes=3, init_channels=4, num_cells=3, auxiliary=False,
                  drop_path_rate=0.0)
    kept = NetworkCIFAR(genotypes.DARTS_V2, **kwargs)
    again = NetworkCIFAR(genotypes.DARTS_V2, recompute=True, **kwargs)
    x = tf.constant(np.random.default_rng(4).normal(size=(2, 16, 16, 3)).astype(np.float32))
    kept(x), again(x)
    again.set_weights(kept.get_weights())

    def step(model):
        @tf.function
        def run():
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.sin(model(x, training=True)))
            return loss, tape.gradient(loss, [x, *model.trainable_variables])
        return run

    results = [step(model)() for model in (kept, again)]
    np.testing.assert_allclose(float(results[1][0]), float(results[0][0]), rtol=1e-5)
    grads = [[tf.convert_to_tensor(g).numpy() for g in r[1]] for r in results]
    # Against the largest gradient: some are zero in exact arithmetic (an offset followed by a
    # batch norm) and only rounding noise here.
    scale = max(np.abs(g).max() for g in grads[0])
    for a, b in zip(*grads):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * scale)

    def depthwise_convs(model):
        graph = step(model).get_concrete_function().graph
        return sum(op.type == "DepthwiseConv2dNative" for op in graph.get_operations())
    blocks = sum({"SepConv": 2, "DilConv": 1}.get(type(op).__name__, 0)
                 for cell in again.cells for op in cell.ops)
    # DARTS_V2 with 3 cells has one normal cell (cells 1 and 2 reduce, with pools and skips
    # only): 5 separable convs of two blocks each and a dilated conv.
    assert blocks == 5 * 2 + 1
    assert depthwise_convs(again) - depthwise_convs(kept) == blocks
    assert again.get_config()["recompute"] is True and kept.get_config()["recompute"] is False
    assert NetworkCIFAR.from_config(again.get_config()).recompute is True
    with pytest.raises(ValueError, match="recompute=1"):
        NetworkCIFAR(genotypes.DARTS_V2, recompute=1, **kwargs)
