"""The package itself: `import darts_tf` is cheap and the genotype API needs no TensorFlow."""
import json
import subprocess
import sys
import textwrap

import pytest

import darts_tf

# Runs in a fresh process in which TensorFlow and Keras cannot be imported.
_NO_TENSORFLOW_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["tensorflow"] = None  # importing tensorflow or keras now fails
    sys.modules["keras"] = None
    import numpy as np
    import darts_tf

    report = {"listed": "Supernet" in dir(darts_tf) and "Supernet" in darts_tf.__all__}
    v2 = darts_tf.load_genotype("DARTS_V2")
    report["published"] = v2 == darts_tf.genotypes.DARTS_V2 and isinstance(v2, darts_tf.Genotype)
    # 2 nodes: edges 0-1 into node 2 (from states 0, 1), edges 2-4 into node 3 (from 0, 1, 2).
    alpha = np.zeros((5, len(darts_tf.PRIMITIVES)))
    column = {name: k for k, name in enumerate(darts_tf.PRIMITIVES)}
    alpha[0, column["sep_conv_3x3"]] = 2.0
    alpha[1, column["max_pool_3x3"]] = 1.0
    alpha[2, column["skip_connect"]] = 3.0   # edge 3 (all zeros) is the weakest into node 3
    alpha[4, column["dil_conv_5x5"]] = 2.0
    derived = darts_tf.derive_genotype(alpha, alpha, num_nodes=2)
    report["derived"] = derived.to_dict()
    report["round_trip"] = darts_tf.Genotype.from_json(derived.to_json()) == derived
    try:
        darts_tf.load_genotype('{"format": "darts-tf/genotype"}')
    except darts_tf.GenotypeError as err:
        report["error"] = str(err)
    report["tensorflow_loaded"] = sys.modules.get("tensorflow") is not None
    report["keras_loaded"] = sys.modules.get("keras") is not None
    try:
        darts_tf.Supernet
    except ImportError:
        report["supernet"] = "ImportError"
    else:
        report["supernet"] = "imported"
    try:
        from darts_tf import NetworkCIFAR  # noqa: F401
    except ImportError:
        report["network"] = "ImportError"
    print(json.dumps(report))
""")


def test_genotype_api_works_without_tensorflow_and_models_need_it():
    out = subprocess.run([sys.executable, "-c", _NO_TENSORFLOW_SCRIPT], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["listed"] and report["published"] and report["round_trip"]
    assert report["derived"] == {
        "format": "darts-tf/genotype", "version": 1,
        "normal": [["sep_conv_3x3", 0], ["max_pool_3x3", 1],
                   ["skip_connect", 0], ["dil_conv_5x5", 2]],
        "normal_concat": [2, 3],
        "reduce": [["sep_conv_3x3", 0], ["max_pool_3x3", 1],
                   ["skip_connect", 0], ["dil_conv_5x5", 2]],
        "reduce_concat": [2, 3]}
    assert "version: missing key" in report["error"]
    assert not report["tensorflow_loaded"] and not report["keras_loaded"]
    # The models need TensorFlow: without it their names fail to import, not silently.
    assert report["supernet"] == "ImportError" and report["network"] == "ImportError"


def test_names_are_imported_on_first_access():
    for name in darts_tf.__all__:
        assert getattr(darts_tf, name) is not None, name
    assert darts_tf.genotypes.DARTS_V2 == darts_tf.load_genotype("DARTS_V2")
    assert darts_tf.Supernet.__module__ == "darts_tf.supernet"
    assert set(darts_tf.__all__) <= set(dir(darts_tf))
    assert darts_tf.__version__
    with pytest.raises(AttributeError, match="no_such_name"):
        darts_tf.no_such_name  # pylint: disable=pointless-statement
