"""The execution environment of a run: which tf.distribute strategy, which process is the
chief, whether ops are deterministic, and how much graph optimisation a step gets.

Search and retraining both go through `make_strategy` (config field `strategy`:
default | mirrored | multi_worker); who writes what under several workers is
`trainers.runtime.run`'s one write policy, which asks `is_chief` here.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import tensorflow as tf

from configs.base import GRAPH_OPTIMIZATION, STRATEGIES, ConfigError


def trainer_strategy(config, strategy=None) -> tuple[tf.distribute.Strategy, str]:
    """(strategy, graph mode) of a trainer: `strategy` or the default one, whose replicas must
    split `config.batch_size` evenly, and the resolved `config.graph_optimization` ("fast"
    or "full", decided once so that a step does not look at devices)."""
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(f"Invalid config value batch_size={config.batch_size!r}: expected "
                          f"a multiple of the {replicas} replicas.")
    return strategy, resolve_graph_optimization(config.graph_optimization, strategy)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy named `name`; one object per name and process.

    "mirrored" uses every GPU or, without GPUs, every logical CPU device (so two
    logical CPUs give two replicas on a CPU-only machine). "multi_worker" reads the
    cluster from TF_CONFIG. Strategies are cached: two MirroredStrategy objects in
    one process start their collective keys at the same base, and the second one's
    all-reduces then meet the first one's ("Shape mismatch in the collective
    instance 100", TF 2.21).
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; expected one of {STRATEGIES}.")
    if name == "default":
        return tf.distribute.get_strategy()
    return _cached_strategy(name)


@functools.lru_cache(maxsize=None)
def _cached_strategy(name: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def all_reduce(reduce_op, values):
    """`values` (a tensor or a nest of them) reduced across the replicas of the current
    replica context, as `ReplicaContext.all_reduce`; with one replica, `values` as they are.

    One replica's sum or mean is the value itself, but the default replica context's
    all_reduce is an identity under a `tf.custom_gradient`, which in graph mode copies
    every output of the ops that made the values and walks the graph back from them: on
    the search step's weight gradients and batch-norm statistics 1,153 Identity ops, traced
    and then pruned (BENCHMARKS.md, "One traced pass in first order too").
    """
    ctx = tf.distribute.get_replica_context()
    if ctx.num_replicas_in_sync == 1:
        return tf.nest.map_structure(lambda t: t, values)
    return ctx.all_reduce(reduce_op, values)


def worker_name(strategy) -> str | None:
    """"{task_type}_{task_id}" of a non-chief worker; None for the chief (or no cluster)."""
    if is_chief(strategy):
        return None
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}_{resolver.task_id}"


@contextlib.contextmanager
def op_determinism(enabled: bool):
    """Deterministic TensorFlow ops for the duration of a run, when `enabled`.

    The switch is process-wide; it is turned back off afterwards, so that a later run
    in the same process (a KerasTuner trial, a test) is not silently deterministic.
    """
    from tensorflow.python.framework import config as tf_config  # pylint: disable=import-outside-toplevel

    switch = enabled and not tf_config.is_op_determinism_enabled()
    if switch:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if switch:
            tf_config.disable_op_determinism()


def worker_devices(strategy) -> list[str]:
    """The strategy's replica devices; [] for the default strategy, which has none."""
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:
        return []


def uses_gpu(strategy) -> bool:
    """Whether the strategy's replicas run on GPUs (the default strategy: if one is visible)."""
    devices = worker_devices(strategy)
    if not devices:  # the default strategy places ops on the first GPU, if any
        return bool(tf.config.list_logical_devices("GPU"))
    return any("GPU" in d.upper() for d in devices)


def resolve_graph_optimization(mode: str, strategy) -> str:
    """"fast" or "full": "auto" is "fast" on CPUs, "full" when the strategy has a GPU.

    Trainers resolve their mode once, so that a step does not look at devices."""
    if mode not in GRAPH_OPTIMIZATION:
        raise ValueError(f"Unknown graph_optimization {mode!r}; expected one of "
                         f"{GRAPH_OPTIMIZATION}.")
    if mode == "auto":
        return "full" if uses_gpu(strategy) else "fast"
    return mode


@functools.lru_cache(maxsize=None)
def _fast_call_options(config_serialized: bytes, executor_type):
    """The function-call options of `config_serialized` with the "fast" grappler rewrites."""
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2  # pylint: disable=import-outside-toplevel
    from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel

    rc = rewriter_config_pb2.RewriterConfig
    config = config_pb2.ConfigProto.FromString(config_serialized)
    rewrites = config.graph_options.rewrite_options
    rewrites.memory_optimization = rc.NO_MEM_OPT
    rewrites.meta_optimizer_iterations = rc.ONE
    rewrites.disable_tfg_optimizer = True
    for name in ("layout_optimizer", "remapping", "constant_folding", "dependency_optimization",
                 "arithmetic_optimization", "loop_optimization", "implementation_selector",
                 "experimental_conditional_code_motion"):
        setattr(rewrites, name, rc.OFF)
    return context.FunctionCallOptions(executor_type=executor_type, config_proto=config)


@contextlib.contextmanager
def graph_optimization(mode: str, strategy=None):
    """Grappler options for the tf.functions first called in this block (this thread).

    "full" is TensorFlow's default. "fast" runs the graph optimiser once instead of
    twice and skips the passes that cost start-up time without making a CPU step
    faster: the memory optimiser, layout, remapping, constant folding, dependency,
    arithmetic and loop optimisation, the implementation selector and the MLIR (TFG)
    hook (what each one cost is measured in BENCHMARKS.md). "auto"
    (`resolve_graph_optimization`, needs `strategy`) is "fast" on CPUs and "full"
    when the strategy has a GPU (whose layout and fusion passes matter).

    TensorFlow reads these options when a function is first instantiated, so the
    block must hold the first call of the step; every step can run inside it (the
    options are built once and cached).
    """
    if resolve_graph_optimization(mode, strategy) == "full":
        yield
        return
    from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel

    ctx = context.context()
    previous = ctx.function_call_options
    ctx.function_call_options = _fast_call_options(previous.config_proto_serialized,
                                                   previous.executor_type)
    try:
        yield
    finally:
        ctx.function_call_options = previous


@contextlib.contextmanager
def shared_variable_kernels():
    """Variables created eagerly in this block share their handles' kernels.

    TensorFlow makes each variable's handle with a VarHandleOp whose `debug_name` attribute
    is the variable's name, and the eager runtime caches kernels by attributes: every
    variable misses the cache and instantiates a kernel of its own (~0.9 ms each; the
    reference supernet and its optimizers have 1,657 variables: a 4.7 s build took 2.7 s
    without, BENCHMARKS.md). Here the handles get no debug name, so variables of one shape
    and dtype share a kernel. The variables' names, paths, values and checkpoints are the
    same (the name TensorFlow reports is the variable's own, not the handle's debug name);
    only TensorFlow's message for a deleted resource loses the name. Variables made while
    tracing a graph keep theirs. Not thread-safe against other threads creating variables.
    """
    from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel
    from tensorflow.python.ops import gen_resource_variable_ops as gen  # pylint: disable=import-outside-toplevel

    original = gen.var_handle_op
    if getattr(original, "_darts_tf_shared", False):  # nested: already in place
        yield
        return

    def var_handle_op(*args, **kwargs):
        if context.executing_eagerly():
            kwargs["debug_name"] = ""
        return original(*args, **kwargs)

    var_handle_op._darts_tf_shared = True  # pylint: disable=protected-access
    gen.var_handle_op = var_handle_op
    try:
        yield
    finally:
        gen.var_handle_op = original
