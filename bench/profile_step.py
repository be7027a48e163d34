r"""Where a search step's time goes: an op-level profile of a steady step, and start-up by part.

    python bench/profile_step.py --what=profile --config=first_order,16
    python bench/profile_step.py --what=startup --config=first_order,16
    python bench/profile_step.py --what=ops --config=first_order,16

The reference search network (C=16, 8 cells, 4 nodes, 32x32x3) and the full search step
of trainers/search/trainer.py, on random batches, as bench/search_step.py times it
(`--config` is ORDER,BATCH[,METHOD] with its names).

--what=profile: two warm-up steps (the second timed: `unprofiled_step_s`), then `--steps`
  steps under TensorFlow's profiler
  (`--config=retrain[,BATCH]`: bench/retrain_step.py's retraining step instead;
  `retrain_recompute[,BATCH]`: the same with `--recompute`).
  The op events of the executor's threads (xplane) are summed by op type (oneDNN's
  _Mkl prefixes removed) and grouped into kinds (depthwise convolution, convolution,
  batch norm, pooling, element-wise, data movement, reductions, ...). Printed: each
  kind's and the top op types' share of the kernel time; kernel time against wall time x
  cores, and against the executor threads' busy time (the rest of it is the executor's
  own overhead). Then the allocator's peak during the profiled steps and the tensors live
  at that moment, by layer and op (from the trace's allocation events; `backward:` marks
  the gradient's own tensors): what a memory saving would have to remove. One JSON line
  at the end, with the trace's path (--xplane re-reads it).
--what=startup: the process's start-up by part, each timed on its own:
  interpreter (process start to this script's first line), import TensorFlow, import
  darts-tf (darts_tf, trainers, configs), build (the trainer: supernet, variables,
  optimizers), trace (the step's concrete function: Python to graph), first call
  (graph optimisation, kernel and executor set-up, then the step), and a steady step for
  comparison (first call minus steady step ~ graph optimisation and set-up).
  Cold (no step cache) unless DARTS_TF_STEP_CACHE=DIR is set: then there is no trace part,
  and the first call includes the cache's load (step_loads 1) or the trace and save (0).
--what=ops: the traced step's graph, ops counted by type (what tracing builds; a count
  that, unlike a time, does not depend on the machine's load).
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import darts_tf  # noqa: E402,F401  (before TensorFlow: it sets its oneDNN default)
from trainers.runtime.startup import import_tensorflow  # noqa: E402  pylint: disable=wrong-import-position
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DARTS_TF_STEP_CACHE", "off")  # a cold start unless told otherwise

import proc_clock  # noqa: E402  pylint: disable=wrong-import-position

# Op types by kind, after _op_type's removal of oneDNN's prefixes (the profile groups
# what is not listed as "other").
KINDS = {
    "depthwise conv": ("DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
                       "DepthwiseConv2dNativeBackpropFilter", "FusedDepthwiseConv2dNative",
                       "_FusedDepthwiseConv2dNative"),
    "conv 1x1 / conv": ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "FusedConv2D",
                        "_FusedConv2D", "MatMul", "FusedMatMul", "_FusedMatMul", "Einsum",
                        "BatchMatMulV2", "BatchMatMulV3"),
    "batch norm": ("FusedBatchNorm", "FusedBatchNormGrad", "FusedBatchNormV3",
                   "FusedBatchNormGradV3", "_FusedBatchNormEx"),
    "pooling": ("MaxPool", "MaxPoolGrad", "MaxPoolGradGrad", "AvgPool", "AvgPoolGrad"),
    "relu": ("Relu", "ReluGrad"),
    "data movement": ("StridedSlice", "StridedSliceGrad", "Slice", "ConcatV2", "Concat", "Pack",
                      "Unpack", "Pad", "PadV2", "MirrorPad", "Transpose", "Reshape",
                      "Identity", "IdentityN", "Split", "SplitV", "Tile", "GatherV2", "Fill",
                      "ZerosLike", "OnesLike", "BroadcastTo", "Cast", "_Send", "_Recv",
                      "SpaceToBatchND", "BatchToSpaceND", "UnsortedSegmentSum"),
    "element-wise": ("AddV2", "Add", "AddN", "Mul", "Sub", "RealDiv", "Neg", "Square", "Sqrt",
                     "Rsqrt", "Maximum", "Minimum", "Exp", "Log", "Pow", "Softmax",
                     "SoftmaxGrad", "Select", "SelectV2", "BiasAdd", "BiasAddGrad", "Greater",
                     "Less", "Equal", "Where", "SparseSoftmaxCrossEntropyWithLogits",
                     "ResourceApplyMomentum", "DivNoNan", "IsFinite", "LogicalNot",
                     "LogicalAnd", "_FusedMul"),
    "reductions": ("Sum", "Mean", "Max", "Min", "Prod", "ArgMax", "L2Loss"),
    "variables": ("ReadVariableOp", "AssignVariableOp", "AssignAddVariableOp",
                  "AssignSubVariableOp", "VarHandleOp", "Const", "NoOp", "_Arg", "_Retval"),
}
KIND_OF = {op: kind for kind, ops in KINDS.items() for op in ops}


def _trainer(config_text: str):
    import numpy as np  # pylint: disable=import-outside-toplevel
    tf = import_tensorflow()  # as the CLI: without Keras' sklearn and pyplot extras

    import darts_tf  # pylint: disable=import-outside-toplevel
    import search_step  # pylint: disable=import-outside-toplevel
    from configs import SearchConfig  # pylint: disable=import-outside-toplevel
    from trainers import search  # pylint: disable=import-outside-toplevel

    order, batch, *method = config_text.split(",")
    batch = int(batch)
    config = SearchConfig(batch_size=batch, **search_step.ORDERS[order],
                          **search_step.METHODS[method[0] if method else "darts"])
    built = time.time()
    trainer = search.SearchTrainer(
        lambda: darts_tf.Supernet(num_classes=10, **config.supernet_options()), config,
        input_shape=(32, 32, 3))
    built = time.time() - built
    rng = np.random.default_rng(0)

    def pair():
        def one():
            return (tf.constant(rng.normal(size=(batch, 32, 32, 3)).astype(np.float32)),
                    tf.constant(rng.integers(0, 10, size=batch).astype(np.int32)))
        return one(), one()
    return trainer, pair, built


def startup(config_text: str) -> dict:
    parts = {"interpreter": proc_clock.process_age_s()}
    start = time.time()
    tf = import_tensorflow()  # as the CLI: without Keras' sklearn and pyplot extras
    parts["import tensorflow"] = time.time() - start
    start = time.time()
    import configs  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import darts_tf  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import trainers.search  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    from trainers.runtime import distribute  # pylint: disable=import-outside-toplevel
    parts["import darts-tf"] = time.time() - start
    trainer, pair, parts["build"] = _trainer(config_text)
    train, val = pair()
    cached = trainer.step_cache.directory is not None
    if not cached:
        start = time.time()
        with distribute.graph_optimization(trainer.graph_mode):
            trainer._steps["full"].get_concrete_function(train, val)  # pylint: disable=protected-access
        parts["trace"] = time.time() - start
    start = time.time()
    float(trainer.step(train, val)["loss"])
    parts["first call, with the step cache's load or trace" if cached else "first call"] = (
        time.time() - start)
    total = proc_clock.process_age_s()
    steady = []
    for _ in range(2):
        train, val = pair()
        start = time.time()
        float(trainer.step(train, val)["loss"])
        steady.append(time.time() - start)
    parts = {k: round(v, 2) for k, v in parts.items()}
    return {"config": config_text, "parts_s": parts, "startup_s": round(total, 2),
            "unaccounted_s": round(total - sum(parts.values()), 2),
            "steady_step_s": round(min(steady), 2),
            "first_call_minus_step_s": round(list(parts.values())[-1] - min(steady), 2),
            "step_traces": trainer.step_traces, "step_loads": trainer.step_loads,
            "graph_mode": trainer.graph_mode,
            "machine": proc_clock.cpu_model(), "load": os.getloadavg()[0]}


def _op_type(event_name: str) -> str | None:
    """"node_name:OpType" -> the op type with oneDNN's prefixes removed (_MklNativeConv2D ->
    Conv2D); None for the executor's own events (ExecutorState::Process, ParallelFor, ...)."""
    if ":" not in event_name or "::" in event_name:
        return None
    node, op = event_name.rsplit(":", 1)
    if not node or not op or not op[0].isalpha() and not op.startswith("_"):
        return None
    for prefix in ("_MklNative", "_Mkl"):
        if op.startswith(prefix):
            return op[len(prefix):]
    return op


def summarize_xplane(path: str, wall: float, steps: int, top: int) -> dict:
    """Sums the op events of the executor's threads (tf_Compute lines) by op type.

    Each op event is counted once (kernels run on the executor's threads; the intra-op
    pool's events carry no time here). `Process` (the executor's per-node loop, which
    encloses the kernels) gives the threads' busy time; the part of it outside the
    kernels is the executor's overhead.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    by_type, busy, threads = collections.Counter(), 0.0, 0
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            threads += 1
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if name.endswith("::Process") or name.endswith(":Process"):
                    busy += event.duration_ps / 1e12
                    continue
                op = _op_type(name)
                if op is not None:
                    by_type[op] += event.duration_ps / 1e12
    total = sum(by_type.values())
    peak_gb, live = memory_at_peak(space)
    by_kind = collections.Counter()
    for op, seconds in by_type.items():
        by_kind[KIND_OF.get(op, "other")] += seconds
    cores = len(os.sched_getaffinity(0))
    return {"steps": steps, "wall_s_per_step": round(wall / steps, 3),
            "executor_threads": threads, "kernel_s_per_step": round(total / steps, 3),
            "busy_s_per_step": round(busy / steps, 3),
            "kernels_over_wall_x_cores": round(total / (wall * cores), 3),
            "kernels_over_busy": round(total / busy, 3) if busy else None,
            "kinds": {k: round(100 * v / total, 1) for k, v in by_kind.most_common()},
            "top_ops": {k: round(100 * v / total, 1) for k, v in by_type.most_common(top)},
            "other_ops": sorted(op for op in by_type if op not in KIND_OF),
            "allocator_peak_gb": peak_gb,
            "live_at_peak_gb": {k: round(v / 1e9, 3) for k, v in live.most_common(top)}}


def _layer_label(tf_op: str) -> str:
    """"cell_2_1/node_5_from_0_to_1_1/sep_conv_3x3_1/Conv2D" -> "sep_conv_3x3/Conv2D": the
    innermost layer (Keras' call-count suffixes dropped) and the op; "backward:" in front
    for the gradient's own tensors."""
    parts = [re.sub(r"(_\d+)+$", "", p) for p in tf_op.split("/")]
    backward = "backward: " if any(p.startswith("gradient_tape") for p in parts) else ""
    layers = [p for p in parts[:-1] if not p.startswith(("gradient_tape", "cell", "StatefulPartitionedCall"))]
    return backward + "/".join(([re.sub(r"_from_\d+_to$", "", layers[-1])] if layers else []) + parts[-1:])


def memory_at_peak(space) -> tuple[float | None, collections.Counter]:
    """The allocator's peak in the trace (GB) and the bytes live at that moment by `_layer_label`.

    From the allocator's MemoryAllocation / MemoryDeallocation events (address, size, and
    the op that allocated), replayed in time order; (None, empty) if the trace has none.
    """
    events = []
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                kind = names.get(event.metadata_id)
                if kind not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                stats = {}
                for stat in event.stats:
                    name = stat_names.get(stat.metadata_id)
                    if stat.WhichOneof("value") == "ref_value":
                        stats[name] = stat_names.get(stat.ref_value, "")
                    else:
                        stats[name] = getattr(stat, stat.WhichOneof("value") or "int64_value")
                events.append((line.timestamp_ns * 1000 + event.offset_ps, kind, stats))
    events.sort(key=lambda e: e[0])
    live, peak, at_peak = {}, 0, {}
    for _, kind, stats in events:
        if kind == "MemoryAllocation":
            live[stats.get("addr")] = (stats.get("allocation_bytes", 0), stats.get("tf_op", ""))
        else:
            live.pop(stats.get("addr"), None)
        if stats.get("bytes_allocated", 0) > peak:
            peak, at_peak = stats["bytes_allocated"], dict(live)
    by_label = collections.Counter()
    for size, op in at_peak.values():
        by_label[_layer_label(op) if op else "(no op)"] += size
    return (round(peak / 1e9, 3) if events else None), by_label


def _retrain_stepper(config_text: str):
    """`retrain[,BATCH]`: bench/retrain_step.py's trainer (NetworkCIFAR DARTS_V2, C=36, 20
    cells, auxiliary head, drop path; batch 96 unless given) and its step;
    `retrain_recompute[,BATCH]` the same with `--recompute`."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    tf = import_tensorflow()  # as the CLI: without Keras' sklearn and pyplot extras

    import retrain_step  # pylint: disable=import-outside-toplevel

    kind, *batch = config_text.split(",")
    batch = int(batch[0]) if batch else 96
    trainer = retrain_step.build_trainer(batch, recompute=kind == "retrain_recompute")
    rng = np.random.default_rng(0)

    def batches():
        return ((tf.constant(rng.normal(size=(batch, 32, 32, 3)).astype(np.float32)),
                 tf.constant(rng.integers(0, 10, size=batch).astype(np.int32))),)
    return trainer.train_step, batches


def _stepper(config_text: str):
    """The step to profile and a function giving its next arguments."""
    if config_text.split(",")[0] in ("retrain", "retrain_recompute"):
        return _retrain_stepper(config_text)
    trainer, pair, _ = _trainer(config_text)
    return trainer.step, pair


def profile(config_text: str, steps: int, top: int) -> dict:
    tf = import_tensorflow()  # as the CLI: without Keras' sklearn and pyplot extras

    step, arguments = _stepper(config_text)
    for _ in range(2):  # the second one timed: a step without the profiler, for comparison
        args = arguments()
        start = time.time()
        float(step(*args)["loss"])
        unprofiled = time.time() - start
    batches = [arguments() for _ in range(steps)]
    logdir = tempfile.mkdtemp(prefix="darts_tf_profile_")
    tf.profiler.experimental.start(logdir)
    start = time.time()
    for args in batches:
        float(step(*args)["loss"])
    wall = time.time() - start
    tf.profiler.experimental.stop()
    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    return {"config": config_text, "xplane": path, **summarize_xplane(path, wall, steps, top),
            "unprofiled_step_s": round(unprofiled, 3), "machine": proc_clock.cpu_model(),
            "load": os.getloadavg()[0]}


def op_counts(config_text: str, top: int) -> dict:
    from trainers.runtime import distribute  # pylint: disable=import-outside-toplevel

    trainer, pair, _ = _trainer(config_text)
    with distribute.graph_optimization(trainer.graph_mode):
        graph = trainer._steps["full"].get_concrete_function(*pair()).graph  # pylint: disable=protected-access
    by_type = collections.Counter(op.type for op in graph.get_operations())
    return {"config": config_text, "ops": sum(by_type.values()),
            "top_types": dict(by_type.most_common(top))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=("profile", "startup", "ops"), required=True)
    parser.add_argument("--config", default="first_order,16",
                        help="ORDER,BATCH[,METHOD]; --what=profile also takes "
                        "retrain[,BATCH] and retrain_recompute[,BATCH]")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps")
    parser.add_argument("--top", type=int, default=15, help="op types listed")
    parser.add_argument("--xplane", help="--what=profile: summarise this saved trace "
                        "(printed by an earlier run) instead of profiling; needs --wall")
    parser.add_argument("--wall", type=float, help="the wall seconds of the traced steps")
    args = parser.parse_args()
    if args.xplane and (args.what != "profile" or args.wall is None):
        parser.error("--xplane goes with --what=profile and --wall (the traced steps' wall "
                     f"seconds). Received: --what={args.what}, --wall={args.wall}")
    if args.what == "startup":
        print(json.dumps(startup(args.config)), flush=True)
    elif args.what == "ops":
        print(json.dumps(op_counts(args.config, args.top)), flush=True)
    else:
        result = (summarize_xplane(args.xplane, args.wall, args.steps, args.top) if args.xplane
                  else profile(args.config, args.steps, args.top))
        for kind, share in result["kinds"].items():
            print(f"{kind:20s} {share:5.1f}%")
        if result["allocator_peak_gb"] is not None:
            print(f"allocator peak {result['allocator_peak_gb']} GB; live then, by layer/op:")
            for label, gb in result["live_at_peak_gb"].items():
                print(f"  {gb:7.3f} GB  {label}")
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
