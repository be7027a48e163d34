"""What a searchable model is, for the trainers.

A model is searchable when it has architecture variables (alphas). The DARTS
`Supernet` exposes them as `model.arch_variables`; a user model built from
`LayerChoice` / `InputChoice` layers has them inside those layers. The search
trainer only ever goes through the three functions below, so both kinds of
model are searched by the same code.
"""
from __future__ import annotations

from typing import Any


def arch_variables(model) -> list:
    """The model's architecture variables (alphas), in a stable order."""
    if hasattr(model, "arch_variables"):
        return list(model.arch_variables)
    from darts_tf import choice  # pylint: disable=import-outside-toplevel

    found = [v for layer in choice.collect_choices(model) for v in layer.arch_variables]
    if not found:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} has no architecture variables: it is "
            "neither a darts_tf.Supernet nor built from LayerChoice/InputChoice layers. "
            "Build the model (call it once) before searching it.")
    return found


def weight_variables(model) -> list:
    """The model's trainable variables that are not architecture variables."""
    arch_ids = {id(v) for v in arch_variables(model)}
    return [v for v in model.trainable_variables if id(v) not in arch_ids]


def export_architecture(model) -> dict[str, Any]:
    """The architecture the search settled on, as JSON-able data.

    For the DARTS supernet: the genotype's JSON dict. For a user model: the
    choice decisions, label -> chosen candidate names (NNI's export shape).
    """
    if hasattr(model, "genotype"):
        return model.genotype().to_dict()
    from darts_tf import choice  # pylint: disable=import-outside-toplevel

    return choice.export_decisions(model)
