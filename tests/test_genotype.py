"""Tests for darts_tf.genotype / darts_tf.genotypes: derivation, formats, errors."""
import ast
import json
import pathlib
import random

import numpy as np
import pytest

from darts_tf import genotypes
from darts_tf.genotype import (PRIMITIVES, Genotype, GenotypeError, derive_genotype,
                               genotype_from_nni, genotype_to_nni, load_genotype, softmax)

# Verbatim from DARTS_REFERENCE.md section 4 (quark0 cnn/genotypes.py L74-77).
V1_TEXT = "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])"  # noqa: E501
V2_TEXT = "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"  # noqa: E501
# pt.darts prints the same cell nested per node, with range concat.
V2_NESTED = ("Genotype(normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], [('sep_conv_3x3', 0), "
             "('sep_conv_3x3', 1)], [('sep_conv_3x3', 1), ('skip_connect', 0)], [('skip_connect', 0), "
             "('dil_conv_3x3', 2)]], normal_concat=range(2, 6), reduce=[[('max_pool_3x3', 0), "
             "('max_pool_3x3', 1)], [('skip_connect', 2), ('max_pool_3x3', 1)], [('max_pool_3x3', 0), "
             "('skip_connect', 2)], [('skip_connect', 2), ('max_pool_3x3', 1)]], "
             "reduce_concat=range(2, 6))")
# DARTS_V2 in NNI v1 checkpoint form, written by hand (switch order = pair order).
V2_NNI = {
    "normal_n2_p0": ["sepconv3x3"], "normal_n2_p1": ["sepconv3x3"],
    "normal_n2_switch": ["normal_n2_p0", "normal_n2_p1"],
    "normal_n3_p0": ["sepconv3x3"], "normal_n3_p1": ["sepconv3x3"], "normal_n3_p2": [],
    "normal_n3_switch": ["normal_n3_p0", "normal_n3_p1"],
    "normal_n4_p0": ["skipconnect"], "normal_n4_p1": ["sepconv3x3"], "normal_n4_p2": [],
    "normal_n4_p3": [], "normal_n4_switch": ["normal_n4_p1", "normal_n4_p0"],
    "normal_n5_p0": ["skipconnect"], "normal_n5_p1": [], "normal_n5_p2": ["dilconv3x3"],
    "normal_n5_p3": [], "normal_n5_p4": [], "normal_n5_switch": ["normal_n5_p0", "normal_n5_p2"],
    "reduce_n2_p0": ["maxpool"], "reduce_n2_p1": ["maxpool"],
    "reduce_n2_switch": ["reduce_n2_p0", "reduce_n2_p1"],
    "reduce_n3_p0": [], "reduce_n3_p1": ["maxpool"], "reduce_n3_p2": ["skipconnect"],
    "reduce_n3_switch": ["reduce_n3_p2", "reduce_n3_p1"],
    "reduce_n4_p0": ["maxpool"], "reduce_n4_p1": [], "reduce_n4_p2": ["skipconnect"],
    "reduce_n4_p3": [], "reduce_n4_switch": ["reduce_n4_p0", "reduce_n4_p2"],
    "reduce_n5_p0": [], "reduce_n5_p1": ["maxpool"], "reduce_n5_p2": ["skipconnect"],
    "reduce_n5_p3": [], "reduce_n5_p4": [], "reduce_n5_switch": ["reduce_n5_p2", "reduce_n5_p1"],
}
COL = {name: k for k, name in enumerate(PRIMITIVES)}


def test_module_is_pure_data():
    """No TensorFlow/Keras import and no eval/exec in the genotype modules."""
    pkg = pathlib.Path(__file__).resolve().parents[1] / "darts_tf"
    for name in ("genotype.py", "genotypes.py"):
        tree = ast.parse((pkg / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(m.split(".")[0] in ("tensorflow", "keras") for m in mods), name
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec"), name


def test_primitives_and_published():
    assert PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                          "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert genotypes.DARTS is genotypes.DARTS_V2
    assert genotypes.Genotype is Genotype and genotypes.PRIMITIVES is PRIMITIVES
    assert genotypes.DARTS_V2.num_nodes == 4
    assert genotypes.DARTS_V2.normal[7] == ("dil_conv_3x3", 2)
    assert genotypes.DARTS_V1.reduce[7] == ("avg_pool_3x3", 0)


def test_repr_is_reference_text():
    assert repr(genotypes.DARTS_V1) == V1_TEXT
    assert str(genotypes.DARTS_V2) == V2_TEXT


def test_lists_are_coerced_to_tuples_for_equality_and_hash():
    g = Genotype([["skip_connect", 0], ["sep_conv_3x3", 1]], range(2, 3),
                 [("max_pool_3x3", 0), ("max_pool_3x3", 1)], [2])
    h = Genotype((("skip_connect", 0), ("sep_conv_3x3", 1)), (2,),
                 (("max_pool_3x3", 0), ("max_pool_3x3", 1)), (2,))
    assert g == h and hash(g) == hash(h) and g.normal_concat == (2,) and g.num_nodes == 1


def test_softmax():
    np.testing.assert_allclose(softmax([[0.0, np.log(3.0)]]), [[0.25, 0.75]])
    np.testing.assert_allclose(softmax([1000.0, 1000.0]), [0.5, 0.5])  # no overflow


def test_derive_hand_made_alphas():
    """Expected values computed by hand from softmax strengths (see comments)."""
    a = np.zeros((14, 8))
    # Node 0 (rows 0, 1). Row 0: none=5, sep3=2 -> sep3 weight e^2/(e^5+e^2+6) = 0.046;
    # row 1: skip=1 -> e/(e+7) = 0.280. `none` is never chosen, and edge 1 ranks first.
    a[0, COL["none"]], a[0, COL["sep_conv_3x3"]] = 5, 2
    a[1, COL["skip_connect"]] = 1
    # Node 1 (rows 2-4). Row 2: none=5, dil5=3 -> 20.1/174.5 = 0.115 (largest raw logit,
    # but weakest after softmax); row 3: zeros -> 0.125 (op tie -> max_pool_3x3);
    # row 4: avg=0.5 -> 1.649/8.649 = 0.191. Rank: 4, 3.
    a[2, COL["none"]], a[2, COL["dil_conv_5x5"]] = 5, 3
    a[4, COL["avg_pool_3x3"]] = 0.5
    # Node 2 (rows 5-8). Rows 6 and 7 identical (sep5 = dil3 = 1 -> 0.238 each): the
    # lower edge ranks first and sep_conv_5x5 (earlier primitive) wins the op tie.
    a[6, [COL["sep_conv_5x5"], COL["dil_conv_3x3"]]] = 1
    a[7, [COL["sep_conv_5x5"], COL["dil_conv_3x3"]]] = 1
    # Node 3 (rows 9-13). Row 13: skip=2 -> 0.514; rows 11, 12: dil3=1 -> 0.280 (tie:
    # edge 2 beats edge 3). Rank: 4, 2.
    a[13, COL["skip_connect"]] = 2
    a[11, COL["dil_conv_3x3"]] = a[12, COL["dil_conv_3x3"]] = 1
    g = derive_genotype(a, np.zeros((14, 8)))
    assert g.normal == (("skip_connect", 1), ("sep_conv_3x3", 0),
                        ("avg_pool_3x3", 2), ("max_pool_3x3", 1),
                        ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
                        ("skip_connect", 4), ("dil_conv_3x3", 2))
    # All-equal alphas: every tie goes to the lower edge and the first non-none op.
    assert g.reduce == (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    # Same result from float32 nested lists, and from pt.darts column order (none last).
    assert derive_genotype(a.astype(np.float32).tolist(), np.zeros((14, 8))) == g
    order = PRIMITIVES[1:] + ("none",)
    perm = [COL[p] for p in order]
    assert derive_genotype(a[:, perm], np.zeros((14, 8)), primitives=order) == g


def test_derive_small_cell_and_concat():
    a = np.zeros((5, 8))  # 2 nodes -> 2 + 3 edges
    a[4, COL["sep_conv_5x5"]] = 1
    g = derive_genotype(a, a, num_nodes=2, concat=[3])
    assert g.normal == (("max_pool_3x3", 0), ("max_pool_3x3", 1),
                        ("sep_conv_5x5", 2), ("max_pool_3x3", 0))
    assert g.normal_concat == (3,) and g.num_nodes == 2


def _encode(pairs):
    """Alphas whose derivation is `pairs`: first pair of a node 4, second 3, rest 0."""
    alpha, start = np.zeros((14, 8)), 0
    for i in range(4):
        (op_a, a), (op_b, b) = pairs[2 * i:2 * i + 2]
        alpha[start + a, COL[op_a]] = 4.0
        alpha[start + b, COL[op_b]] = 3.0
        start += i + 2
    return alpha


@pytest.mark.parametrize("name", ["DARTS_V1", "DARTS_V2"])
def test_derive_recovers_published(name):
    g = getattr(genotypes, name)
    assert derive_genotype(_encode(g.normal), _encode(g.reduce)) == g


def test_json_round_trip(tmp_path):
    g = genotypes.DARTS_V2
    d = json.loads(g.to_json())
    assert d == {"format": "darts-tf/genotype", "version": 1,
                 "normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0],
                            ["sep_conv_3x3", 1], ["sep_conv_3x3", 1], ["skip_connect", 0],
                            ["skip_connect", 0], ["dil_conv_3x3", 2]],
                 "normal_concat": [2, 3, 4, 5],
                 "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2],
                            ["max_pool_3x3", 1], ["max_pool_3x3", 0], ["skip_connect", 2],
                            ["skip_connect", 2], ["max_pool_3x3", 1]],
                 "reduce_concat": [2, 3, 4, 5]}
    assert d == g.to_dict()
    assert Genotype.from_json(g.to_json()) == g == Genotype.from_dict(d)
    path = tmp_path / "genotype.json"
    path.write_text(g.to_json())
    assert load_genotype(path) == load_genotype(str(path)) == load_genotype(g.to_json()) == g
    assert load_genotype(d) == g


def test_nni_import_and_round_trip(tmp_path):
    assert genotype_to_nni(genotypes.DARTS_V2) == V2_NNI
    assert list(genotype_to_nni(genotypes.DARTS_V2)) == list(V2_NNI)  # NNI's key order
    assert len(V2_NNI) == 36
    assert genotype_from_nni(V2_NNI) == genotypes.DARTS_V2
    shuffled = list(V2_NNI.items())
    random.Random(0).shuffle(shuffled)
    path = tmp_path / "epoch_49.json"
    path.write_text(json.dumps(dict(shuffled)))
    assert load_genotype(path) == load_genotype(path.read_text()) == genotypes.DARTS_V2
    bare = {k: (v[0] if v and not k.endswith("switch") else v) for k, v in V2_NNI.items()}
    assert load_genotype(bare) == genotypes.DARTS_V2  # values as bare strings
    v1 = genotypes.DARTS_V1
    assert genotype_from_nni(genotype_to_nni(v1)) == v1


def test_reference_text_import(tmp_path):
    assert load_genotype(V1_TEXT) == genotypes.DARTS_V1
    assert load_genotype(V2_TEXT) == genotypes.DARTS_V2
    assert load_genotype(V2_NESTED) == genotypes.DARTS_V2
    assert load_genotype("DARTS_V2 = " + V2_TEXT) == genotypes.DARTS_V2
    assert load_genotype(V2_TEXT.replace("[2, 3, 4, 5]", "range(2, 6)")) == genotypes.DARTS_V2
    path = tmp_path / "genotype.txt"
    path.write_text("genotype = " + V1_TEXT + "\n")
    assert load_genotype(path) == genotypes.DARTS_V1
    assert load_genotype(repr(genotypes.DARTS_V1)) == genotypes.DARTS_V1


def test_names():
    assert load_genotype("DARTS_V1") is genotypes.DARTS_V1
    assert load_genotype("DARTS_V2") is genotypes.DARTS_V2
    assert load_genotype("DARTS") is genotypes.DARTS_V2
    assert load_genotype(genotypes.DARTS_V1) is genotypes.DARTS_V1


# --- Errors: each names the source, the field and the received value. ---------------------

def _bad(mutate):
    d = genotypes.DARTS_V2.to_dict()
    mutate(d)
    return d


@pytest.mark.parametrize("mutate, field, received, problem", [
    (lambda d: d["normal"][1].__setitem__(0, "sep_conv_7x7"), "normal[1]", "'sep_conv_7x7'",
     "dil_conv_5x5"),  # unknown op: lists valid ops
    (lambda d: d["normal"].pop(), "normal", "7 pairs", "2 pairs per node"),
    (lambda d: d.__setitem__("reduce", d["reduce"][:6]), "reduce", "6 pairs", "as many"),
    (lambda d: d.__setitem__("normal_concat", [2, 3, 4, 6]), "normal_concat[3]", "6", "0..5"),
    (lambda d: d["normal"][2].__setitem__(1, 3), "normal[2]", "3", "node 1 may only use"),
    (lambda d: d["reduce"][0].__setitem__(1, -1), "reduce[0]", "-1", "node 0 may only use"),
    (lambda d: d.pop("reduce_concat"), "reduce_concat", "keys [", "missing key"),
    (lambda d: d["normal"][0].__setitem__(0, 3), "normal[0]", "3", "op must be a string"),
    (lambda d: d["normal"][0].__setitem__(1, "0"), "normal[0]", "'0'", "must be an int"),
    (lambda d: d["normal"][0].__setitem__(1, True), "normal[0]", "True", "must be an int"),
    (lambda d: d["normal"].__setitem__(0, ["sep_conv_3x3"]), "normal[0]", "['sep_conv_3x3']",
     "pair"),
    (lambda d: d.__setitem__("version", 2), "version", "2", "unsupported format version"),
    (lambda d: d.__setitem__("format", "nni"), "format", "'nni'", "darts-tf/genotype"),
])
def test_dict_errors(mutate, field, received, problem):
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(_bad(mutate), source="run/genotype.json")
    msg = str(info.value)
    assert msg.startswith("run/genotype.json: " + field + ":"), msg
    assert f"Received: {received}" in msg and problem in msg, msg


def test_error_from_file_names_path(tmp_path):
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(_bad(lambda d: d["reduce"][3].__setitem__(0, "conv_7x1_1x7"))))
    with pytest.raises(GenotypeError, match=r"genotype\.json: reduce\[3\]: unknown op.*"
                       r"Received: 'conv_7x1_1x7'"):
        load_genotype(path)


def test_bad_json_gives_line_and_column(tmp_path):
    path = tmp_path / "genotype.json"
    path.write_text('{\n  "normal": ,\n}')
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    msg = str(info.value)
    assert str(path) in msg and "line 2, column 13" in msg and "\"normal\": ," in msg, msg
    with pytest.raises(GenotypeError, match=r"^<string>: JSON: invalid JSON at line 1"):
        Genotype.from_json('{"normal": [')


def test_direct_construction_is_validated():
    with pytest.raises(GenotypeError, match=r"Genotype\(\.\.\.\): normal\[0\].*'conv'"):
        Genotype([("conv", 0), ("skip_connect", 1)], [2], [("skip_connect", 0)] * 2, [2])


@pytest.mark.parametrize("mutate, field, received", [
    (lambda d: d.__setitem__("normal_n3_p1", ["conv7x7"]), "normal_n3_p1", "['conv7x7']"),
    (lambda d: d.pop("reduce_n4_switch"), "reduce_n4_switch", "keys ["),
    (lambda d: d.__setitem__("normal_n2_switch", ["normal_n2_p0"]), "normal_n2_switch",
     "['normal_n2_p0']"),
    (lambda d: d.__setitem__("normal_n2_switch", ["normal_n2_p0", "normal_n3_p1"]),
     "normal_n2_switch", "'normal_n3_p1'"),
    (lambda d: d.__setitem__("normal_n3_p0", []), "normal_n3_p0", "[]"),
    (lambda d: d.__setitem__("normal_n2_p2", []), "normal_n2_p2", "[]"),  # p2 > node n2
    (lambda d: d.__setitem__("normal_n7_switch", []), "normal_n*", "[2, 3, 4, 5, 7]"),
])
def test_nni_errors(tmp_path, mutate, field, received):
    d = dict(V2_NNI)
    mutate(d)
    path = tmp_path / "epoch_49.json"
    path.write_text(json.dumps(d))
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {field}:") and f"Received: {received}" in msg, msg
    if field == "normal_n3_p1":
        assert "sepconv3x3" in msg  # lists the valid NNI names


@pytest.mark.parametrize("text, field, received", [
    ("Genotype(normal=[('sep_conv_3x3', 0)", "text", "Genotype(normal="),  # syntax
    (V2_TEXT.replace("reduce_concat", "reduce_cat"), "reduce_cat", "reduce_cat=[2, 3, 4, 5]"),
    (V2_TEXT.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=list(x)"), "normal_concat",
     "list(x)"),
    (V2_TEXT.replace(", reduce_concat=[2, 3, 4, 5]", ""), "reduce_concat",
     "arguments ['normal', 'normal_concat', 'reduce']"),
    (V2_TEXT.replace("'dil_conv_3x3', 2", "'dil_conv_3x3', 5"), "normal[7]", "5"),
    ("Genotype(1, 2, 3, 4, 5)", "text", "Genotype(1, 2, 3, 4, 5)"),
])
def test_text_errors(text, field, received):
    with pytest.raises(GenotypeError) as info:
        load_genotype(text)
    msg = str(info.value)
    assert msg.startswith(f"<string>: {field}:") and f"Received: {received}" in msg, msg


def test_derive_errors():
    with pytest.raises(GenotypeError, match=r"derive_genotype: alpha_normal: expected shape "
                       r"\(14, 8\).*Received: shape \(14, 7\)"):
        derive_genotype(np.zeros((14, 7)), np.zeros((14, 8)))
    with pytest.raises(GenotypeError, match=r"alpha_reduce: expected shape \(5, 8\).*num_nodes=2"):
        derive_genotype(np.zeros((5, 8)), np.zeros((14, 8)), num_nodes=2)
    bad = np.zeros((14, 8))
    bad[3, 3] = np.nan
    with pytest.raises(GenotypeError, match=r"alpha_normal: alphas must be finite.*nan"):
        derive_genotype(bad, np.zeros((14, 8)))
    with pytest.raises(GenotypeError, match=r"num_nodes: expected an int >= 1. Received: 0"):
        derive_genotype(np.zeros((0, 8)), np.zeros((0, 8)), num_nodes=0)


def test_load_errors(tmp_path):
    with pytest.raises(GenotypeError, match=r"^<string>: source: .*DARTS_V2.*Received: "
                       r"'DARTS_V3'"):
        load_genotype("DARTS_V3")
    missing = tmp_path / "nope.json"
    with pytest.raises(GenotypeError, match=r"nope\.json: file: cannot read "
                       r"\(FileNotFoundError\)"):
        load_genotype(missing)
    with pytest.raises(GenotypeError, match=r"load_genotype: source: .*Received: 42"):
        load_genotype(42)


def test_to_nni_errors():
    g = Genotype([("none", 0), ("skip_connect", 1)], [2], [("skip_connect", 0)] * 2, [2])
    with pytest.raises(GenotypeError, match=r"genotype_to_nni: normal\[0\]:.*\('none', 0\)"):
        genotype_to_nni(g)
    with pytest.raises(GenotypeError, match=r"genotype_to_nni: reduce\[1\]:.*'skip_connect', 0"):
        genotype_to_nni(Genotype([("skip_connect", 0), ("skip_connect", 1)], [2], g.reduce, [2]))
    with pytest.raises(GenotypeError, match=r"genotype_to_nni: normal_concat:.*\(1, 2\)"):
        genotype_to_nni(Genotype(g.reduce, [1, 2], g.reduce, [2]))
