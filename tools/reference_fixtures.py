"""Produce ground-truth numbers and small weight/output fixtures from the PyTorch reference DARTS.

The reference (quark0/darts, `cnn/`) is NOT part of this repository. Put a copy somewhere outside
the repo (patched only as needed to run on a current, CPU-only torch), install torch outside the
project environment, and run:

    /tmp/tvenv/bin/python tools/reference_fixtures.py --reference_dir=/tmp/quark0/cnn --out=tests/data

PC-DARTS' search network (yuhuixu1993/PC-DARTS, unmodified: a checkout of its
`model_search.py`, `operations.py`, `genotypes.py`; `.cuda()` is made a no-op at run time)
is counted, and its tiny fixture pc_darts_tiny.npz written, with --pc_darts_dir; given
alone, only these (its entry of reference_counts.json and pc_darts_tiny.npz) are written:

    /tmp/torchenv/bin/python tools/reference_fixtures.py --pc_darts_dir=/tmp/pc_darts --out=tests/data

Writes into --out:
  reference_counts.json   exact parameter counts and multiply-adds of the reference networks
  search_tiny.npz         tiny search Network: state_dict, alphas, input, train/eval logits
  cifar_tiny.npz          tiny NetworkCIFAR(DARTS_V2, auxiliary): state_dict, input, logits
  cifar_tiny_v1.npz       same with DARTS_V1
  imagenet_tiny.npz       tiny NetworkImageNet(DARTS_V2, auxiliary) at 224x224
  ops_tiny.npz            every entry of OPS at stride 1/2, plus ReLUConvBN and FactorizedReduce
  fixtures_index.json     per fixture: config, ordered state_dict keys with shapes, output names

Conventions (all fixtures):
  * arrays are float32 (except BN `num_batches_tracked`, int64 scalars, kept because they are
    state_dict entries); weights keep the torch layout (conv OIHW, linear [out, in]); inputs
    and outputs are NCHW / [N, classes].
  * conv/linear weights and biases are torch's default init rounded to multiples of 2**-8, the
    one tensor with >100k elements (the 128->768 2x2 auxiliary conv, 393,216 weights) to 2**-6;
    inputs are N(0,1) rounded to multiples of 2**-4. All exact in float32; the rounding only
    lets np.savez_compressed keep each file well under 1 MB;
  * affine BN: weight ~ U(0.5, 1.5), bias ~ N(0, 0.3);
  * BN running stats: "calibrated random" - one train-mode forward (momentum 1) on a separate
    random batch sets them to batch statistics, then running_mean += 0.3*sqrt(var)*N(0,1) and
    running_var *= U(0.5, 2.0). Eval mode therefore uses stats that differ from the batch stats
    but keep activations O(1) through the network (pure random stats make the signal vanish);
  * the state_dict is snapshotted before any fixture forward pass (train-mode passes update
    running stats in torch; the saved values are the ones used by the eval-mode outputs).
"""

import argparse
import contextlib
import io
import json
import os
import re
import sys

import numpy as np
import torch
import torch.nn as nn

QUANT = 2.0 ** -8          # grid for conv/linear weights and biases
QUANT_BIG = 2.0 ** -6      # grid for tensors with more than BIG elements (the 768x128x2x2 aux conv)
BIG = 100000
QUANT_INPUT = 2.0 ** -4    # grid for fixture inputs (N(0,1) rounded to multiples of 1/16)


def _round(t, step):
    return torch.round(t / step) * step


def rand_input(*shape):
    """N(0,1) input rounded to multiples of 2**-4: exact in float32 and compressible."""
    return _round(torch.randn(*shape), QUANT_INPUT)


def _load_reference(reference_dir):
    sys.path.insert(0, os.path.abspath(reference_dir))
    import genotypes  # noqa: E402
    import model  # noqa: E402
    import model_search  # noqa: E402
    import operations  # noqa: E402
    return genotypes, model, model_search, operations


def _quiet(fn, *args, **kwargs):
    """Reference model.Cell prints its channel counts; keep stdout clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# counting


def count_params(net):
    total = sum(p.numel() for p in net.parameters())
    no_aux = sum(p.numel() for n, p in net.named_parameters() if "auxiliary" not in n)
    return int(total), int(no_aux)


def count_bn_stats(net, exclude_aux=False):
    """Elements of BN running_mean + running_var (Keras counts these as non-trainable weights)."""
    n = 0
    for name, m in net.named_modules():
        if exclude_aux and "auxiliary" in name:
            continue
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            n += m.running_mean.numel() + m.running_var.numel()
    return int(n)


def count_macs(net, input_shape):
    """Multiply-adds for one sample, eval mode, by forward hooks.

    Conv2d: out_elements * (in_channels / groups) * kh * kw.  Linear: in_features * out_features.
    Not counted: pooling, BN, ReLU, additions, concatenation, biases.
    """
    macs = {"conv": 0, "linear": 0}
    hooks = []

    def conv_hook(m, inp, out):
        kh, kw = m.kernel_size
        macs["conv"] += (out.numel() // out.shape[0]) * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m, inp, out):
        macs["linear"] += m.in_features * m.out_features

    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    net.eval()
    with torch.no_grad():
        net(torch.zeros(*input_shape))
    for h in hooks:
        h.remove()
    return int(macs["conv"] + macs["linear"]), int(macs["conv"]), int(macs["linear"])


def make_counts(genotypes, model, model_search):
    out = {
        "torch_version": torch.__version__,
        "param_rule": "sum of p.numel() over model.parameters(); 'excluding_auxiliary' drops names "
                      "containing 'auxiliary' (quark0 utils.count_parameters_in_MB). BN running "
                      "stats are buffers, not parameters: listed separately as bn_running_stats "
                      "(running_mean+running_var elements; num_batches_tracked not counted).",
    }

    torch.manual_seed(0)
    net = model_search.Network(16, 10, 8, nn.CrossEntropyLoss())
    total, _ = count_params(net)
    alphas = sum(a.numel() for a in net.arch_parameters())
    stem_bn = net.stem[1]
    out["search_network"] = {
        "config": "model_search.Network(C=16, num_classes=10, layers=8, criterion), steps=4, "
                  "multiplier=4, stem_multiplier=3; reductions at cells 2 and 5",
        "params": total,
        "alphas": int(alphas),
        "alphas_shapes": {"alphas_normal": list(net.alphas_normal.shape),
                          "alphas_reduce": list(net.alphas_reduce.shape)},
        "alphas_registered_as_parameters": False,
        "params_plus_alphas": int(total + alphas),
        "bn_running_stats": count_bn_stats(net),
        "stem_bn_affine": bool(stem_bn.affine),
        "stem_bn_affine_params": int(sum(p.numel() for p in stem_bn.parameters())),
        "classifier_has_bias": net.classifier.bias is not None,
        "classifier_params": int(sum(p.numel() for p in net.classifier.parameters())),
    }

    out["cifar"] = {}
    for gname in ("DARTS_V2", "DARTS_V1"):
        g = getattr(genotypes, gname)
        entry = {}
        for aux in (True, False):
            net = _quiet(model.NetworkCIFAR, 36, 10, 20, aux, g)
            total, no_aux = count_params(net)
            entry["auxiliary" if aux else "no_auxiliary"] = {
                "total": total, "excluding_auxiliary": no_aux,
                "bn_running_stats": count_bn_stats(net),
                "bn_running_stats_excluding_auxiliary": count_bn_stats(net, exclude_aux=True)}
        entry["config"] = "model.NetworkCIFAR(36, 10, 20, auxiliary, genotype=%s)" % gname
        out["cifar"][gname] = entry

    out["imagenet"] = {}
    for gname in ("DARTS_V2", "DARTS_V1"):
        g = getattr(genotypes, gname)
        entry = {}
        for aux in (True, False):
            net = _quiet(model.NetworkImageNet, 48, 1000, 14, aux, g)
            total, no_aux = count_params(net)
            entry["auxiliary" if aux else "no_auxiliary"] = {
                "total": total, "excluding_auxiliary": no_aux,
                "bn_running_stats": count_bn_stats(net),
                "bn_running_stats_excluding_auxiliary": count_bn_stats(net, exclude_aux=True)}
        entry["config"] = "model.NetworkImageNet(48, 1000, 14, auxiliary, genotype=%s)" % gname
        out["imagenet"][gname] = entry

    macs = {
        "rule": "forward hooks, batch 1, eval mode (auxiliary head not run): Conv2d adds "
                "out_elements_per_sample * (in_channels/groups) * kh * kw; Linear adds "
                "in_features * out_features",
        "not_counted": "pooling (incl. global pooling), BatchNorm, ReLU, additions, concatenation, "
                       "biases, the Zero op",
        "paper_imagenet_value": "574M (DARTS paper Table 3). This hook count gives 529.9M for "
                                "DARTS_V2; even adding one op per BN/ReLU output element and "
                                "k*k per pooling output only reaches ~541M, so the paper's figure "
                                "was counted some other way. Compare against the numbers here.",
    }
    for key, ctor, shape in (
            ("imagenet_DARTS_V2_224", lambda: model.NetworkImageNet(48, 1000, 14, False, genotypes.DARTS_V2), (1, 3, 224, 224)),
            ("imagenet_DARTS_V1_224", lambda: model.NetworkImageNet(48, 1000, 14, False, genotypes.DARTS_V1), (1, 3, 224, 224)),
            ("cifar_DARTS_V2_32", lambda: model.NetworkCIFAR(36, 10, 20, False, genotypes.DARTS_V2), (1, 3, 32, 32)),
            ("cifar_DARTS_V1_32", lambda: model.NetworkCIFAR(36, 10, 20, False, genotypes.DARTS_V1), (1, 3, 32, 32))):
        net = _quiet(ctor)
        net.drop_path_prob = 0.0
        total, conv, lin = count_macs(net, shape)
        macs[key] = {"macs": total, "conv": conv, "linear": lin}
    out["macs"] = macs
    return out


# ----------------------------------------------------------------------------------------------
# randomisation and fixture helpers


def randomize(net, calib_input, forward):
    """Quantised default-init weights, random affine BN params, calibrated-random running stats."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                step = QUANT_BIG if m.weight.numel() > BIG else QUANT
                m.weight.copy_(_round(m.weight, step))
                if m.bias is not None:
                    m.bias.copy_(_round(m.bias, QUANT))
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.momentum = 1.0
        net.train()
        forward(calib_input)
        for m, mom in zip(bns, saved):
            m.momentum = mom
            std = m.running_var.clamp_min(1e-6).sqrt()
            m.running_mean.add_(0.3 * std * torch.randn_like(std))
            m.running_var.mul_(torch.empty_like(std).uniform_(0.5, 2.0))
            m.num_batches_tracked.zero_()


def snapshot(net, prefix=""):
    arrays, keys, meta = {}, [], []
    for k, v in net.state_dict().items():
        a = v.detach().cpu().numpy().copy()
        if a.dtype == np.float64:
            a = a.astype(np.float32)
        arrays[prefix + k] = a
        keys.append(k)
        meta.append([k, list(a.shape), str(a.dtype)])
    return arrays, keys, meta


def np32(t):
    return t.detach().cpu().numpy().astype(np.float32)


def save_npz(path, arrays):
    np.savez_compressed(path, **arrays)
    return os.path.getsize(path)


def describe(arrays):
    return float(np.abs(arrays).mean()), float(arrays.std())


# ----------------------------------------------------------------------------------------------
# fixtures


def fixture_search(model_search, out_dir, index):
    torch.manual_seed(101)
    net = model_search.Network(4, 10, 3, nn.CrossEntropyLoss())
    assert [c.reduction for c in net.cells] == [False, True, True]
    with torch.no_grad():
        net.alphas_normal.copy_(torch.randn_like(net.alphas_normal))
        net.alphas_reduce.copy_(torch.randn_like(net.alphas_reduce))
    randomize(net, rand_input(4, 3, 16, 16), net)
    arrays, keys, meta = snapshot(net)
    x = rand_input(2, 3, 16, 16)
    net.eval()
    with torch.no_grad():
        logits_eval = net(x)
    net.train()
    with torch.no_grad():
        logits_train = net(x)
    arrays.update({
        "input": np32(x), "logits_eval": np32(logits_eval), "logits_train": np32(logits_train),
        "alphas_normal": np32(net.alphas_normal), "alphas_reduce": np32(net.alphas_reduce),
        "state_dict_keys": np.array(keys, dtype=np.str_),
    })
    size = save_npz(os.path.join(out_dir, "search_tiny.npz"), arrays)
    index["search_tiny.npz"] = {
        "config": "model_search.Network(C=4, num_classes=10, layers=3, nn.CrossEntropyLoss()); "
                  "cells: normal, reduce, reduce; alphas ~ N(0,1)",
        "input": "input: [2, 3, 16, 16] NCHW, N(0,1) rounded to multiples of 1/16",
        "outputs": {"logits_eval": "net.eval() logits (running stats as saved)",
                    "logits_train": "net.train() logits (BN batch statistics, biased variance)"},
        "extra_arrays": ["alphas_normal [14, 8]", "alphas_reduce [14, 8]", "state_dict_keys"],
        "state_dict": meta, "bytes": size,
        "output_stats_mean_abs_std": {"logits_eval": describe(np32(logits_eval)),
                                      "logits_train": describe(np32(logits_train))},
    }


def _eval_net_fixture(net, x, calib, fname, config, out_dir, index):
    net.drop_path_prob = 0.0
    randomize(net, calib, net)
    arrays, keys, meta = snapshot(net)
    net.eval()
    with torch.no_grad():
        logits_eval, aux_eval = net(x)
    assert aux_eval is None
    aux_shape = {}
    hook = net.auxiliary_head.register_forward_hook(
        lambda m, i, o: aux_shape.setdefault("in", list(i[0].shape)) and None)
    net.train()
    # Quirk: the auxiliary head starts with ReLU(inplace=True) applied to the cell output s1. With
    # layers=3 the aux cell is the LAST cell, so the in-place ReLU also changes what global pooling
    # sees in train mode. (In the real nets, 20 and 14 cells, later cells follow and start with
    # ReLU, so there it has no effect.) Save both: the intended function and the literal one.
    with torch.no_grad():
        logits_train_inplace, aux_train_inplace = net(x)
    net.auxiliary_head.features[0].inplace = False
    with torch.no_grad():
        logits_train, aux_train = net(x)
    net.auxiliary_head.features[0].inplace = True
    hook.remove()
    arrays.update({
        "input": np32(x), "logits_eval": np32(logits_eval),
        "logits_train": np32(logits_train), "aux_logits_train": np32(aux_train),
        "logits_train_reference_inplace_relu": np32(logits_train_inplace),
        "state_dict_keys": np.array(keys, dtype=np.str_),
    })
    assert np.array_equal(np32(aux_train), np32(aux_train_inplace))
    size = save_npz(os.path.join(out_dir, fname), arrays)
    index[fname] = {
        "config": config + "; drop_path_prob = 0",
        "input": "input: %s NCHW, N(0,1) rounded to multiples of 1/16" % list(x.shape),
        "aux_head_input_shape": aux_shape["in"],
        "outputs": {
            "logits_eval": "net.eval() logits (aux head not run)",
            "logits_train": "net.train() logits, BN batch stats, with the aux head's first ReLU "
                            "made non-inplace (the intended function; compare against this)",
            "aux_logits_train": "net.train() auxiliary logits (identical either way)",
            "logits_train_reference_inplace_relu":
                "literal reference train-mode logits: aux ReLU(inplace=True) has also rectified "
                "the last cell output before global pooling (only because the aux cell is the "
                "last cell at layers=3)",
        },
        "inplace_relu_changes_train_logits": bool(
            not np.allclose(np32(logits_train), np32(logits_train_inplace))),
        "state_dict": meta, "bytes": size,
        "output_stats_mean_abs_std": {k: describe(arrays[k]) for k in
                                      ("logits_eval", "logits_train", "aux_logits_train")},
    }


def fixture_cifar(genotypes, model, out_dir, index, gname, fname, seed):
    torch.manual_seed(seed)
    net = _quiet(model.NetworkCIFAR, 4, 10, 3, True, getattr(genotypes, gname))
    x = rand_input(2, 3, 32, 32)
    _eval_net_fixture(net, x, rand_input(4, 3, 32, 32), fname,
                      "model.NetworkCIFAR(C=4, num_classes=10, layers=3, auxiliary=True, "
                      "genotype=%s); cells: normal, reduce, reduce; aux after cell 2" % gname,
                      out_dir, index)


def fixture_imagenet(genotypes, model, out_dir, index):
    torch.manual_seed(303)
    net = _quiet(model.NetworkImageNet, 8, 10, 3, True, genotypes.DARTS_V2)
    x = rand_input(1, 3, 224, 224)
    _eval_net_fixture(net, x, rand_input(2, 3, 224, 224), "imagenet_tiny.npz",
                      "model.NetworkImageNet(C=8, num_classes=10, layers=3, auxiliary=True, "
                      "genotype=DARTS_V2); cells: normal (reduction_prev=True), reduce, reduce; "
                      "aux after cell 2", out_dir, index)


def fixture_ops(operations, out_dir, index):
    torch.manual_seed(404)
    C = 4
    x8 = rand_input(2, C, 8, 8)
    x7 = rand_input(2, C, 7, 7)
    calib8 = rand_input(4, C, 8, 8)
    arrays = {"input_8x8": np32(x8), "input_7x7": np32(x7)}
    entries = {}
    cases = []
    for name in operations.OPS:
        for stride in (1, 2):
            cases.append((name, stride, lambda n=name, s=stride: operations.OPS[n](C, s, True)))
    cases.append(("relu_conv_bn_4_8_k1_s1_p0", 1, lambda: operations.ReLUConvBN(4, 8, 1, 1, 0)))
    cases.append(("factorized_reduce_4_8", 2, lambda: operations.FactorizedReduce(4, 8)))

    for name, stride, ctor in cases:
        prefix = "op/%s/s%d/" % (name, stride)
        op = ctor()
        randomize(op, calib8, op)
        sd, keys, meta = snapshot(op, prefix)
        arrays.update(sd)
        arrays[prefix + "state_dict_keys"] = np.array(keys, dtype=np.str_)
        entry = {"module": type(op).__name__, "stride": stride, "state_dict": meta, "outputs": {}}
        op.eval()
        with torch.no_grad():
            y = op(x8)
        arrays[prefix + "out"] = np32(y)
        entry["outputs"]["out"] = "eval, input_8x8 -> %s" % list(y.shape)
        try:
            with torch.no_grad():
                y7 = op(x7)
            arrays[prefix + "out_odd"] = np32(y7)
            entry["outputs"]["out_odd"] = "eval, input_7x7 -> %s" % list(y7.shape)
        except Exception as e:  # FactorizedReduce cannot take odd sizes
            entry["odd_input_error"] = "%s: %s" % (type(e).__name__, str(e).splitlines()[0])
        op.train()
        with torch.no_grad():
            yt = op(x8)
        arrays[prefix + "out_train"] = np32(yt)
        entry["outputs"]["out_train"] = "train (BN batch stats), input_8x8 -> %s" % list(yt.shape)
        entries["%s/s%d" % (name, stride)] = entry
    size = save_npz(os.path.join(out_dir, "ops_tiny.npz"), arrays)
    index["ops_tiny.npz"] = {
        "config": "operations.OPS[name](C=4, stride, affine=True) for every OPS entry and stride "
                  "1, 2; plus ReLUConvBN(4, 8, 1, 1, 0) and FactorizedReduce(4, 8)",
        "input": "input_8x8: [2, 4, 8, 8], input_7x7: [2, 4, 7, 7], NCHW, N(0,1) rounded to multiples of 1/16; shared by all ops",
        "key_pattern": "op/<name>/s<stride>/<state_dict key> | out | out_odd | out_train | "
                       "state_dict_keys",
        "ops": entries, "bytes": size,
    }


def _compact_json(obj, indent=0):
    """Indented JSON; lists of scalars / of scalar lists (shapes, [key, shape, dtype]) on one line."""
    pad = " " * indent

    def flat(v):
        return not isinstance(v, (dict, list)) or (
            isinstance(v, list) and all(not isinstance(e, (dict, list)) for e in v))

    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = ['%s "%s": %s' % (pad, k, _compact_json(v, indent + 1)) for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and all(flat(v) for v in obj) and not (
            obj and all(isinstance(v, list) and len(v) == 3 and isinstance(v[0], str) for v in obj)):
        return json.dumps(obj)
    if isinstance(obj, list):
        items = [pad + " " + _compact_json(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj)


def _load_sd(net, d, prefix=""):
    keys = [str(k) for k in d[prefix + "state_dict_keys"]]
    assert keys == list(net.state_dict().keys()), "state_dict key order differs"
    net.load_state_dict({k: torch.from_numpy(np.array(d[prefix + k])) for k in keys})


def verify(genotypes, model, model_search, operations, out_dir):
    """Reload every fixture into a freshly built reference model and recompute its outputs."""
    d = np.load(os.path.join(out_dir, "search_tiny.npz"))
    net = model_search.Network(4, 10, 3, nn.CrossEntropyLoss())
    _load_sd(net, d)
    with torch.no_grad():
        net.alphas_normal.copy_(torch.from_numpy(d["alphas_normal"]))
        net.alphas_reduce.copy_(torch.from_numpy(d["alphas_reduce"]))
        x = torch.from_numpy(d["input"])
        net.eval()
        assert np.array_equal(np32(net(x)), d["logits_eval"])
        net.train()
        assert np.array_equal(np32(net(x)), d["logits_train"])
    for fname, ctor in (
            ("cifar_tiny.npz", lambda: model.NetworkCIFAR(4, 10, 3, True, genotypes.DARTS_V2)),
            ("cifar_tiny_v1.npz", lambda: model.NetworkCIFAR(4, 10, 3, True, genotypes.DARTS_V1)),
            ("imagenet_tiny.npz", lambda: model.NetworkImageNet(8, 10, 3, True, genotypes.DARTS_V2))):
        d = np.load(os.path.join(out_dir, fname))
        net = _quiet(ctor)
        net.drop_path_prob = 0.0
        _load_sd(net, d)
        x = torch.from_numpy(d["input"])
        with torch.no_grad():
            net.eval()
            assert np.array_equal(np32(net(x)[0]), d["logits_eval"]), fname
            net.train()
            net.auxiliary_head.features[0].inplace = False
            logits, aux = net(x)
            assert np.array_equal(np32(logits), d["logits_train"]), fname
            assert np.array_equal(np32(aux), d["aux_logits_train"]), fname
    d = np.load(os.path.join(out_dir, "ops_tiny.npz"))
    n_ops = 0
    for name in operations.OPS:
        for stride in (1, 2):
            prefix = "op/%s/s%d/" % (name, stride)
            op = operations.OPS[name](4, stride, True)
            _load_sd(op, d, prefix)
            op.eval()
            with torch.no_grad():
                assert np.array_equal(np32(op(torch.from_numpy(d["input_8x8"]))), d[prefix + "out"])
            n_ops += 1
    print("verify: all fixtures reproduce exactly from their saved state (%d OPS cases)" % n_ops)


def _load_pc_darts(pc_darts_dir):
    """PC-DARTS' model_search module, imported apart from quark0's same-named modules."""
    names = ("model_search", "operations", "genotypes")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, os.path.abspath(pc_darts_dir))
    try:
        import model_search  # noqa: E402
    finally:
        sys.path.pop(0)
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
    return model_search


def _pc_darts_network(pc_darts_dir, channels, layers, seed):
    """The authors' search Network(channels, 10 classes, layers), built on the CPU."""
    model_search = _load_pc_darts(pc_darts_dir)
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the authors' code is GPU-only
    try:
        torch.manual_seed(seed)
        return model_search.Network(channels, 10, layers, nn.CrossEntropyLoss())
    finally:
        torch.Tensor.cuda = cuda


def pc_darts_counts(pc_darts_dir):
    """Parameter counts of PC-DARTS' search network at C=16, 8 cells (train_search.py's)."""
    net = _pc_darts_network(pc_darts_dir, channels=16, layers=8, seed=0)
    total, _ = count_params(net)
    arch = net.arch_parameters()
    return {
        "config": "PC-DARTS model_search.Network(C=16, num_classes=10, layers=8, criterion), "
                  "steps=4, multiplier=4, stem_multiplier=3, MixedOp k=4 (hard-coded); "
                  "yuhuixu1993/PC-DARTS @ b74702f (model_search.py from 3c75598)",
        "params": total,
        "alphas": int(arch[0].numel() + arch[1].numel()),
        "betas": int(arch[2].numel() + arch[3].numel()),
        "arch_shapes": [list(a.shape) for a in arch],
        "bn_running_stats": count_bn_stats(net),
        "how": "the unmodified authors' modules imported from a checkout; torch.Tensor.cuda "
               "made a no-op while building (their _initialize_alphas calls .cuda())",
    }


def fixture_pc_darts(pc_darts_dir, out_dir):
    """pc_darts_tiny.npz: PC-DARTS' Network(C=8, 10, layers=3) (K=4: ops on 2, then 4
    channels), alphas and betas ~ N(0, 1), state_dict, input, train/eval logits."""
    net = _pc_darts_network(pc_darts_dir, channels=8, layers=3, seed=505)
    with torch.no_grad():
        for a in net.arch_parameters():
            a.copy_(torch.randn_like(a))
    randomize(net, rand_input(4, 3, 16, 16), net)
    arrays, keys, _ = snapshot(net)
    x = rand_input(2, 3, 16, 16)
    with torch.no_grad():
        net.eval()
        logits_eval = net(x)
        net.train()
        logits_train = net(x)
    names = ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce")
    arrays.update({name: np32(a) for name, a in zip(names, net.arch_parameters())})
    arrays.update({"input": np32(x), "logits_eval": np32(logits_eval),
                   "logits_train": np32(logits_train),
                   "state_dict_keys": np.array(keys, dtype=np.str_)})
    return save_npz(os.path.join(out_dir, "pc_darts_tiny.npz"), arrays)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference_dir", help="directory holding quark0 cnn/*.py")
    ap.add_argument("--pc_darts_dir", help="directory holding PC-DARTS' model_search.py, "
                    "operations.py, genotypes.py")
    ap.add_argument("--out", default="tests/data")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    counts_path = os.path.join(args.out, "reference_counts.json")
    if args.reference_dir is None:
        if args.pc_darts_dir is None:
            ap.error("give --reference_dir, --pc_darts_dir or both")
        with open(counts_path) as f:
            counts = json.load(f)
        counts["pc_darts_search_network"] = pc_darts_counts(args.pc_darts_dir)
        with open(counts_path, "w") as f:
            json.dump(counts, f, indent=2)
            f.write("\n")
        print(json.dumps(counts["pc_darts_search_network"], indent=2))
        print("pc_darts_tiny.npz", fixture_pc_darts(args.pc_darts_dir, args.out), "bytes")
        return

    genotypes, model, model_search, operations = _load_reference(args.reference_dir)

    counts = make_counts(genotypes, model, model_search)
    if args.pc_darts_dir:
        counts["pc_darts_search_network"] = pc_darts_counts(args.pc_darts_dir)
    with open(counts_path, "w") as f:
        json.dump(counts, f, indent=2)
        f.write("\n")

    index = {"torch_version": torch.__version__,
             "command": "/tmp/tvenv/bin/python tools/reference_fixtures.py "
                        "--reference_dir=/tmp/quark0/cnn --out=tests/data",
             "layout": "inputs/activations NCHW; conv weights OIHW (torch), linear [out, in]"}
    fixture_search(model_search, args.out, index)
    fixture_cifar(genotypes, model, args.out, index, "DARTS_V2", "cifar_tiny.npz", 202)
    fixture_cifar(genotypes, model, args.out, index, "DARTS_V1", "cifar_tiny_v1.npz", 212)
    fixture_imagenet(genotypes, model, args.out, index)
    fixture_ops(operations, args.out, index)
    if args.pc_darts_dir:
        fixture_pc_darts(args.pc_darts_dir, args.out)
    index["state_dict_format"] = "each 'state_dict' is the ordered list [key, shape, dtype]"
    with open(os.path.join(args.out, "fixtures_index.json"), "w") as f:
        f.write(_compact_json(index) + "\n")

    verify(genotypes, model, model_search, operations, args.out)

    print(json.dumps(counts, indent=2))
    for k, v in index.items():
        if isinstance(v, dict) and "bytes" in v:
            print(k, v["bytes"], "bytes", v.get("output_stats_mean_abs_std", ""))


if __name__ == "__main__":
    main()
