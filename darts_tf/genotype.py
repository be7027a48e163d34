"""Genotypes: the discrete cell architecture that DARTS derives from its alphas.

Pure data (numpy + stdlib, no TensorFlow, no `eval`). The search writes a
genotype as JSON (`{"format": "darts-tf/genotype", "version": 1, ...}`) and
retraining reads it back; `load_genotype` also reads NNI v1 checkpoints
(`epoch_49.json`), the reference's printed `Genotype(normal=[...], ...)` text
(flat as quark0 prints it, or nested per node as pt.darts does) and the
published names `DARTS_V1` / `DARTS_V2` / `DARTS`.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import numbers
import os
import re
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

# quark0 cnn/genotypes.py L5-14, in this order (the column order of an alpha matrix).
PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
FORMAT, VERSION = "darts-tf/genotype", 1
_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
# NNI v1.9 examples/nas/darts/model.py candidate names.
_NNI_TO_OP = {"maxpool": "max_pool_3x3", "avgpool": "avg_pool_3x3", "skipconnect": "skip_connect",
              "sepconv3x3": "sep_conv_3x3", "sepconv5x5": "sep_conv_5x5",
              "dilconv3x3": "dil_conv_3x3", "dilconv5x5": "dil_conv_5x5"}
_OP_TO_NNI = {op: name for name, op in _NNI_TO_OP.items()}
_NNI_KEY = re.compile(r"(normal|reduce)_n(\d+)_(?:p(\d+)|switch)")
_ASSIGNMENT = re.compile(r"\s*[A-Za-z_]\w*\s*=(?!=)")  # "DARTS_V2 = Genotype(...)"


class GenotypeError(ValueError):
    """A malformed genotype or genotype source; the message names source, field and value."""


class _Shown(str):
    """A received value already formatted for a message (not repr'd again)."""


def _error(source: str, field: str, problem: str, received: Any) -> GenotypeError:
    text = received if isinstance(received, _Shown) else repr(received)
    text = text if len(text) <= 200 else text[:197] + "..."
    return GenotypeError(f"{source}: {field}: {problem}. Received: {text}")


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_seq(x: Any) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, (str, bytes))


def _check_pairs(pairs: Any, field: str, source: str) -> tuple:
    if not _is_seq(pairs):
        raise _error(source, field, "expected a list of (op, input_index) pairs", pairs)
    out = []
    for pos, pair in enumerate(pairs):
        where, node = f"{field}[{pos}]", pos // 2
        if not _is_seq(pair) or len(pair) != 2:
            raise _error(source, where, "expected an (op, input_index) pair", pair)
        op, index = pair
        if not isinstance(op, str):
            raise _error(source, where, "op must be a string", op)
        if op not in PRIMITIVES:
            raise _error(source, where, f"unknown op; valid ops: {', '.join(PRIMITIVES)}", op)
        if not _is_int(index):
            raise _error(source, where, "input index must be an int", index)
        if not 0 <= index <= node + 1:
            raise _error(source, where, f"node {node} may only use inputs 0..{node + 1} "
                         "(0, 1: cell inputs; 2..: earlier nodes)", index)
        out.append((op, int(index)))
    return tuple(out)


def _check_concat(concat: Any, field: str, num_nodes: int, source: str) -> tuple:
    if not _is_seq(concat) or not concat:
        raise _error(source, field, "expected a non-empty list of state indices", concat)
    for pos, index in enumerate(concat):
        if not _is_int(index) or not 0 <= index <= num_nodes + 1:
            raise _error(source, f"{field}[{pos}]", f"expected an int in 0..{num_nodes + 1} "
                         f"for {num_nodes} nodes", index)
    if len(set(concat)) != len(concat):
        raise _error(source, field, "indices must be distinct", concat)
    return tuple(int(i) for i in concat)


def _validate(fields: Mapping[str, Any], source: str) -> dict:
    """Checks and coerces the four fields to tuples; raises GenotypeError."""
    normal = _check_pairs(fields["normal"], "normal", source)
    reduce = _check_pairs(fields["reduce"], "reduce", source)
    if len(normal) < 2 or len(normal) % 2:
        raise _error(source, "normal", "expected 2 pairs per node (an even count >= 2)",
                     _Shown(f"{len(normal)} pairs"))
    if len(reduce) != len(normal):
        raise _error(source, "reduce", f"expected as many pairs as normal ({len(normal)})",
                     _Shown(f"{len(reduce)} pairs"))
    n = len(normal) // 2
    return {"normal": normal, "reduce": reduce,
            "normal_concat": _check_concat(fields["normal_concat"], "normal_concat", n, source),
            "reduce_concat": _check_concat(fields["reduce_concat"], "reduce_concat", n, source)}


@dataclasses.dataclass(frozen=True, repr=False)
class Genotype:
    """A cell architecture: two (op, input_index) pairs per intermediate node.

    Attributes:
        normal: Pairs of the normal cell, node by node. Input 0 is c_{k-2}, 1 is
            c_{k-1}, 2.. are the cell's earlier intermediate nodes.
        normal_concat: States concatenated into the normal cell's output.
        reduce: Pairs of the reduction cell.
        reduce_concat: States concatenated into the reduction cell's output.
    """
    normal: tuple
    normal_concat: tuple
    reduce: tuple
    reduce_concat: tuple

    def __post_init__(self):
        fields = _validate({f: getattr(self, f) for f in _FIELDS}, "Genotype(...)")
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @property
    def num_nodes(self) -> int:
        """Number of intermediate nodes per cell."""
        return len(self.normal) // 2

    def __repr__(self) -> str:  # The reference's text form; load_genotype reads it back.
        fields = ", ".join(f"{f}={list(getattr(self, f))!r}" for f in _FIELDS)
        return f"Genotype({fields})"

    def to_dict(self) -> dict:
        """Returns the JSON-able dict (format "darts-tf/genotype", version 1)."""
        d = {"format": FORMAT, "version": VERSION}
        for f in _FIELDS:
            d[f] = [list(x) if isinstance(x, tuple) else x for x in getattr(self, f)]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> "Genotype":
        """Builds a genotype from `to_dict()` output; `source` names it in errors."""
        if not isinstance(d, Mapping):
            raise _error(source, "<top level>", "expected a JSON object", d)
        for key in ("format", "version", *_FIELDS):
            if key not in d:
                raise _error(source, key, "missing key", _Shown(f"keys {sorted(map(str, d))}"))
        if d["format"] != FORMAT:
            raise _error(source, "format", f"expected {FORMAT!r}", d["format"])
        if not _is_int(d["version"]) or d["version"] != VERSION:
            raise _error(source, "version", f"unsupported format version (supported: {VERSION})",
                         d["version"])
        return cls(**_validate(d, source))

    def to_json(self) -> str:
        """Returns the JSON text, one field per line."""
        lines = (f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in self.to_dict().items())
        return "{\n" + ",\n".join(lines) + "\n}\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "Genotype":
        """Parses `to_json()` output; `source` (e.g. the file path) names it in errors."""
        return cls.from_dict(_loads(text, source), source)


def _loads(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        lines = text.splitlines()
        line = lines[err.lineno - 1] if err.lineno <= len(lines) else ""
        raise _error(source, "JSON", f"invalid JSON at line {err.lineno}, column {err.colno}: "
                     f"{err.msg}", _Shown(f"line {err.lineno}: {line!r}")) from None


def softmax(x: Any, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along `axis` (float64)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _parse_weights(w: np.ndarray, primitives: tuple, num_nodes: int) -> list:
    """quark0 cnn/model_search.py Network.genotype()._parse, on softmaxed rows.

    Returns (op, input, row) triples: `row` is the edge's row in `w`.
    """
    keep = [k for k, p in enumerate(primitives) if p != "none"]
    gene, start = [], 0
    for i in range(num_nodes):
        rows = w[start:start + i + 2].tolist()
        # As quark0: ascending sort on -strength; sorted is stable, so on ties the lower edge wins.
        edges = sorted(range(i + 2), key=lambda e: -max(rows[e][k] for k in keep))[:2]
        for e in edges:
            best = None
            for k in keep:  # strictly greater wins: on ties the earlier primitive wins
                if best is None or rows[e][k] > rows[e][best]:
                    best = k
            gene.append((primitives[best], e, start + e))
        start += i + 2
    return gene


def _limit_skips(w: np.ndarray, primitives: tuple, num_nodes: int, max_skips: int) -> list:
    """P-DARTS' skip-connect guard (chenxin061/pdarts `train_search.py`, the loop over
    `delete_min_sk_prob`, `keep_1_on`, `keep_2_branches`).

    While the derived cell holds more than `max_skips` skip-connects, the weakest chosen
    skip-connect (the smallest weight among the edges that chose it) is removed from its
    edge's candidates and the whole cell is derived again: that edge takes its next op,
    and its strength, hence which edges a node keeps, is recomputed. P-DARTS sets the
    removed weight to 0; here it is -1, which ranks the same way whenever the other
    weights are positive (softmax) and also loses ties with weights that underflowed to 0.
    Each derivation is quark0's (`_parse_weights`); P-DARTS' own ranking breaks exact ties
    between edges the other way (the later edge wins).
    """
    w = np.array(w, dtype=np.float64)
    skip = primitives.index("skip_connect")
    while True:
        gene = _parse_weights(w, primitives, num_nodes)
        chosen = [row for op, _, row in gene if op == "skip_connect"]
        if len(chosen) <= max_skips:
            return gene
        w[min(chosen, key=lambda row: w[row, skip]), skip] = -1.0


def edge_weights(beta: Any, num_nodes: int) -> np.ndarray:
    """PC-DARTS' edge normalisation: per node, softmax over the betas of its incoming edges.

    Args:
        beta: (num_edges,) logits, one per edge, in the alpha rows' edge order.
        num_nodes: intermediate nodes per cell.

    Returns:
        (num_edges,) weights; those of each node's edges sum to 1.
    """
    beta = np.asarray(beta, dtype=np.float64)
    out, start = [], 0
    for i in range(num_nodes):
        out.append(softmax(beta[start:start + i + 2]))
        start += i + 2
    return np.concatenate(out)


def derive_genotype(alpha_normal: Any, alpha_reduce: Any, primitives: Sequence[str] = PRIMITIVES,
                    num_nodes: int = 4, concat: Optional[Sequence[int]] = None, *,
                    beta_normal: Any = None, beta_reduce: Any = None,
                    max_skip_connect: Optional[int] = None) -> Genotype:
    """Derives the discrete genotype from alphas exactly as quark0 does.

    W = softmax(alpha) per edge row. For node i (edges from states 0..i+1), edges are
    ranked by max over non-`none` ops of W and the top 2 kept, strongest first; each
    kept edge takes its argmax over non-`none` ops. Ties: lower edge, earlier op.

    With PC-DARTS' betas (yuhuixu1993/PC-DARTS `model_search.py` `genotype`), each row
    of W is first multiplied by its edge's weight (`edge_weights`), then the same rule.
    With `max_skip_connect` = M, the normal cell keeps at most M skip-connects, the
    strongest, as P-DARTS derives it (`_limit_skips`); the reduction cell is not limited.

    Args:
        alpha_normal: (num_edges, len(primitives)) logits of the normal cell; rows in
            edge order (node 0: from 0, 1; node 1: from 0, 1, 2; ...), 14 for 4 nodes.
        alpha_reduce: Same for the reduction cell.
        primitives: Op name of each alpha column.
        num_nodes: Intermediate nodes per cell.
        concat: States concatenated into the output; default range(2, 2 + num_nodes).
        beta_normal: PC-DARTS' (num_edges,) edge logits of the normal cell, or None.
        beta_reduce: Same for the reduction cell (both or neither).
        max_skip_connect: at most this many skip-connects in the normal cell (None: no limit).

    Returns:
        The Genotype.
    """
    source, primitives = "derive_genotype", tuple(primitives)
    if not _is_int(num_nodes) or num_nodes < 1:
        raise _error(source, "num_nodes", "expected an int >= 1", num_nodes)
    if not any(p != "none" for p in primitives):
        raise _error(source, "primitives", "expected at least one op besides 'none'", primitives)
    if (beta_normal is None) != (beta_reduce is None):
        raise _error(source, "beta_normal, beta_reduce", "expected both or neither",
                     _Shown(f"beta_normal={'None' if beta_normal is None else '...'}, "
                            f"beta_reduce={'None' if beta_reduce is None else '...'}"))
    if max_skip_connect is not None:
        if not _is_int(max_skip_connect) or max_skip_connect < 0:
            raise _error(source, "max_skip_connect", "expected None or an int >= 0",
                         max_skip_connect)
        if "skip_connect" in primitives and not any(
                p not in ("none", "skip_connect") for p in primitives):
            raise _error(source, "max_skip_connect", "needs an op besides 'none' and "
                         "'skip_connect' to replace skip-connects with", primitives)
    num_edges = num_nodes * (num_nodes + 3) // 2
    shape = (num_edges, len(primitives))
    genes = []
    for cell, alpha, beta in (("normal", alpha_normal, beta_normal),
                              ("reduce", alpha_reduce, beta_reduce)):
        weights = softmax(_checked(alpha, f"alpha_{cell}", shape, source, num_nodes))
        if beta is not None:
            weights = weights * edge_weights(
                _checked(beta, f"beta_{cell}", (num_edges,), source, num_nodes), num_nodes)[:, None]
        if cell == "normal" and max_skip_connect is not None and "skip_connect" in primitives:
            gene = _limit_skips(weights, primitives, num_nodes, max_skip_connect)
        else:
            gene = _parse_weights(weights, primitives, num_nodes)
        genes.append([(op, index) for op, index, _ in gene])
    concat = range(2, 2 + num_nodes) if concat is None else concat
    return Genotype(genes[0], concat, genes[1], concat)


def random_genotype(seed: Union[int, np.random.Generator], num_nodes: int = 4,
                    primitives: Sequence[str] = PRIMITIVES) -> Genotype:
    """A cell drawn uniformly from the search space: the random-search baseline.

    The paper's random-search baseline samples cells from the same space as DARTS (Liu
    et al. 2019, Table 1, best of 24 by a short training): for each intermediate
    node i (0-based), two distinct inputs drawn uniformly among its i + 2 candidates
    (the two cell inputs and the i earlier nodes), and for each input an op drawn
    uniformly from the space's ops other than 'none' (a derived DARTS cell never holds
    'none'; the paper's Table 1 counts 7 ops for the random baseline, as for DARTS). The
    normal cell first, then the reduction cell, from the same generator;
    both concatenate every intermediate node.

    Args:
        seed: an int seed (the same seed gives the same cell) or a numpy Generator
            (advanced by the draws).
        num_nodes: intermediate nodes per cell.
        primitives: the space's ops ('none' is never drawn).

    Returns:
        The Genotype.
    """
    source = "random_genotype"
    if not _is_int(num_nodes) or num_nodes < 1:
        raise _error(source, "num_nodes", "expected an int >= 1", num_nodes)
    ops = [p for p in primitives if p != "none"]
    if not ops:
        raise _error(source, "primitives", "expected at least one op besides 'none'",
                     tuple(primitives))
    unknown = [p for p in ops if p not in PRIMITIVES]
    if unknown:
        raise _error(source, "primitives", f"unknown ops; valid ops: {', '.join(PRIMITIVES)}",
                     unknown)
    if isinstance(seed, np.random.Generator):
        rng = seed
    elif _is_int(seed) and seed >= 0:
        rng = np.random.default_rng(seed)
    else:
        raise _error(source, "seed", "expected an int >= 0 or a numpy Generator", seed)
    cells = []
    for _ in ("normal", "reduce"):
        pairs = []
        for i in range(num_nodes):
            inputs = rng.choice(i + 2, size=2, replace=False)  # distinct, every pair equally likely
            picks = rng.integers(len(ops), size=2)
            pairs.extend((ops[int(k)], int(j)) for j, k in zip(inputs, picks))
        cells.append(pairs)
    concat = range(2, 2 + num_nodes)
    return Genotype(cells[0], concat, cells[1], concat)


def _checked(values: Any, name: str, shape: tuple, source: str, num_nodes: int) -> np.ndarray:
    """`values` as a finite float64 array of `shape`; GenotypeError otherwise."""
    try:
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise _error(source, name, f"expected a numeric array ({err})", values) from None
    if values.shape != shape:
        columns = ", one column per primitive" if len(shape) == 2 else ""
        raise _error(source, name, f"expected shape {shape} (one row per edge for num_nodes="
                     f"{num_nodes}{columns})", _Shown(f"shape {values.shape}"))
    if not np.all(np.isfinite(values)):
        raise _error(source, name, f"{name[:5]}s must be finite", values.tolist())
    return values


def genotype_to_nni(genotype: Genotype) -> dict:
    """Returns NNI v1's checkpoint dict (36 keys for 4 nodes) for `genotype`."""
    out, source = {}, "genotype_to_nni"
    for cell in ("normal", "reduce"):
        concat = getattr(genotype, f"{cell}_concat")
        if concat != tuple(range(2, 2 + genotype.num_nodes)):
            raise _error(source, f"{cell}_concat", "NNI cells always concatenate all nodes", concat)
        for i in range(genotype.num_nodes):
            chosen = {}
            for pos in (2 * i, 2 * i + 1):
                op, j = getattr(genotype, cell)[pos]
                if op not in _OP_TO_NNI or j in chosen:
                    raise _error(source, f"{cell}[{pos}]", "NNI needs non-'none' ops on 2 "
                                 "distinct inputs per node", (op, j))
                chosen[j] = op
            k = i + 2
            out.update({f"{cell}_n{k}_p{j}": [_OP_TO_NNI[chosen[j]]] if j in chosen else []
                        for j in range(k)})
            out[f"{cell}_n{k}_switch"] = [f"{cell}_n{k}_p{j}" for j in chosen]
    return out


def genotype_from_nni(d: Mapping[str, Any], source: str = "<dict>") -> Genotype:
    """Reads NNI v1's checkpoint dict (`{normal|reduce}_n{k}_p{j}` / `_switch` keys)."""
    if not isinstance(d, Mapping):
        raise _error(source, "<top level>", "expected a JSON object", d)
    for key, value in d.items():
        m = _NNI_KEY.fullmatch(key) if isinstance(key, str) else None
        if not m or int(m[2]) < 2 or (m[3] is not None and int(m[3]) >= int(m[2])):
            raise _error(source, str(key), "unexpected key in an NNI DARTS checkpoint", value)
    fields = {}
    for cell in ("normal", "reduce"):
        nodes = sorted({int(m[2]) for m in map(_NNI_KEY.fullmatch, d) if m[1] == cell})
        if nodes != list(range(2, 2 + len(nodes))) or not nodes:
            raise _error(source, f"{cell}_n*", "expected nodes n2, n3, ... without gaps", nodes)
        pairs = []
        for k in nodes:
            key = f"{cell}_n{k}_switch"
            if key not in d:
                raise _error(source, key, "missing key", _Shown(f"keys {sorted(d)}"))
            switch = d[key]
            if not isinstance(switch, list) or len(switch) != 2 or len(set(map(str, switch))) != 2:
                raise _error(source, key, f"expected 2 distinct keys out of {cell}_n{k}_p0.."
                             f"{cell}_n{k}_p{k - 1}", switch)
            for edge in switch:
                m = _NNI_KEY.fullmatch(edge) if isinstance(edge, str) else None
                if not m or m[3] is None or edge not in d or not edge.startswith(f"{cell}_n{k}_"):
                    raise _error(source, key, f"expected keys present among {cell}_n{k}_p0.."
                                 f"{cell}_n{k}_p{k - 1}", edge)
                value = [d[edge]] if isinstance(d[edge], str) else d[edge]
                if not isinstance(value, list) or len(value) != 1 or value[0] not in _NNI_TO_OP:
                    raise _error(source, edge, "expected one NNI op name; valid: "
                                 f"{', '.join(_NNI_TO_OP)}", d[edge])
                pairs.append((_NNI_TO_OP[value[0]], int(m[3])))
        fields[cell], fields[f"{cell}_concat"] = pairs, range(2, 2 + len(nodes))
    return Genotype(**_validate(fields, source))


def _literal(node: ast.AST) -> Any:
    """`ast.literal_eval`, plus `range(a, b[, c])` with literal int arguments."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        r = range(*[ast.literal_eval(a) for a in node.args])
        if node.keywords or len(r) > 1000:
            raise ValueError("unsupported range")
        return list(r)
    return ast.literal_eval(node)


def _from_text(text: str, source: str) -> Genotype:
    """Parses the reference's `Genotype(normal=[...], ...)` text by walking its AST."""
    m = _ASSIGNMENT.match(text)
    expr = text[m.end():] if m else text
    try:
        call = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError as err:
        raise _error(source, "text", f"not Genotype(...) text or JSON: {err.msg} at line "
                     f"{err.lineno}, column {err.offset}", _Shown(expr.strip())) from None
    func = getattr(call, "func", None)
    if not isinstance(call, ast.Call) or getattr(func, "id", getattr(func, "attr", None)) != \
            "Genotype" or len(call.args) > 4:
        raise _error(source, "text", "expected Genotype(normal=..., normal_concat=..., "
                     "reduce=..., reduce_concat=...)", _Shown(ast.unparse(call)))
    nodes = dict(zip(_FIELDS, call.args))
    for kw in call.keywords:
        if kw.arg not in _FIELDS or kw.arg in nodes:
            raise _error(source, str(kw.arg), f"unexpected argument; expected {', '.join(_FIELDS)}",
                         _Shown(f"{kw.arg}={ast.unparse(kw.value)}"))
        nodes[kw.arg] = kw.value
    fields = {}
    for field in _FIELDS:
        if field not in nodes:
            raise _error(source, field, "missing argument", _Shown(f"arguments {sorted(nodes)}"))
        try:
            value = _literal(nodes[field])
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise _error(source, field, "expected a literal list or range(a, b)",
                         _Shown(ast.unparse(nodes[field]))) from None
        if field in ("normal", "reduce") and _is_seq(value) and value and all(
                _is_seq(node) and all(_is_seq(p) for p in node) for node in value):
            if any(len(node) != 2 for node in value):  # pt.darts: [[(op, i), (op, j)], ...]
                raise _error(source, field, "expected 2 pairs per node", value)
            value = [pair for node in value for pair in node]
        fields[field] = value
    return Genotype(**_validate(fields, source))


def _from_content(text: str, source: str) -> Genotype:
    if not text.lstrip().startswith("{"):
        return _from_text(text, source)
    return _from_mapping(_loads(text, source), source)


def _from_mapping(d: Any, source: str) -> Genotype:
    if isinstance(d, Mapping) and "format" not in d and any(
            isinstance(k, str) and _NNI_KEY.fullmatch(k) for k in d):
        return genotype_from_nni(d, source)
    return Genotype.from_dict(d, source)


def load_genotype(source: Union[Genotype, str, os.PathLike, Mapping[str, Any]]) -> Genotype:
    """Loads a genotype from whatever names or holds one; the kind is detected by content.

    Args:
        source: A Genotype (returned as is); a name ("DARTS_V1", "DARTS_V2", "DARTS");
            a path to, or the text of, our JSON, an NNI v1 checkpoint JSON or the
            reference's `Genotype(...)` text; or the dict form of either JSON.

    Returns:
        The Genotype.

    Raises:
        GenotypeError: naming the source, field and value at fault.
    """
    if isinstance(source, Genotype):
        return source
    if isinstance(source, Mapping):
        return _from_mapping(source, "<dict>")
    if isinstance(source, (str, os.PathLike)):
        from darts_tf import genotypes  # pylint: disable=import-outside-toplevel (cycle)
        if isinstance(source, str) and source in genotypes.PUBLISHED:
            return genotypes.PUBLISHED[source]
        path = os.fspath(source)
        if isinstance(source, os.PathLike) or os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeError) as err:
                raise _error(path, "file", f"cannot read ({type(err).__name__})", path) from None
            return _from_content(text, path)
        if path.lstrip().startswith("{") or "Genotype(" in path:
            return _from_content(path, "<string>")
    raise _error("<string>" if isinstance(source, str) else "load_genotype", "source",
                 "expected a Genotype, a dict, a name (DARTS, DARTS_V1, DARTS_V2), an existing "
                 "file, or genotype JSON or Genotype(...) text", source)
