"""Search-space primitives for user-defined models, in the manner of NNI.

A user model becomes searchable by DARTS when some of its layers are choices:

    x = LayerChoice([Conv2D(16, 3, padding="same"), MaxPooling2D(3, 1, "same")],
                    label="block1")(x)
    y = InputChoice(2, num_chosen=1, label="skip")([x, shortcut])

During the search each choice holds one alpha vector and outputs the
softmax(alpha)-weighted sum of its candidates (DARTS eq. 2). After the search,
`export_decisions(model)` gives label -> chosen names (NNI's export shape, e.g.
`{"block1": ["conv2d"], "skip": ["0"]}`), and building the same model code
inside `fixed_arch(decisions)` yields the discrete model: there a `LayerChoice`
constructor returns the chosen candidate layer itself, and an `InputChoice`
constructor returns a `ChosenInputs` layer that sums the chosen inputs.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Any, Iterator, Mapping, Sequence

import keras
import numpy as np
from keras import ops

from darts_tf.genotype import softmax

_FIXED = threading.local()  # .stack: list of active _FixedArch, innermost last


class _FixedArch:
    """The decisions of one `fixed_arch` block and the labels it consumed."""

    def __init__(self, decisions: Mapping[str, Sequence[str]]):
        self.decisions = dict(decisions)
        self.consumed: set[str] = set()

    def lookup(self, label: str, kind: str) -> list[str]:
        if label not in self.decisions:
            raise ValueError(
                f"fixed_arch: the decisions have no entry for {kind} label={label!r}. "
                f"Known labels: {sorted(self.decisions)}")
        self.consumed.add(label)
        return list(self.decisions[label])


def _active_fixed_arch() -> _FixedArch | None:
    stack = getattr(_FIXED, "stack", None)
    return stack[-1] if stack else None


def _check_label(label) -> str:
    if not isinstance(label, str) or not label:
        raise ValueError(f"`label` must be a non-empty string. Received: label={label!r}")
    return label


def _layer_name(label: str, kwargs: dict) -> str:
    # Keras names cannot contain "/"; labels are unique in a model, so are names.
    return kwargs.pop("name", None) or label.replace("/", "_")


def _named_candidates(candidates, label: str) -> tuple[list[str], list[keras.layers.Layer]]:
    """Normalizes a list or name -> layer mapping into (names, layers)."""
    if isinstance(candidates, Mapping):
        names, layers = [str(k) for k in candidates], list(candidates.values())
    elif isinstance(candidates, (list, tuple)):
        layers = list(candidates)
        names = [getattr(c, "name", None) for c in layers]
    else:
        raise ValueError(
            f"LayerChoice label={label!r}: `candidates` must be a list of layers or a dict "
            f"name -> layer. Received: candidates={candidates!r}")
    if not layers:
        raise ValueError(f"LayerChoice label={label!r}: `candidates` is empty.")
    for name, layer in zip(names, layers):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                f"LayerChoice label={label!r}: candidate {name!r} is not a Keras layer. "
                f"Received: {layer!r}")
    if len(set(names)) != len(names):
        raise ValueError(
            f"LayerChoice label={label!r}: candidate names must be unique. Received: {names}")
    return names, layers


def _mix(alpha, tensors: list):
    """sum_i softmax(alpha)_i * tensors[i], in the tensors' dtype."""
    w = ops.cast(ops.softmax(alpha), tensors[0].dtype)
    out = w[0] * tensors[0]
    for i in range(1, len(tensors)):
        out = out + w[i] * tensors[i]
    return out


class _ChoiceBase(keras.layers.Layer):
    """Shared alpha handling of LayerChoice and InputChoice."""

    def _add_alpha(self, n: int):
        self.alpha = self.add_weight(
            shape=(n,), name="alpha", trainable=True, dtype="float32",
            initializer=keras.initializers.RandomNormal(stddev=1e-3))

    @property
    def arch_variables(self) -> list:
        """[alpha], the architecture variable of this choice (after build)."""
        if not self.built:
            raise ValueError(f"Choice label={self.label!r} is not built yet: call the model once.")
        return [self.alpha]

    def choice_weights(self) -> np.ndarray:
        """softmax(alpha) as a float64 numpy vector."""
        # .numpy(): ops.convert_to_numpy(variable) warns under NumPy 2 (no `copy` in __array__).
        return softmax(np.asarray(self.arch_variables[0].numpy(), dtype=np.float64))


@keras.saving.register_keras_serializable(package="darts_tf")
class LayerChoice(_ChoiceBase):
    """Mixed op over candidate layers: sum_i softmax(alpha)_i * candidate_i(x).

    Inside `fixed_arch(decisions)` the constructor returns the chosen candidate
    layer itself instead (see `__new__`).

    Args:
        candidates: list of layers (named by `layer.name`) or ordered dict
            name -> layer. All must map the input to the same output shape.
        label: the choice's key in exported decisions; unique in a model.
        **kwargs: base layer arguments (`name` defaults to the label).
    """

    def __new__(cls, candidates=None, label=None, **kwargs):
        fixed = _active_fixed_arch()
        if fixed is None or label is None:  # label is None when copied/unpickled
            return super().__new__(cls, candidates, label, **kwargs)
        names, layers = _named_candidates(candidates, _check_label(label))
        chosen = fixed.lookup(label, "LayerChoice")
        if len(chosen) != 1 or chosen[0] not in names:
            raise ValueError(
                f"fixed_arch: LayerChoice label={label!r} needs exactly one of the candidates "
                f"{names}. Received: {chosen!r}")
        return layers[names.index(chosen[0])]  # not a LayerChoice: __init__ is skipped

    def __init__(self, candidates, label, **kwargs):
        if getattr(self, "_choice_initialized", False):
            return  # __new__ returned a chosen candidate that is itself a LayerChoice
        label = _check_label(label)
        super().__init__(name=_layer_name(label, kwargs), **kwargs)
        self.label = label
        names, layers = _named_candidates(candidates, label)
        self.candidate_names = names
        self._candidates_as_dict = isinstance(candidates, Mapping)
        self.candidates = layers  # tracked by Keras: weights and .keras saving
        self._output_shape = None
        self._choice_initialized = True

    def build(self, input_shape):
        shapes = []
        for layer in self.candidates:
            # Explicit build: Keras 3 would otherwise build each child by tracing call().
            if not layer.built:
                layer.build(input_shape)
            spec = layer.compute_output_spec(keras.KerasTensor(input_shape, self.compute_dtype))
            shapes.append(tuple(spec.shape))
        for name, shape in zip(self.candidate_names, shapes):
            if shape != shapes[0]:
                raise ValueError(
                    f"LayerChoice label={self.label!r}: all candidates must give the same output "
                    f"shape, but candidate {self.candidate_names[0]!r} gives {shapes[0]} and "
                    f"candidate {name!r} gives {shape} for input shape {tuple(input_shape)}.")
        self._output_shape = shapes[0]
        self._add_alpha(len(self.candidates))

    def call(self, inputs, training=None):
        outs = [layer(inputs, training=training) for layer in self.candidates]
        return _mix(self.alpha, outs)

    def compute_output_shape(self, input_shape):
        if self._output_shape is not None:
            return self._output_shape
        spec = self.candidates[0].compute_output_spec(keras.KerasTensor(input_shape))
        return tuple(spec.shape)

    def export(self) -> list[str]:
        """[name of the argmax candidate] (ties: the first)."""
        return [self.candidate_names[int(np.argmax(self.choice_weights()))]]

    def get_config(self) -> dict[str, Any]:
        serialized = [keras.saving.serialize_keras_object(c) for c in self.candidates]
        if self._candidates_as_dict:
            serialized = dict(zip(self.candidate_names, serialized))
        return {**super().get_config(), "candidates": serialized, "label": self.label}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        cands = config.pop("candidates")
        if isinstance(cands, Mapping):
            cands = {k: keras.saving.deserialize_keras_object(v) for k, v in cands.items()}
        else:
            cands = [keras.saving.deserialize_keras_object(v) for v in cands]
        return cls(cands, **config)


@keras.saving.register_keras_serializable(package="darts_tf")
class InputChoice(_ChoiceBase):
    """Mixed choice among equal-shape inputs: sum_i softmax(alpha)_i * inputs[i].

    Inside `fixed_arch(decisions)` the constructor returns `ChosenInputs`.

    Args:
        num_candidates: number of input tensors the layer is called on.
        num_chosen: how many inputs the exported decision keeps.
        label: the choice's key in exported decisions; unique in a model.
        candidate_names: optional names of the inputs for the export
            (default "0", "1", ...).
        **kwargs: base layer arguments (`name` defaults to the label).
    """

    def __new__(cls, num_candidates=None, num_chosen=1, label=None, candidate_names=None,
                **kwargs):
        fixed = _active_fixed_arch()
        if fixed is None or label is None:
            return super().__new__(cls, num_candidates, num_chosen, label, candidate_names,
                                   **kwargs)
        names = _check_input_args(num_candidates, num_chosen, label, candidate_names)
        chosen = fixed.lookup(label, "InputChoice")
        unknown = [c for c in chosen if c not in names]
        if unknown or len(chosen) != num_chosen or len(set(chosen)) != len(chosen):
            raise ValueError(
                f"fixed_arch: InputChoice label={label!r} needs num_chosen={num_chosen} distinct "
                f"names among {names}. Received: {chosen!r}")
        return ChosenInputs([names.index(c) for c in chosen], num_candidates=num_candidates,
                            name=_layer_name(label, kwargs), **kwargs)

    def __init__(self, num_candidates, num_chosen=1, label=None, candidate_names=None, **kwargs):
        names = _check_input_args(num_candidates, num_chosen, label, candidate_names)
        super().__init__(name=_layer_name(label, kwargs), **kwargs)
        self.num_candidates = num_candidates
        self.num_chosen = num_chosen
        self.label = label
        self.candidate_names = candidate_names and list(candidate_names)
        self._export_names = names

    def build(self, input_shape):
        _check_input_shapes(input_shape, self.num_candidates, f"InputChoice label={self.label!r}")
        self._add_alpha(self.num_candidates)

    def call(self, inputs):
        return _mix(self.alpha, list(inputs))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def export(self) -> list[str]:
        """Names of the `num_chosen` strongest inputs, strongest first (ties: lower index)."""
        order = np.argsort(-self.choice_weights(), kind="stable")[: self.num_chosen]
        return [self._export_names[i] for i in order]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_candidates": self.num_candidates,
                "num_chosen": self.num_chosen, "label": self.label,
                "candidate_names": self.candidate_names and list(self.candidate_names)}


def _check_input_args(num_candidates, num_chosen, label, candidate_names) -> list[str]:
    """Validates InputChoice arguments; returns the export names of the inputs."""
    _check_label(label)
    if not isinstance(num_candidates, int) or num_candidates < 1:
        raise ValueError(f"InputChoice label={label!r}: `num_candidates` must be a positive "
                         f"integer. Received: num_candidates={num_candidates!r}")
    if not isinstance(num_chosen, int) or not 1 <= num_chosen <= num_candidates:
        raise ValueError(f"InputChoice label={label!r}: `num_chosen` must be an integer in "
                         f"[1, num_candidates={num_candidates}]. Received: num_chosen={num_chosen!r}")
    if candidate_names is None:
        return [str(i) for i in range(num_candidates)]
    names = list(candidate_names)
    if (len(names) != num_candidates or len(set(names)) != len(names)
            or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"InputChoice label={label!r}: `candidate_names` must be "
                         f"{num_candidates} distinct strings. Received: candidate_names={names!r}")
    return names


def _check_input_shapes(input_shape, num_candidates: int, what: str) -> None:
    shapes = [tuple(s) for s in input_shape] if isinstance(input_shape, (list, tuple)) else []
    if not shapes or not all(isinstance(s, tuple) for s in shapes) or len(shapes) != num_candidates:
        raise ValueError(f"{what} must be called on a list of {num_candidates} tensors. "
                         f"Received input shapes: {input_shape}")
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"{what}: all inputs must have the same shape. Received: {shapes}")


@keras.saving.register_keras_serializable(package="darts_tf")
class ChosenInputs(keras.layers.Layer):
    """The fixed form of an InputChoice: sum of inputs[i] for i in `indices`.

    Args:
        indices: the chosen input positions (one index: pass that input through).
        num_candidates: if given, the number of inputs the layer must receive.
    """

    def __init__(self, indices: Sequence[int], num_candidates: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.indices = [int(i) for i in indices]
        if not self.indices:
            raise ValueError(f"`indices` must be non-empty. Received: indices={indices!r}")
        self.num_candidates = num_candidates

    def build(self, input_shape):
        if self.num_candidates is not None:
            _check_input_shapes(input_shape, self.num_candidates, f"ChosenInputs {self.name!r}")

    def call(self, inputs):
        out = inputs[self.indices[0]]
        for i in self.indices[1:]:
            out = out + inputs[i]
        return out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[self.indices[0]])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "indices": self.indices,
                "num_candidates": self.num_candidates}


def collect_choices(model) -> list:
    """Every LayerChoice/InputChoice in `model`, depth-first in layer order.

    Raises:
        ValueError: if two distinct choices share a label.
    """
    found, seen, labels = [], set(), {}

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, _ChoiceBase):
            if layer.label in labels:
                raise ValueError(
                    f"Duplicate choice label {layer.label!r} in model "
                    f"{getattr(model, 'name', model)!r} (layers {labels[layer.label].name!r} and "
                    f"{layer.name!r}). Labels must be unique.")
            labels[layer.label] = layer
            found.append(layer)
        for child in layer._flatten_layers(include_self=False, recursive=False):
            visit(child)

    visit(model)
    return found


def export_decisions(model) -> dict[str, list[str]]:
    """label -> chosen names for every choice in the (built) model, NNI's export shape."""
    return {layer.label: layer.export() for layer in collect_choices(model)}


def load_decisions(decisions: Mapping[str, Sequence[str]] | str | os.PathLike) -> dict:
    """Validates decisions given as a dict or as a path to a JSON file of one."""
    if isinstance(decisions, (str, os.PathLike)):
        with open(decisions, encoding="utf-8") as f:
            decisions = json.load(f)
    if not isinstance(decisions, Mapping):
        raise ValueError(f"Decisions must be a dict label -> list of names. Received: {decisions!r}")
    out = {}
    for label, value in decisions.items():
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"Decision for label={label!r} must be a list of names. "
                             f"Received: {value!r}")
        out[label] = list(value)
    return out


@contextlib.contextmanager
def fixed_arch(decisions: Mapping[str, Sequence[str]] | str | os.PathLike) -> Iterator[dict]:
    """Within this block, choices are built fixed to `decisions`.

    `LayerChoice(...)` returns the chosen candidate layer, `InputChoice(...)` a
    `ChosenInputs`. A label without a decision, or a decision naming an unknown
    candidate, raises at construction. Building the same label twice is allowed
    (e.g. building the model twice). On exit, decision labels that no choice
    consumed raise ValueError: they mean the decisions belong to another model.

    Args:
        decisions: dict label -> chosen names (as from `export_decisions`), or
            the path of a JSON file holding one.

    Yields:
        The validated decisions dict.
    """
    fixed = _FixedArch(load_decisions(decisions))
    stack = getattr(_FIXED, "stack", None)
    if stack is None:
        stack = _FIXED.stack = []
    stack.append(fixed)
    try:
        yield fixed.decisions
    finally:
        stack.remove(fixed)
    unused = sorted(set(fixed.decisions) - fixed.consumed)
    if unused:
        raise ValueError(f"fixed_arch: decisions for labels {unused} were not used by any "
                         "LayerChoice/InputChoice built in the block.")
