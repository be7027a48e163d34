"""Tests for darts_tf.choice: LayerChoice / InputChoice on user-defined models."""
import json
import re

import keras
import numpy as np
import pytest

from darts_tf import search_space
from darts_tf.choice import (ChosenInputs, InputChoice, LayerChoice, collect_choices,
                             export_decisions, fixed_arch)

L = keras.layers
INPUT_SHAPE = (6, 6, 3)
# stem 1x1 3->4: 16; c1 conv3x3 4->4: 148; c1 conv5x5: 404; c2 conv3x3: 148; head 4->2: 10.
SUPERNET_WEIGHTS = 16 + 148 + 404 + 148 + 10
NUM_ALPHAS = 3 + 3 + 3
DECISIONS = {"c1": ["c1_conv5x5"], "c2": ["avgpool"], "skip": ["c1"]}
FIXED_PARAMS = 16 + 404 + 0 + 10  # stem + chosen conv5x5 + avgpool + head


def build_model():
    """Two LayerChoices (list and dict candidates) and an InputChoice."""
    inputs = keras.Input(INPUT_SHAPE)
    x = L.Conv2D(4, 1, name="stem")(inputs)
    a = LayerChoice([L.Conv2D(4, 3, padding="same", name="c1_conv3x3"),
                     L.Conv2D(4, 5, padding="same", name="c1_conv5x5"),
                     L.MaxPooling2D(3, 1, padding="same", name="c1_maxpool")], label="c1")(x)
    b = LayerChoice({"conv3x3": L.Conv2D(4, 3, padding="same", name="c2_conv3x3"),
                     "avgpool": L.AveragePooling2D(3, 1, padding="same", name="c2_avgpool"),
                     "identity": L.Identity(name="c2_identity")}, label="c2")(a)
    s = InputChoice(3, 1, label="skip", candidate_names=["stem", "c1", "c2"])([x, a, b])
    out = L.Dense(2, name="head")(L.GlobalAveragePooling2D()(s))
    return keras.Model(inputs, out)


def softmax(z):
    e = np.exp(z - np.max(z))
    return e / e.sum()


def set_alphas(model, values):
    for label, value in values.items():
        model.get_layer(label).alpha.assign(np.asarray(value, np.float32))


@pytest.fixture(name="x")
def fixture_x():
    return np.random.default_rng(0).normal(size=(2, *INPUT_SHAPE)).astype(np.float32)


def test_output_is_softmax_weighted_sum(x):
    model = build_model()
    rng = np.random.default_rng(1)
    set_alphas(model, {k: rng.normal(size=3) for k in ("c1", "c2", "skip")})
    c1, c2, skip = (model.get_layer(k) for k in ("c1", "c2", "skip"))
    assert all(c.built for c in [*c1.candidates, *c2.candidates])

    def mixed(choice, inp):
        w = softmax(choice.alpha.numpy())
        return sum(w_i * np.asarray(c(inp)) for w_i, c in zip(w, choice.candidates))

    stem = np.asarray(model.get_layer("stem")(x))
    a = mixed(c1, stem)
    b = mixed(c2, a)
    s = np.tensordot(softmax(skip.alpha.numpy()), np.stack([stem, a, b]), axes=1)
    kernel, bias = model.get_layer("head").get_weights()
    expected = s.mean(axis=(1, 2)) @ kernel + bias
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-5, atol=1e-6)


def test_arch_and_weight_variables_partition_trainables():
    model = build_model()
    alphas = search_space.arch_variables(model)
    assert [tuple(v.shape) for v in alphas] == [(3,), (3,), (3,)]
    assert sum(int(np.prod(v.shape)) for v in alphas) == NUM_ALPHAS
    assert {id(v) for v in alphas} == {id(model.get_layer(k).alpha) for k in ("c1", "c2", "skip")}
    weights = search_space.weight_variables(model)
    assert not {id(v) for v in alphas} & {id(v) for v in weights}
    assert len(alphas) + len(weights) == len(model.trainable_variables)
    assert {id(v) for v in alphas + weights} == {id(v) for v in model.trainable_variables}
    assert sum(int(np.prod(v.shape)) for v in weights) == SUPERNET_WEIGHTS
    assert model.count_params() == SUPERNET_WEIGHTS + NUM_ALPHAS
    assert alphas[0].path == "c1/alpha"
    init = np.concatenate([v.numpy() for v in alphas])
    assert np.all(np.abs(init) < 1e-2) and np.std(init) > 0  # 1e-3 * N(0, 1)


def test_export_decisions():
    model = build_model()
    set_alphas(model, {"c1": [0.0, 2.0, 1.0], "c2": [0.0, 3.0, 1.0], "skip": [-1.0, 0.5, 0.2]})
    assert export_decisions(model) == DECISIONS
    assert search_space.export_architecture(model) == DECISIONS


def test_input_choice_exports_strongest_first():
    choice = InputChoice(4, num_chosen=2, label="sw")
    out = choice([keras.ops.ones((1, 2))] * 4)
    assert tuple(out.shape) == (1, 2)
    choice.alpha.assign([0.1, 3.0, -1.0, 2.0])
    assert choice.export() == ["1", "3"]


def test_fixed_arch_builds_chosen_candidates_only(x, tmp_path):
    supernet = build_model()
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps(DECISIONS))
    with fixed_arch(path):
        fixed = build_model()
    assert fixed.count_params() == FIXED_PARAMS
    assert not collect_choices(fixed)
    assert isinstance(fixed.get_layer("skip"), ChosenInputs)
    names = {layer.name for layer in fixed.layers}
    assert {"c1_conv5x5", "c2_avgpool"} <= names
    assert not names & {"c1_conv3x3", "c1_maxpool", "c2_conv3x3", "c2_identity"}

    for name in ("stem", "head"):
        fixed.get_layer(name).set_weights(supernet.get_layer(name).get_weights())
    fixed.get_layer("c1_conv5x5").set_weights(supernet.get_layer("c1").candidates[1].get_weights())
    big = 1e9  # softmax -> exactly one-hot
    set_alphas(supernet, {"c1": [0, big, 0], "c2": [0, big, 0], "skip": [0, big, 0]})
    np.testing.assert_allclose(np.asarray(fixed(x)), np.asarray(supernet(x)), rtol=1e-5, atol=1e-6)


def test_subclassed_model_search_and_fixed(x):
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.op = LayerChoice({"dense": L.Dense(3), "relu": L.ReLU()}, label="blk")

        def call(self, inputs):
            return self.op(inputs)

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.head = L.Dense(1)

        def call(self, inputs):
            return self.head(self.block(inputs))

    net = Net()
    net(x[:, 0, 0, :])
    assert [c.label for c in collect_choices(net)] == ["blk"]
    assert len(search_space.arch_variables(net)) == 1
    with fixed_arch({"blk": ["dense"]}):
        fixed = Net()
    assert isinstance(fixed.block.op, L.Dense)
    fixed(x[:, 0, 0, :])
    assert fixed.count_params() == (3 * 3 + 3) + (3 + 1)


def test_config_round_trip():
    choice = LayerChoice({"conv": L.Conv2D(4, 3, padding="same"), "pool": L.MaxPooling2D(3, 1, "same")},
                         label="c")
    config = choice.get_config()
    json.dumps(config)
    clone = LayerChoice.from_config(config)
    assert clone.candidate_names == ["conv", "pool"] and clone.label == "c"
    assert clone.get_config() == config
    listed = LayerChoice([L.Dense(2, name="d"), L.Dense(2, name="e")], label="lst")
    assert LayerChoice.from_config(listed.get_config()).candidate_names == ["d", "e"]
    inp = InputChoice(3, 2, label="s", candidate_names=["a", "b", "c"])
    assert InputChoice.from_config(inp.get_config()).get_config() == inp.get_config()
    chosen = ChosenInputs([2, 0], num_candidates=3)
    assert ChosenInputs.from_config(chosen.get_config()).get_config() == chosen.get_config()


def test_keras_file_round_trip(x, tmp_path):
    model = build_model()
    rng = np.random.default_rng(2)
    set_alphas(model, {k: rng.normal(size=3) for k in ("c1", "c2", "skip")})
    model.save(tmp_path / "supernet.keras")
    loaded = keras.saving.load_model(tmp_path / "supernet.keras")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    for old, new in zip(search_space.arch_variables(model), search_space.arch_variables(loaded)):
        np.testing.assert_array_equal(old.numpy(), new.numpy())
    assert export_decisions(loaded) == export_decisions(model)

    with fixed_arch(DECISIONS):
        fixed = build_model()
    fixed.save(tmp_path / "fixed.keras")
    reloaded = keras.saving.load_model(tmp_path / "fixed.keras")
    np.testing.assert_allclose(np.asarray(reloaded(x)), np.asarray(fixed(x)), rtol=1e-6, atol=1e-6)


def test_duplicate_label_raises():
    inputs = keras.Input((4,))
    y = LayerChoice([L.Dense(4), L.ReLU()], label="dup", name="first")(inputs)
    y = LayerChoice([L.Dense(4), L.ReLU()], label="dup", name="second")(y)
    model = keras.Model(inputs, y)
    with pytest.raises(ValueError, match="Duplicate choice label 'dup'"):
        collect_choices(model)
    with pytest.raises(ValueError, match="Duplicate choice label"):
        search_space.arch_variables(model)


@pytest.mark.parametrize("num_chosen", [0, 4, 1.0])
def test_bad_num_chosen_raises(num_chosen):
    with pytest.raises(ValueError, match=re.escape(f"Received: num_chosen={num_chosen!r}")):
        InputChoice(3, num_chosen, label="s")


@pytest.mark.parametrize("label", [None, ""])
def test_bad_label_raises(label):
    with pytest.raises(ValueError, match="Received: label="):
        InputChoice(2, 1, label=label)
    with pytest.raises(ValueError, match="Received: label="):
        LayerChoice([L.ReLU()], label)


def test_unknown_candidate_in_decisions_raises():
    with pytest.raises(ValueError, match=r"label='c1'.*Received: \['nope'\]"):
        with fixed_arch({**DECISIONS, "c1": ["nope"]}):
            build_model()
    with pytest.raises(ValueError, match=r"label='skip'.*Received: \['c3'\]"):
        with fixed_arch({**DECISIONS, "skip": ["c3"]}):
            build_model()


def test_missing_label_in_decisions_raises():
    decisions = {k: v for k, v in DECISIONS.items() if k != "c2"}
    with pytest.raises(ValueError, match="no entry for LayerChoice label='c2'"):
        with fixed_arch(decisions):
            build_model()


def test_unused_decision_raises():
    with pytest.raises(ValueError, match=r"\['ghost'\] were not used"):
        with fixed_arch({**DECISIONS, "ghost": ["x"]}):
            build_model()


def test_mismatched_candidate_shapes_raise():
    choice = LayerChoice([L.Conv2D(4, 3, padding="same", name="narrow"),
                          L.Conv2D(8, 3, padding="same", name="wide")], label="mm")
    with pytest.raises(ValueError, match=re.escape(
            "label='mm': all candidates must give the same output shape, but candidate 'narrow' "
            "gives (None, 6, 6, 4) and candidate 'wide' gives (None, 6, 6, 8)")):
        choice(keras.Input(INPUT_SHAPE))
