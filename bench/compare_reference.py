r"""Side by side with the PyTorch reference: step time, start-up and peak memory, alternated.

    python bench/compare_reference.py --reference_dir=/tmp/darts/cnn \
        --torch_python=/tmp/torchenv/bin/python --rounds=2 --output=/tmp/compare.jsonl

The reference (quark0/darts, its `cnn/` directory) is NOT part of this repository: give a
checkout of it (`git clone https://github.com/quark0/darts /tmp/darts`) and a Python that has
torch (outside this project's environment, e.g. `python -m venv /tmp/torchenv &&
/tmp/torchenv/bin/pip install torch numpy`). Its modules are imported unmodified at run
time; the only changes are made in memory, in the reference's process, so that its
GPU-only code runs on a CPU: `.cuda()` on tensors and modules returns them unchanged,
`torch.cuda.FloatTensor` (its drop path's mask) allocates on the CPU, and an empty
`torchvision` stands in when torchvision is not installed (its `utils.py` imports the
transforms, which a step never uses).

Configurations (`--configs`, each `ORDER,BATCH`; the default is all four of issue 15):
  first_order,16  second_order_fd,16  first_order,64  second_order_fd,64
on the reference search network (C=16, 8 cells, 4 nodes, 32x32x3, 10 classes), one full
search step each (the architecture step on a validation batch, then the weight step with
gradient clipping), the reference's hyperparameters on both sides. `--retrain` adds the
retraining step (NetworkCIFAR DARTS_V2, C=36, 20 cells, auxiliary head, drop path 0.1,
batch 96; quark0's train.py against trainers/retrain's step, without the export).
`--retrain_recompute` adds the same with our retraining's `--recompute` (RetrainConfig.recompute:
the separable and dilated convs recompute their activations in the backward pass, less memory
for more time; the reference's step is the same as for `--retrain`), as config
`retrain_recompute,96`.

Both sides draw the same batches (numpy default_rng(0), NHWC here and transposed to NCHW
for torch), each configuration runs in a fresh process per side, and the sides alternate
(the side that goes first swaps every round), so that drift of the machine's load falls on
both. Per run: start-up (process start to the end of the first step, from /proc), median
step after the first, peak RSS; the load average before and after each run. At the end: the
medians over rounds and the ratios (reference / ours for time, ours / reference for memory),
as JSON lines and as a Markdown table for BENCHMARKS.md.

`--lockstep`: the step times by neighbouring steps instead of by separate runs. Per round
and configuration both sides start (one after the other, each alone: the start-up figures
are the same as without it), then stay alive, each waiting for the parent, which asks for
one step at a time, alternately (reference, ours, ours, reference, ...): `--steps` pairs.
The ratio of a pair's two steps (and of their CPU seconds) is taken a few seconds apart,
so the machine's drift, 20-30% between processes minutes apart on shared machines, falls
on both; the summary gives the median of the pair ratios over all rounds beside the ratio
of the medians. Both processes are in memory at once (the reference at batch 64, second
order, and ours: about 17 GB).

`--profile`: where each side's step time goes, by kind of kernel, instead of the timings
above. Per configuration, the reference's step under torch.profiler (the ops' own time on
the calling thread, where torch runs them one at a time, each on both cores; convolutions
split by their weight: (C, 1, k, k) with k > 1 is depthwise) and ours under TensorFlow's
(`bench/profile_step.py --what=profile`: each kind's share of the kernel time times the
step's wall time), two warm-up steps then `--steps` profiled ones each, in the kinds of
bench/profile_step.py. Printed: a Markdown table per configuration, seconds per step by
kind on each side and their ratio, the reference's time outside its ops (Python, the
autograd engine) as a row of its own, and each side's second warm-up step, timed without
the profiler (torch's, recording every op's input shapes, lengthens the reference's step).

`--step_cache=warm`: our start-up as a repeated run sees it, the step loaded from the step
cache (trainers/runtime/step_cache.py) instead of traced; an untimed run of each
configuration fills a new cache directory first. The default, `cold`, turns the cache off:
every process of ours traces its step, as a first run does.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import proc_clock  # noqa: E402  pylint: disable=wrong-import-position

DEFAULT_CONFIGS = ("first_order,16", "second_order_fd,16", "first_order,64", "second_order_fd,64")
ORDERS = ("first_order", "second_order_fd")
# Retraining configurations: the reference's train.py step against ours, plain or with
# RetrainConfig.recompute (the reference's side is the same for both).
RETRAIN_KINDS = {"retrain": False, "retrain_recompute": True}
# The reference's search hyperparameters (train_search.py's defaults), used on both sides.
LR, MOMENTUM, WEIGHT_DECAY, ARCH_LR, ARCH_WEIGHT_DECAY, GRAD_CLIP = (
    0.025, 0.9, 3e-4, 3e-4, 1e-3, 5.0)


def batches(batch: int, steps: int, shape=(32, 32, 3), pairs: bool = True):
    """The benchmark's batches, as search_step.py and retrain_step.py draw them (NHWC)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)

    def one():
        return (rng.normal(size=(batch, *shape)).astype(np.float32),
                rng.integers(0, 10, size=batch).astype(np.int64))
    for _ in range(steps):
        yield (one(), one()) if pairs else one()


# ----- the reference's side (run by --torch_python; imports no TensorFlow) -----

def _import_reference(reference_dir: str):
    import types  # pylint: disable=import-outside-toplevel

    import torch  # pylint: disable=import-outside-toplevel
    if not os.path.isfile(os.path.join(reference_dir, "model_search.py")):
        raise SystemExit(f"--reference_dir={reference_dir!r} holds no model_search.py: give the "
                         "`cnn` directory of a quark0/darts checkout")
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.cuda.FloatTensor = lambda *size: torch.empty(*size)
    try:
        import torchvision  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")
        sys.modules.update({"torchvision": stub, "torchvision.transforms": stub.transforms})
    sys.path.insert(0, os.path.abspath(reference_dir))
    return torch


def reference_search_step(reference_dir: str, order: str, batch: int, steps: int):
    """(torch, step(*tensors), the inputs of `steps` steps) of train_search.py's loop."""
    torch = _import_reference(reference_dir)
    from torch import nn  # pylint: disable=import-outside-toplevel
    import architect  # pylint: disable=import-outside-toplevel,import-error
    import model_search  # pylint: disable=import-outside-toplevel,import-error

    torch.manual_seed(0)
    criterion = nn.CrossEntropyLoss()
    model = model_search.Network(16, 10, 8, criterion)
    optimizer = torch.optim.SGD(model.parameters(), LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    args = argparse.Namespace(momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                              arch_learning_rate=ARCH_LR, arch_weight_decay=ARCH_WEIGHT_DECAY)
    arch = architect.Architect(model, args)
    model.train()

    def step(xt, yt, xv, yv):
        # train_search.py's train(): the architecture step, then the weight step.
        arch.step(xt, yt, xv, yv, LR, optimizer, unrolled=order != "first_order")
        optimizer.zero_grad()
        loss = criterion(model(xt), yt)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        return loss
    return torch, step, ((*_nchw(torch, *t), *_nchw(torch, *v)) for t, v in batches(batch, steps))


def reference_retrain_step(reference_dir: str, batch: int, steps: int):
    """(torch, step(*tensors), the inputs of `steps` steps) of train.py's loop."""
    torch = _import_reference(reference_dir)
    from torch import nn  # pylint: disable=import-outside-toplevel
    import genotypes  # pylint: disable=import-outside-toplevel,import-error
    import model  # pylint: disable=import-outside-toplevel,import-error

    torch.manual_seed(0)
    criterion = nn.CrossEntropyLoss()
    network = model.NetworkCIFAR(36, 10, 20, True, genotypes.DARTS_V2)
    network.drop_path_prob = 0.2 * 300 / 600  # mid-run, as retrain_step.py's set_epoch(300)
    optimizer = torch.optim.SGD(network.parameters(), LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    network.train()

    def step(x, y):
        # train.py's train(): auxiliary weight 0.4, clipping at 5.
        optimizer.zero_grad()
        logits, logits_aux = network(x)
        loss = criterion(logits, y) + 0.4 * criterion(logits_aux, y)
        loss.backward()
        nn.utils.clip_grad_norm_(network.parameters(), GRAD_CLIP)
        optimizer.step()
        return loss
    return torch, step, (_nchw(torch, *b) for b in batches(batch, steps, pairs=False))


def _nchw(torch, x, y):
    """A numpy NHWC batch as torch tensors, NCHW."""
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)


def _time_steps(torch, step, inputs) -> dict:
    """Times `step(*tensors)` per batch (batches are converted outside the timing)."""
    times, startup = [], None
    for tensors in inputs:
        start = time.time()
        float(step(*tensors))
        times.append(time.time() - start)
        startup = startup or proc_clock.process_age_s()
    return _figures(times, startup, torch_threads=torch.get_num_threads(),
                    torch_version=torch.__version__)


# aten ops by kind, as bench/profile_step.py groups TensorFlow's (convolutions apart: by weight).
REFERENCE_KINDS = {
    "batch norm": ("aten::native_batch_norm", "aten::native_batch_norm_backward",
                   "aten::_native_batch_norm_legit", "aten::_native_batch_norm_legit_functional",
                   "aten::_batch_norm_with_update", "aten::batch_norm_backward"),
    "relu": ("aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_",
             "aten::threshold_backward"),
    "pooling": ("aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward",
                "aten::avg_pool2d", "aten::avg_pool2d_backward", "aten::_adaptive_avg_pool2d",
                "aten::_adaptive_avg_pool2d_backward", "aten::adaptive_avg_pool2d"),
    "data movement": ("aten::cat", "aten::copy_", "aten::constant_pad_nd", "aten::slice",
                      "aten::slice_backward", "aten::narrow", "aten::clone", "aten::stack",
                      "aten::index", "aten::select_backward", "aten::contiguous",
                      "aten::_to_copy", "aten::view", "aten::reshape", "aten::as_strided",
                      "aten::expand", "aten::t", "aten::transpose", "aten::permute"),
    "element-wise": ("aten::mul", "aten::mul_", "aten::add", "aten::add_", "aten::sub",
                     "aten::sub_", "aten::div", "aten::div_", "aten::neg", "aten::_softmax",
                     "aten::_softmax_backward_data", "aten::_log_softmax",
                     "aten::_log_softmax_backward_data", "aten::bernoulli_", "aten::floor_",
                     "aten::sqrt", "aten::addcmul_", "aten::addcdiv_", "aten::lerp_",
                     "aten::clamp", "aten::reciprocal", "aten::exp", "aten::addmm",
                     "aten::mm", "aten::fill_", "aten::zero_", "aten::where", "aten::pow"),
    "reductions": ("aten::sum", "aten::mean", "aten::linalg_vector_norm", "aten::norm",
                   "aten::nll_loss_forward", "aten::nll_loss_backward", "aten::max"),
}
# The rest ("other"): allocation (aten::empty, ...), the autograd graph's nodes (their own
# time beside the kernels they call), view bookkeeping: the framework's per-op overhead.
_REFERENCE_KIND_OF = {op: kind for kind, ops in REFERENCE_KINDS.items() for op in ops}
_CONVOLUTIONS = ("aten::mkldnn_convolution", "aten::convolution_backward",
                 "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward",
                 "aten::thnn_conv2d", "aten::_convolution_depthwise2d")


def reference_kind(op: str, input_shapes) -> str:
    """The kind (bench/profile_step.py's names) of an aten op from its name and input shapes.

    A convolution is depthwise when its weight is (C, 1, k, k) with k > 1 (the separable and
    dilated convs' first conv; the reference's input images have 3 channels); the weight is
    the second input of a forward conv and the third of `convolution_backward`."""
    if op in _CONVOLUTIONS:
        index = 2 if "backward" in op else 1
        weight = input_shapes[index] if len(input_shapes) > index else []
        depthwise = len(weight) == 4 and weight[1] == 1 and weight[2] * weight[3] > 1
        return "depthwise conv" if depthwise else "conv 1x1 / conv"
    return _REFERENCE_KIND_OF.get(op, "other")


def reference_kinds(torch, step, inputs, steps: int) -> dict:
    """Two warm-up steps, then `steps` steps under torch.profiler: the ops' own time per
    step by kind, the step's wall time, and the time outside the ops (seconds per step)."""
    from torch import profiler  # pylint: disable=import-outside-toplevel

    inputs = iter(inputs)
    for _ in range(2):  # the second one timed: the step without the profiler
        tensors = next(inputs)
        start = time.time()
        float(step(*tensors))
        unprofiled = time.time() - start
    batches = [next(inputs) for _ in range(steps)]
    with profiler.profile(activities=[profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.time()
        for tensors in batches:
            float(step(*tensors))
        wall = time.time() - start
    kinds, ops = {}, {}
    for event in prof.key_averages(group_by_input_shape=True):
        seconds = event.self_cpu_time_total / 1e6 / steps
        kind = reference_kind(event.key, event.input_shapes or [])
        kinds[kind] = kinds.get(kind, 0.0) + seconds
        ops[event.key] = ops.get(event.key, 0.0) + seconds
    in_ops = sum(kinds.values())
    return {"wall_s_per_step": round(wall / steps, 3), "unprofiled_step_s": round(unprofiled, 3),
            "ops_s_per_step": round(in_ops, 3),
            "outside_ops_s_per_step": round(wall / steps - in_ops, 3),
            "kinds_s": {k: round(v, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top_ops_s": {k: round(v, 3) for k, v in sorted(ops.items(),
                                                            key=lambda kv: -kv[1])[:12]},
            "torch_threads": torch.get_num_threads()}


# ----- our side, for --lockstep (run by this project's Python; the same batches) -----

def ours_step(config: str, steps: int):
    """(step(*tensors) -> loss tensor, the inputs of `steps` steps) as search_step.py
    (`--one`) and retrain_step.py (`--no-export`) build them; the inputs are `batches()`'
    batches as tensors, made when the generator is advanced."""
    sys.path.insert(1, os.path.dirname(HERE))  # the repository's root
    # Before TensorFlow: search_step imports darts_tf, which sets TensorFlow's oneDNN default.
    import search_step  # pylint: disable=import-outside-toplevel  (beside this script)
    import numpy as np  # pylint: disable=import-outside-toplevel

    tf = search_step.import_tensorflow()  # as the CLI and search_step.py

    kind, batch = config.split(",")
    batch = int(batch)

    def tensors(x, y):
        return tf.constant(x), tf.constant(y.astype(np.int32))
    if kind in RETRAIN_KINDS:
        import retrain_step  # pylint: disable=import-outside-toplevel  (beside this script)
        trainer = retrain_step.build_trainer(batch, recompute=RETRAIN_KINDS[kind])

        def step(x, y):
            return trainer.train_step(tensors(x, y))["loss"]
        return step, batches(batch, steps, pairs=False)
    trainer, _, _, _ = search_step.build_trainer(kind, batch)  # 32x32x3, as the reference

    def search_one(train_x, train_y, val_x, val_y):
        return trainer.step((train_x, train_y), (val_x, val_y))["loss"]
    return search_one, ((*tensors(*t), *tensors(*v)) for t, v in batches(batch, steps))


def serve_steps(step, inputs) -> None:
    """A --lockstep child: the first step, then one step per "step" line on stdin.

    Prints one JSON line after the first step (start-up), one per step (wall and CPU
    seconds) and one at the end ("end" or end of input: the peak RSS). A step's inputs are
    made before its timing starts."""
    inputs = iter(inputs)
    start = time.time()
    float(step(*next(inputs)))
    print(json.dumps({"startup_s": round(proc_clock.process_age_s(), 2),
                      "first_step_s": round(time.time() - start, 2)}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        tensors = next(inputs)
        start, cpu = time.time(), time.process_time()
        float(step(*tensors))
        print(json.dumps({"wall_s": round(time.time() - start, 3),
                          "cpu_s": round(time.process_time() - cpu, 3)}), flush=True)
    print(json.dumps({"peak_rss_gb": round(proc_clock.peak_rss_gb(), 2)}), flush=True)


def _figures(times, startup, **extra) -> dict:
    median = _median(times[1:])
    return {"startup_s": round(startup, 2), "first_step_s": round(times[0], 2),
            "step_s_median": round(median, 3) if median is not None else None,
            "steps_timed": len(times) - 1, "peak_rss_gb": round(proc_clock.peak_rss_gb(), 2),
            **extra}


# ----- the parent: alternate the two sides -----

def _command(side: str, config: str, args, lockstep: bool = False) -> list[str]:
    if lockstep:  # the first step, then args.steps more, one per request
        python = args.torch_python if side == "reference" else sys.executable
        return [python, os.path.abspath(__file__), f"--child={config}", "--lockstep",
                f"--reference_dir={args.reference_dir}", f"--steps={args.steps + 1}",
                *(["--ours"] if side == "ours" else [])]
    if side == "reference":
        return [args.torch_python, os.path.abspath(__file__), f"--child={config}",
                f"--reference_dir={args.reference_dir}", f"--steps={args.steps}"]
    kind, batch = config.split(",")
    if kind in RETRAIN_KINDS:
        return [sys.executable, os.path.join(HERE, "retrain_step.py"), f"--batch={batch}",
                f"--steps={args.steps}", "--no-export",
                *(["--recompute"] if RETRAIN_KINDS[kind] else [])]
    return [sys.executable, os.path.join(HERE, "search_step.py"), f"--one={config}",
            f"--steps={args.steps}"]


def run_side(side: str, config: str, args) -> dict:
    load = os.getloadavg()[0]
    out = subprocess.run(_command(side, config, args), capture_output=True, text=True,
                         check=False)
    record = {"side": side, "config": config, "load_before": round(load, 2),
              "load_after": round(os.getloadavg()[0], 2)}
    if out.returncode != 0:
        record["error"] = out.stderr.strip()[-1500:]
        return record
    result = json.loads(out.stdout.strip().splitlines()[-1])
    keep = ("startup_s", "first_step_s", "step_s_median", "steps_timed", "peak_rss_gb",
            "torch_threads", "torch_version", "images_per_s")
    record.update({k: result[k] for k in keep if k in result})
    return record


class ChildFailed(RuntimeError):
    """A --lockstep child ended before writing its next JSON line."""


def _read_line(proc, stderr) -> dict:
    """The child's next JSON line (lines that are not JSON objects are skipped)."""
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            stderr.seek(0)
            raise ChildFailed(f"exit status {proc.returncode}: {stderr.read().strip()[-1500:]}")
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record


def run_lockstep(config: str, sides, args) -> list[dict]:
    """One round of --lockstep: both sides started in `sides` order, each alone, then
    `args.steps` pairs of steps, the first side first in even pairs, second in odd ones."""
    import tempfile  # pylint: disable=import-outside-toplevel

    records, children = {}, {}
    side = sides[0]
    try:
        for side in sides:
            records[side] = {"side": side, "config": config, "mode": "lockstep",
                             "load_before": round(os.getloadavg()[0], 2)}
            stderr = tempfile.TemporaryFile(mode="w+")
            proc = subprocess.Popen(_command(side, config, args, lockstep=True),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=stderr, text=True)
            children[side] = (proc, stderr)
            records[side].update(_read_line(proc, stderr))
        steps = {side: [] for side in sides}
        for i in range(args.steps):
            for side in sides if i % 2 == 0 else sides[::-1]:
                proc, stderr = children[side]
                proc.stdin.write("step\n")
                proc.stdin.flush()
                steps[side].append(_read_line(proc, stderr))
        for side in sides:
            proc, stderr = children[side]
            proc.stdin.write("end\n")
            proc.stdin.flush()
            records[side].update(_read_line(proc, stderr))
            proc.wait(timeout=600)
    except ChildFailed as failure:  # `side` is the one being started, stepped or ended
        records[side]["error"] = str(failure)
        return list(records.values())
    finally:  # a side still running after a failure is killed; the stderr files are closed
        for proc, stderr in children.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stderr.close()
    for side in sides:
        walls = [s["wall_s"] for s in steps[side]]
        records[side].update({"step_s": walls, "step_s_median": _median(walls),
                              "steps_timed": len(walls),
                              "cpu_s_median": _median([s["cpu_s"] for s in steps[side]]),
                              "load_after": round(os.getloadavg()[0], 2)})
    ref, ours = steps["reference"], steps["ours"]
    records["ours"]["pair_ratios"] = [round(r["wall_s"] / o["wall_s"], 3)
                                      for r, o in zip(ref, ours)]
    records["ours"]["cpu_pair_ratios"] = [round(r["cpu_s"] / o["cpu_s"], 3)
                                          for r, o in zip(ref, ours)]
    return [records[side] for side in sides]


def ours_kinds(result: dict) -> dict:
    """bench/profile_step.py's profile as seconds per step by kind: each kind's share of the
    kernel time times the step's wall time (its two executor threads run kernels side by
    side, so kernel seconds add up to about twice the wall time)."""
    wall = result["wall_s_per_step"]
    return {"wall_s_per_step": wall, "unprofiled_step_s": result.get("unprofiled_step_s"),
            "kinds_s": {k: round(share / 100 * wall, 3) for k, share in result["kinds"].items()},
            "kernels_over_wall_x_cores": result.get("kernels_over_wall_x_cores")}


def kinds_table(reference: dict, ours: dict) -> str:
    """Markdown: seconds per step by kind on each side and reference / ours, the reference's
    largest kinds first; then its time outside the ops, and the whole step."""
    def ratio(r, o):  # not of hundredths of a second: noise
        return f"{r / o:.2f}x" if r >= 0.01 and o >= 0.01 else "-"
    lines = ["| kind | reference (s per step) | ours (s per step) | reference / ours |",
             "|---|---|---|---|"]
    ref, our = reference["kinds_s"], ours["kinds_s"]
    for kind in sorted(set(ref) | set(our), key=lambda k: (-ref.get(k, 0.0), -our.get(k, 0.0))):
        r, o = ref.get(kind, 0.0), our.get(kind, 0.0)
        if r >= 0.005 or o >= 0.005:
            lines.append(f"| {kind} | {r:.2f} | {o:.2f} | {ratio(r, o)} |")
    lines.append(f"| outside the ops (Python, the autograd engine's loop) | "
                 f"{reference['outside_ops_s_per_step']:.2f} | - | - |")
    lines.append(f"| **step (wall), profiled** | {reference['wall_s_per_step']:.2f} | "
                 f"{ours['wall_s_per_step']:.2f} | "
                 f"{ratio(reference['wall_s_per_step'], ours['wall_s_per_step'])} |")
    plain = reference.get("unprofiled_step_s"), ours.get("unprofiled_step_s")
    if None not in plain:  # what the profilers add: torch's records every op's shapes
        lines.append(f"| step without the profiler (the warm-up's second) | {plain[0]:.2f} | "
                     f"{plain[1]:.2f} | {ratio(*plain)} |")
    return "\n".join(lines)


def profile_sides(config: str, args) -> dict:
    """--profile: the reference's and our step by kind, one process each, one after the other."""
    commands = {
        "reference": [args.torch_python, os.path.abspath(__file__), f"--child={config}",
                      "--profile", f"--reference_dir={args.reference_dir}",
                      f"--steps={args.steps}"],
        "ours": [sys.executable, os.path.join(HERE, "profile_step.py"), "--what=profile",
                 f"--config={config}", f"--steps={args.steps}"]}
    record = {"config": config, "mode": "profile"}
    for side, command in commands.items():
        load = os.getloadavg()[0]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        record[f"{side}_load"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        if out.returncode != 0:
            record["error"] = f"{side}: {out.stderr.strip()[-1500:]}"
            return record
        result = json.loads(out.stdout.strip().splitlines()[-1])
        record[side] = result if side == "reference" else ours_kinds(result)
    return record


def _median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _pooled(records: list[dict], config: str, key: str) -> list[float]:
    """The pair ratios under `key` of our side's successful runs of `config`, all rounds."""
    return [p for r in records if r["config"] == config and r["side"] == "ours"
            and "error" not in r for p in r.get(key, ())]


def summarize(records: list[dict]) -> list[dict]:
    """Per configuration: each side's medians over its rounds and the ratios."""
    rows = []
    for config in dict.fromkeys(r["config"] for r in records):
        row = {"config": config}
        for side in ("reference", "ours"):
            runs = [r for r in records if r["config"] == config and r["side"] == side
                    and "error" not in r]
            row[side] = {k: _median([r.get(k) for r in runs])
                         for k in ("step_s_median", "startup_s", "peak_rss_gb")}
            row[side]["runs"] = len(runs)
        ref, ours = row["reference"], row["ours"]
        if ref["runs"] and ours["runs"]:
            row["step_speedup"] = round(ref["step_s_median"] / ours["step_s_median"], 2)
            row["startup_ratio"] = round(ours["startup_s"] / ref["startup_s"], 2)
            row["rss_ratio"] = round(ours["peak_rss_gb"] / ref["peak_rss_gb"], 2)
        pairs = _pooled(records, config, "pair_ratios")
        if pairs:  # --lockstep: the reference's step over ours, pair by pair
            row["step_speedup_pairs"] = round(_median(pairs), 2)
            row["pair_ratio_range"] = [min(pairs), max(pairs)]
            row["cpu_speedup_pairs"] = round(
                _median(_pooled(records, config, "cpu_pair_ratios")), 2)
        rows.append(row)
    return rows


def markdown(rows: list[dict], records: list[dict]) -> str:
    lines = ["| configuration | reference step (s) | ours step (s) | speed-up | reference start-up"
             " (s) | ours start-up (s) | start-up ours/ref | reference RSS (GB) | ours RSS (GB) |"
             " RSS ours/ref |", "|---" * 10 + "|"]
    for row in rows:
        def each(side, key, digits):
            values = [r.get(key) for r in records if r["config"] == row["config"]
                      and r["side"] == side and "error" not in r]
            return ", ".join(f"{v:.{digits}f}" for v in values) or "failed"
        pairs = ""
        if "step_speedup_pairs" in row:
            low, high = row["pair_ratio_range"]
            pairs = (f" (pairs: {row['step_speedup_pairs']}x, {low:.2f}-{high:.2f}x; CPU "
                     f"{row['cpu_speedup_pairs']}x)")
        lines.append(
            f"| {row['config']} | {each('reference', 'step_s_median', 2)} | "
            f"{each('ours', 'step_s_median', 2)} | {row.get('step_speedup', '-')}x"
            f"{pairs} | "
            f"{each('reference', 'startup_s', 1)} | {each('ours', 'startup_s', 1)} | "
            f"{row.get('startup_ratio', '-')}x | {each('reference', 'peak_rss_gb', 2)} | "
            f"{each('ours', 'peak_rss_gb', 2)} | {row.get('rss_ratio', '-')}x |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference_dir", help="the cnn/ directory of a quark0/darts checkout")
    parser.add_argument("--torch_python", default="python",
                        help="a Python with torch (and numpy) for the reference's side")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        help="ORDER,BATCH with ORDER in " + ", ".join(ORDERS))
    parser.add_argument("--retrain", action="store_true",
                        help="also the retraining step at batch 96 (config retrain,96)")
    parser.add_argument("--retrain_recompute", action="store_true",
                        help="also the retraining step with our --recompute (config "
                        "retrain_recompute,96; the reference's step is the same)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="steps per run (the first is "
                        "start-up; the median is over the others)")
    parser.add_argument("--output", help="append every record and the summary (JSON lines)")
    parser.add_argument("--lockstep", action="store_true",
                        help="both sides alive at once, their steps alternated one by one; "
                        "--steps pairs after the first step (see the module's docstring)")
    parser.add_argument("--step_cache", choices=("cold", "warm"), default="cold",
                        help="ours without the step cache (cold: every process traces its "
                        "step) or with one filled by an untimed run of each configuration "
                        "first (warm: a repeated run's start-up)")
    parser.add_argument("--profile", action="store_true",
                        help="each side's step time by kind of kernel, not the timings "
                        "(see the module's docstring); --steps profiled steps per side")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ours", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.reference_dir:
        parser.error("--reference_dir is required (the cnn/ directory of quark0/darts)")

    if args.child:  # in a side's process
        kind, batch = args.child.split(",")
        if args.ours:  # --lockstep only: the timed runs of ours are search_step.py's
            serve_steps(*ours_step(args.child, args.steps))
            return
        steps = args.steps + 2 if args.profile else args.steps  # --profile: 2 warm-up steps
        if kind in RETRAIN_KINDS:
            torch, step, inputs = reference_retrain_step(args.reference_dir, int(batch), steps)
        else:
            torch, step, inputs = reference_search_step(args.reference_dir, kind, int(batch),
                                                         steps)
        if args.profile:
            print(json.dumps(reference_kinds(torch, step, inputs, args.steps)), flush=True)
        elif args.lockstep:
            serve_steps(step, inputs)
        else:
            print(json.dumps(_time_steps(torch, step, inputs)), flush=True)
        return

    for config in args.configs:
        order, _, batch = config.partition(",")
        if order not in ORDERS or not batch.isdigit():
            parser.error(f"--configs: {config!r} is not ORDER,BATCH with ORDER in {ORDERS}")
    configs = (list(args.configs) + (["retrain,96"] if args.retrain else [])
               + (["retrain_recompute,96"] if args.retrain_recompute else []))
    header = {"machine": proc_clock.cpu_model(), "uptime_before": _uptime(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
              "step_cache": args.step_cache}
    _emit(header, args.output)
    if args.profile:
        for config in configs:
            record = profile_sides(config, args)
            _emit(record, args.output)
            if "error" not in record:
                print(f"\n{config} (load before and after: reference {record['reference_load']}"
                      f", ours {record['ours_load']}):\n"
                      f"{kinds_table(record['reference'], record['ours'])}\n", flush=True)
        _emit({"uptime_after": _uptime()}, args.output)
        return
    _prepare_step_cache(configs, args)
    records = []
    for round_index in range(args.rounds):
        sides = ("reference", "ours") if round_index % 2 == 0 else ("ours", "reference")
        for config in configs:
            runs = (run_lockstep(config, sides, args) if args.lockstep
                    else [run_side(side, config, args) for side in sides])
            for record in runs:
                record["round"] = round_index + 1
                if record["side"] == "ours":
                    record["step_cache"] = args.step_cache
                records.append(record)
                _emit(record, args.output)
    rows = summarize(records)
    for row in rows:
        _emit({"summary": row}, args.output)
    _emit({"uptime_after": _uptime()}, args.output)
    print(markdown(rows, records))


def _prepare_step_cache(configs, args) -> None:
    """Our children's step cache (trainers/runtime/step_cache.py), through the environment
    they inherit: off (cold), or a new directory that an untimed run of each configuration
    fills first (warm)."""
    import tempfile  # pylint: disable=import-outside-toplevel

    if args.step_cache == "cold":
        os.environ["DARTS_TF_STEP_CACHE"] = "off"
        return
    os.environ["DARTS_TF_STEP_CACHE"] = tempfile.mkdtemp(prefix="darts_tf_step_cache_")
    primer = argparse.Namespace(**{**vars(args), "steps": 2})
    for config in configs:
        record = run_side("ours", config, primer)
        _emit({"step_cache_filled_by": config, **{k: record.get(k) for k in (
            "startup_s", "error") if k in record}}, args.output)


def _uptime() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return "load average " + " ".join(f.read().split()[:3])


def _emit(record: dict, output: str | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if output:
        with open(output, "a", encoding="utf-8") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
