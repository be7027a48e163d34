"""Traced step functions kept across processes, so that a run does not trace its step again.

Tracing the search step (Python -> graph, ~30,000 ops) is about half of a run's start-up
(BENCHMARKS.md, "Where start-up goes"), and it gives the same graph every time for the same
code, model, config and batch shapes. `StepCache` writes the traced function (its
FunctionDefs, and which of the trainer's variables it captures) to a file the first time,
and a later process with the same key loads it (~0.2 s) and calls it with its own
variables, instead of tracing. The loaded function is the traced one, byte for byte: a run
gives the same numbers with or without the cache (tests/test_step_cache.py).

The key (a SHA-256) covers everything that shapes the graph: the TensorFlow, Keras and
Python versions, the sources of darts-tf (darts_tf/, trainers/, configs/) and of every
module that defines one of the model's layers, the config (all fields but the step cache
itself and how often the loop logs and saves), the model's class, config and variables
(paths, shapes, dtypes), the other variables the step may read, the strategy and devices,
the kernels chosen at trace time (oneDNN, dilated depthwise), op determinism, the dtype
policy, the function's name and the batch's shapes and dtypes. Anything else changes the
key only through those: a model whose graph depends on code outside the modules named
above (a helper module of a user's layers) needs `step_cache="off"` or a new directory
after that code changes.

Config field `step_cache` (search and retraining):
- "auto" (default): `$DARTS_TF_STEP_CACHE` if set ("off" turns it off), else
  `$XDG_CACHE_HOME/darts_tf/steps` (`~/.cache/darts_tf/steps`); only for models built from
  darts-tf's own layers (a user-defined search space is keyed by its layers' modules, but
  not by the helpers they call: give it a directory to opt in).
- "off": trace in every process, as TensorFlow does.
- a directory: cache there, for any model.

Only one-device strategies are cached (the default strategy, OneDeviceStrategy): a
mirrored or multi-worker step holds collective keys and per-device copies that belong to
its process. A cache file that cannot be read is reported and traced over; the directory
keeps the `MAX_ENTRIES` most recently used files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf
from tensorflow.core.framework import function_pb2

from trainers.runtime import distribute

FORMAT = 1
MAX_ENTRIES = 32
MAGIC = b"darts-tf step cache\n"
ENV = "DARTS_TF_STEP_CACHE"
# Config fields that only the loop reads (how often it logs and saves), not the step.
_NOT_KEYED = frozenset({"step_cache", "log_every", "checkpoint_every"})
_OWN_PACKAGES = ("darts_tf", "trainers", "configs")

logger = logging.getLogger(__name__)


def resolve_directory(setting: str, model) -> Path | None:
    """The cache directory for config value `setting` ("auto", "off" or a directory) and
    `model`, or None when nothing is cached (see the module docstring)."""
    if setting == "off":
        return None
    if setting != "auto":
        return Path(setting).expanduser()
    env = os.environ.get(ENV, "").strip()
    if env == "off":
        return None
    if not _own_layers_only(model):
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "darts_tf" / "steps"


def _own_layers_only(model) -> bool:
    modules = {type(layer).__module__ for layer in _layers(model)}
    return all(m.split(".")[0] in (*_OWN_PACKAGES, "keras") for m in modules)


def _layers(model):
    return list(model._flatten_layers(include_self=True))  # pylint: disable=protected-access


class StepCache:
    """Traced functions of one trainer, kept in `directory` (None: a pass-through).

    Args:
      directory: where the files go (`resolve_directory`); None caches nothing.
      config: the run's config (a dataclass); all fields but `step_cache`, `log_every` and
        `checkpoint_every` enter the key.
      model: the trainer's Keras model.
      variables: every tf.Variable a cached function may read or write, in an order that
        the same code, model and config reproduce (the model's, then the optimizers'...).
      strategy: the trainer's strategy; other than a one-device one, nothing is cached.
    """

    def __init__(self, directory, *, config, model, variables, strategy):
        self.directory = None if directory is None else Path(directory)
        self.loads = 0  # functions loaded from the cache in this process
        self.saves = 0
        self.variables = list(variables)
        self._model_name = model.name
        if self.directory is not None and not _one_device(strategy):
            logger.info("Step cache off: %s with %d replica(s) (only one-device strategies "
                        "are cached).", type(strategy).__name__, strategy.num_replicas_in_sync)
            self.directory = None
        self._key = None if self.directory is None else _base_key(config, model, self.variables,
                                                                   strategy)

    def wrap(self, name: str, function, variables=()):
        """`function` (a tf.function of tensors) read from and written to the cache.

        `variables`: more variables it may capture, besides the trainer's (e.g. the collapse
        monitor's fixed batch); their paths, shapes and dtypes join the key."""
        if self.directory is None:
            return function
        return _CachedFunction(self, name, function, self.variables + list(variables))

    def _name(self, variable) -> str:
        return _name(variable, self._model_name)

    # Files ------------------------------------------------------------------------------------

    def digest(self, name: str, signature, variables) -> str:
        extra = [[self._name(v), list(v.shape), _dtype(v)]
                 for v in variables[len(self.variables):]]
        text = json.dumps({**self._key, "function": name, "signature": signature,
                           "extra_variables": extra}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, name: str, digest: str) -> Path:
        return self.directory / f"{name}-{digest[:24]}.step"

    def save(self, path: Path, concrete, digest: str, variables) -> bool:
        """Writes `concrete`'s functions; False (and nothing written) when it captures
        something other than `variables`."""
        index = {id(_handle(v)): i for i, v in enumerate(variables)}
        captures = []
        for tensor in concrete.captured_inputs:
            if id(tensor) not in index:
                logger.info("Step cache: %s not cached, it captures %s (not one of the "
                            "trainer's variables).", path.name, getattr(tensor, "name", tensor))
                return False
            captures.append(index[id(tensor)])
        outputs = concrete.structured_outputs
        flat_outputs = tf.nest.flatten(outputs, expand_composites=True)
        if len(flat_outputs) != len(concrete.outputs) or not all(
                isinstance(t, tf.Tensor) for t in flat_outputs):
            logger.info("Step cache: %s not cached (outputs other than tensors).", path.name)
            return False
        library = function_pb2.FunctionDefLibrary()
        library.function.extend(concrete.graph.as_graph_def().library.function)
        library.function.append(concrete.function_def)
        prefix = f"darts_tf_cached_{digest[:16]}_"
        entry = _rename(library, prefix)[concrete.function_def.signature.name]
        header = {"format": FORMAT, "digest": digest, "function": entry,
                  "captures": captures,
                  "capture_names": [self._name(variables[i]) for i in captures],
                  "outputs": _structure(outputs), "num_outputs": len(flat_outputs),
                  "key": self._key}
        _write_atomically(path, header, library.SerializeToString())
        _prune(self.directory)
        self.saves += 1
        return True

    def load(self, path: Path, digest: str, variables):
        """The function in `path` bound to `variables`; None if there is no such file.
        Raises ValueError for a file that is not a cache entry of this key."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        header, library = _parse(path, data)
        if header.get("digest") != digest or header.get("format") != FORMAT:
            raise ValueError(f"{path}: written for another key or format")
        names = [self._name(v) for v in variables]
        captures = header["captures"]
        if [names[i] if 0 <= i < len(names) else None for i in captures] != \
                header["capture_names"]:
            raise ValueError(f"{path}: its captured variables are not this trainer's")
        from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel

        ctx = context.context()
        for fdef in library.function:
            if not ctx.has_function(fdef.signature.name):
                ctx.add_function_def(fdef)
        os.utime(path)  # most recently used: kept by _prune
        self.loads += 1
        return _Loaded(ctx, header["function"].encode(), [variables[i] for i in captures],
                       _unstructure(header["outputs"]), header["num_outputs"])


def loads_of(function) -> int:
    """How many times `function` (what `StepCache.wrap` returned) was loaded, not traced."""
    return function.loads if isinstance(function, _CachedFunction) else 0


class _Loaded:
    """A function from the cache, called as the tf.function it replaces."""

    def __init__(self, ctx, name: bytes, variables, outputs, num_outputs):
        self._ctx, self._name = ctx, name
        # A variable's handle never changes: looked up once, not per step (1,657 of them).
        self._handles = [_handle(v) for v in variables]
        self._outputs, self._num_outputs = outputs, num_outputs

    def __call__(self, flat_args):
        flat = self._ctx.call_function(self._name, list(flat_args) + self._handles,
                                       self._num_outputs)
        return tf.nest.pack_sequence_as(self._outputs, flat or [])


class _CachedFunction:
    """Calls go to the loaded function for each batch signature seen, else to `function`."""

    def __init__(self, cache: StepCache, name: str, function, variables):
        self._cache, self._name, self._function = cache, name, function
        self._variables = variables
        self._by_signature = {}
        self.loads = 0  # signatures of this function loaded from the cache

    def __call__(self, *args):
        flat = tf.nest.flatten(args, expand_composites=True)
        if not all(isinstance(t, tf.Tensor) and not isinstance(t, tf.Variable) for t in flat):
            return self._function(*args)
        signature = [_structure(args), [[list(t.shape), t.dtype.name] for t in flat]]
        key = json.dumps(signature)
        if key not in self._by_signature:
            self._by_signature[key] = self._load_or_trace(args, signature)
        loaded = self._by_signature[key]
        return self._function(*args) if loaded is None else loaded(flat)

    def _load_or_trace(self, args, signature):
        digest = self._cache.digest(self._name, signature, self._variables)
        path = self._cache.path(self._name, digest)
        start = time.time()
        try:
            loaded = self._cache.load(path, digest, self._variables)
        except (ValueError, OSError, KeyError, TypeError, tf.errors.OpError) as err:
            logger.warning("Step cache: ignoring %s (%s); tracing the step again.", path, err)
            loaded = None
        if loaded is not None:
            self.loads += 1
            logger.info("Step %s loaded from the cache (%s, %.1f s).", self._name, path,
                        time.time() - start)
            return loaded
        concrete = self._function.get_concrete_function(*args)
        try:
            if self._cache.save(path, concrete, digest, self._variables):
                logger.info("Step %s traced and cached in %s.", self._name, path)
        except OSError as err:
            logger.warning("Step cache: could not write %s (%s).", path, err)
        return None


# The key ----------------------------------------------------------------------------------------


def _base_key(config, model, variables, strategy) -> dict:
    from tensorflow.python.framework import config as tf_config  # pylint: disable=import-outside-toplevel

    from darts_tf import kernels  # pylint: disable=import-outside-toplevel

    config_fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_KEYED}
    model_variables = [[_name(v, model.name), list(v.shape), _dtype(v), bool(v.trainable)]
                       for v in model.variables]
    try:
        model_config = {k: v for k, v in model.get_config().items() if k != "name"}
    except NotImplementedError:
        model_config = None
    return {
        "format": FORMAT,
        "versions": [tf.__version__, keras.__version__, sys.version, platform.machine()],
        "sources": _sources_digest(model),
        "config": config_fields,
        "model": [type(model).__module__, type(model).__qualname__, model_config,
                  model_variables],
        "variables": [[_name(v, model.name), list(v.shape), _dtype(v)] for v in variables],
        "strategy": [type(strategy).__name__, strategy.num_replicas_in_sync,
                     distribute.worker_devices(strategy)],
        "runtime": {"onednn": kernels.onednn_enabled(),
                    "native_dilated_depthwise": kernels.native_dilated_depthwise(),
                    "devices": [d.name for d in tf.config.list_logical_devices()],
                    "op_determinism": tf_config.is_op_determinism_enabled(),
                    "dtype_policy": keras.config.dtype_policy().name},
    }


def _one_device(strategy) -> bool:
    """The default strategy or a OneDeviceStrategy: no collectives, whose keys belong to the
    process, in the graph (a one-replica MirroredStrategy or multi-worker one has them)."""
    if isinstance(strategy, tf.distribute.OneDeviceStrategy):
        return True
    return not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy()


def _sources_digest(model) -> str:
    """SHA-256 of darts-tf's sources and of the modules defining the model's layers."""
    root = Path(__file__).resolve().parents[2]
    files = set()
    for package in _OWN_PACKAGES:
        files.update((root / package).rglob("*.py"))
    for layer in _layers(model):
        module = sys.modules.get(type(layer).__module__)
        source = getattr(module, "__file__", None)
        if source and not type(layer).__module__.startswith("keras"):
            files.add(Path(source).resolve())
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root) if path.is_relative_to(root) else path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _name(variable, model_name: str) -> str:
    """The variable's path (or name) with the model's name as "<model>": Keras numbers the
    models of a process (supernet, supernet_1, ...), and the key must not see that."""
    return (getattr(variable, "path", None) or variable.name).replace(model_name, "<model>")


def _dtype(variable) -> str:
    return tf.as_dtype(variable.dtype).name


def _handle(variable):
    variable = variable.value if isinstance(variable, keras.Variable) else variable
    return variable.handle


def _structure(value):
    """A JSON form of a nest of tensors (leaves None), for `_unstructure`."""
    if isinstance(value, dict):
        return {"dict": {str(k): _structure(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"list" if isinstance(value, list) else "tuple": [_structure(v) for v in value]}
    return None


def _unstructure(value):
    if value is None:
        return None
    (kind, items), = value.items()
    if kind == "dict":
        return {k: _unstructure(v) for k, v in items.items()}
    items = [_unstructure(v) for v in items]
    return items if kind == "list" else tuple(items)


# The file ---------------------------------------------------------------------------------------


def _rename(library, prefix: str) -> dict:
    """Gives every function in `library` the name prefix + name (calls included), so that a
    loaded function never meets one of this process's own under the same name."""
    names = {f.signature.name: prefix + f.signature.name for f in library.function}
    del library.gradient[:]

    def attr(value):
        if value.HasField("func"):
            value.func.name = names.get(value.func.name, value.func.name)
            for inner in value.func.attr.values():
                attr(inner)
        if value.HasField("list"):
            for func in value.list.func:
                func.name = names.get(func.name, func.name)

    for fdef in library.function:
        fdef.signature.name = names[fdef.signature.name]
        for value in fdef.attr.values():
            attr(value)
        for node in fdef.node_def:
            node.op = names.get(node.op, node.op)
            for value in node.attr.values():
                attr(value)
    return names


def _write_atomically(path: Path, header: dict, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = json.dumps(header, default=str).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + len(head).to_bytes(8, "little") + head + body)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from the user's group
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse(path: Path, data: bytes):
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise ValueError(f"{path}: not a darts-tf step cache file")
    start = len(MAGIC) + 8
    size = int.from_bytes(data[len(MAGIC):start], "little")
    try:
        header = json.loads(data[start:start + size])
        library = function_pb2.FunctionDefLibrary.FromString(data[start + size:])
    except Exception as err:  # pylint: disable=broad-except  (json or protobuf decode errors)
        raise ValueError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    return header, library


def _prune(directory: Path) -> None:
    """Keeps the MAX_ENTRIES most recently used files (another process may prune at once)."""
    entries = []
    for path in directory.glob("*.step"):
        try:
            entries.append((path.stat().st_mtime, path))
        except FileNotFoundError:
            continue
    for _, stale in sorted(entries, reverse=True)[MAX_ENTRIES:]:
        stale.unlink(missing_ok=True)
