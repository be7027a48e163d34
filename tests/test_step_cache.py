"""The step cache: a loaded step gives what the traced one gives, and the key sees changes.

Trainers of the tiny supernet (tests/test_search.py) on random 8x8 batches. Both trainers of
a pair start from the same weights (the same seed before each build); the second one loads
the first one's step from the cache directory instead of tracing it. Its results must be
bitwise those of the traced step: the loaded function is the same graph.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import darts_tf
from configs import ConfigError, SearchConfig
from trainers import search
from trainers.runtime import step_cache

ROOT = Path(__file__).resolve().parents[1]
CONFIG = SearchConfig(dataset="digits", batch_size=8, init_channels=4, num_cells=3,
                      num_nodes=1, seed=3, monitor=False)
PRIMITIVES = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")


def _trainer(config):
    tf.keras.utils.set_random_seed(config.seed)
    return search.SearchTrainer(
        lambda: darts_tf.Supernet(num_classes=10, init_channels=4, num_cells=3, num_nodes=1,
                                  input_channels=1, primitives=PRIMITIVES,
                                  **config.supernet_options()),
        config, input_shape=(8, 8, 1))


def _batches(steps, batch=8):
    rng = np.random.default_rng(0)
    return [tuple((tf.constant(rng.normal(size=(batch, 8, 8, 1)).astype(np.float32)),
                   tf.constant(rng.integers(0, 10, size=batch).astype(np.int32)))
                  for _ in range(2)) for _ in range(steps)]


def _run(trainer, batches):
    metrics = [{k: float(v) for k, v in trainer.step(*pair).items()} for pair in batches]
    return metrics, [v.numpy() for v in trainer._all_variables()]  # pylint: disable=protected-access


@pytest.mark.parametrize("changes", [{}, {"unrolled": True}], ids=["first_order", "second_order"])
def test_loaded_step_gives_the_traced_steps_results(tmp_path, changes):
    config = CONFIG.replace(step_cache=str(tmp_path), **changes)
    batches = _batches(2)
    traced = _trainer(config)
    traced_metrics, traced_values = _run(traced, batches)
    assert (traced.step_traces, traced.step_loads, traced.step_cache.saves) == (1, 0, 1)
    assert len(list(tmp_path.glob("search_full-*.step"))) == 1

    loaded = _trainer(config)
    loaded_metrics, loaded_values = _run(loaded, batches)
    assert (loaded.step_traces, loaded.step_loads) == (0, 1)
    assert loaded_metrics == traced_metrics
    assert len(loaded_values) == len(traced_values) > 100
    for a, b in zip(loaded_values, traced_values):
        np.testing.assert_array_equal(a, b)
    # The step moved the weights and alphas: the comparison is not of two idle trainers.
    fresh = _trainer(config.replace(step_cache="off"))
    moved = [not np.array_equal(a, v.numpy())
             for a, v in zip(traced_values, fresh._all_variables())]  # pylint: disable=protected-access
    assert sum(moved) > 50


def test_key_changes_with_the_graph_and_not_with_the_loop(tmp_path):
    config = CONFIG.replace(step_cache=str(tmp_path))
    pair = _batches(1)[0]
    _trainer(config).step(*pair)
    assert len(list(tmp_path.glob("*.step"))) == 1
    # Only the loop reads these: the same file serves.
    same = _trainer(config.replace(log_every=3, checkpoint_every=7))
    same.step(*pair)
    assert same.step_loads == 1
    # The graph depends on these: each traces and adds a file.
    for changes in ({"alpha_weight_decay": 0.0}, {"w_grad_clip": 0.0}):
        other = _trainer(config.replace(**changes))
        other.step(*pair)
        assert (other.step_traces, other.step_loads) == (1, 0), changes
    # Another batch size is another signature.
    other = _trainer(config)
    other.step(*_batches(1, batch=4)[0])
    assert (other.step_traces, other.step_loads) == (1, 0)
    assert len(list(tmp_path.glob("*.step"))) == 4


def test_unreadable_file_is_reported_and_traced_over(tmp_path, caplog):
    config = CONFIG.replace(step_cache=str(tmp_path))
    pair = _batches(1)[0]
    expected = {k: float(v) for k, v in _trainer(config).step(*pair).items()}
    path, = tmp_path.glob("*.step")
    path.write_bytes(path.read_bytes()[:5000])  # cut short: the library does not parse
    with caplog.at_level("WARNING", logger="trainers.runtime.step_cache"):
        again = _trainer(config)
        got = {k: float(v) for k, v in again.step(*pair).items()}
    assert got == expected
    assert (again.step_traces, again.step_loads) == (1, 0)
    assert any(str(path) in r.getMessage() and "tracing the step again" in r.getMessage()
               for r in caplog.records)
    assert _trainer(config).step_loads == 0  # rewritten whole by the retrace ...
    third = _trainer(config)
    third.step(*pair)
    assert third.step_loads == 1  # ... and loads again


def test_auto_directory_and_who_is_cached(tmp_path, monkeypatch):
    model = darts_tf.Supernet(num_classes=10, init_channels=4, num_cells=3, num_nodes=1,
                              input_channels=1, primitives=PRIMITIVES)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(step_cache.ENV, raising=False)
    assert step_cache.resolve_directory("auto", model) == tmp_path / "xdg" / "darts_tf" / "steps"
    monkeypatch.setenv(step_cache.ENV, str(tmp_path / "env"))
    assert step_cache.resolve_directory("auto", model) == tmp_path / "env"
    monkeypatch.setenv(step_cache.ENV, "off")
    assert step_cache.resolve_directory("auto", model) is None
    assert step_cache.resolve_directory(str(tmp_path / "d"), model) == tmp_path / "d"
    assert step_cache.resolve_directory("off", model) is None
    # A model with a layer of its own (a user's search space) only with a directory.
    monkeypatch.delenv(step_cache.ENV)

    class Mine(tf.keras.layers.Layer):
        pass

    model.extra = Mine()
    assert step_cache.resolve_directory("auto", model) is None
    assert step_cache.resolve_directory(str(tmp_path / "d"), model) == tmp_path / "d"
    with pytest.raises(ConfigError, match="step_cache=''"):
        CONFIG.replace(step_cache="")


def test_several_replicas_are_not_cached(tmp_path, mirrored):
    config = CONFIG.replace(step_cache=str(tmp_path))
    with mirrored.scope():
        tf.keras.utils.set_random_seed(config.seed)
        trainer = search.SearchTrainer(
            lambda: darts_tf.Supernet(num_classes=10, init_channels=4, num_cells=3, num_nodes=1,
                                      input_channels=1, primitives=PRIMITIVES),
            config, mirrored, input_shape=(8, 8, 1))
    assert trainer.step_cache.directory is None
    assert trainer._callers["full"] is trainer._steps["full"]  # pylint: disable=protected-access


def test_one_device_strategy_is_cached(tmp_path):
    config = CONFIG.replace(step_cache=str(tmp_path))
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    pair = _batches(1)[0]
    runs = []
    for _ in range(2):
        tf.keras.utils.set_random_seed(config.seed)
        trainer = search.SearchTrainer(
            lambda: darts_tf.Supernet(num_classes=10, init_channels=4, num_cells=3, num_nodes=1,
                                      input_channels=1, primitives=PRIMITIVES),
            config, strategy, input_shape=(8, 8, 1))
        metrics = {k: float(v) for k, v in trainer.step(*pair).items()}
        runs.append((trainer.step_traces, trainer.step_loads, metrics))
    assert runs[0][:2] == (1, 0) and runs[1][:2] == (0, 1)
    assert runs[1][2] == runs[0][2]


_CHILD = """
import json, sys
sys.path.insert(0, {root!r})
import numpy as np, tensorflow as tf
import darts_tf
from configs import SearchConfig
from trainers import search
config = SearchConfig.from_json({config!r})
tf.keras.utils.set_random_seed(config.seed)
trainer = search.SearchTrainer(
    lambda: darts_tf.Supernet(num_classes=10, init_channels=4, num_cells=3, num_nodes=1,
                              input_channels=1, primitives={primitives!r}),
    config, input_shape=(8, 8, 1))
rng = np.random.default_rng(0)
pair = [(tf.constant(rng.normal(size=(8, 8, 8, 1)).astype(np.float32)),
         tf.constant(rng.integers(0, 10, size=8).astype(np.int32))) for _ in range(2)]
metrics = {{k: float(v) for k, v in trainer.step(*pair).items()}}
print(json.dumps({{"metrics": metrics, "traces": trainer.step_traces, "loads": trainer.step_loads,
                  "alpha": trainer.model.alpha_normal.numpy().tolist()}}))
"""


def test_a_second_process_loads_the_first_ones_step(tmp_path):
    """The cache's purpose: across processes (the functions' names are those of the first)."""
    config = CONFIG.replace(step_cache=str(tmp_path / "cache"))
    script = _CHILD.format(root=str(ROOT), config=config.to_json(), primitives=PRIMITIVES)
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=300, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert (runs[0]["traces"], runs[0]["loads"]) == (1, 0)
    assert (runs[1]["traces"], runs[1]["loads"]) == (0, 1)
    assert runs[1]["metrics"] == runs[0]["metrics"]
    assert runs[1]["alpha"] == runs[0]["alpha"]


def test_retraining_step_with_drop_path_loads_with_the_same_results(tmp_path):
    """The retraining step draws drop path's masks inside the graph: the loaded step draws
    the same ones (its random ops carry the traced seeds)."""
    from configs import retrain as retrain_presets  # pylint: disable=import-outside-toplevel
    from darts_tf.genotypes import DARTS_V2  # pylint: disable=import-outside-toplevel
    from darts_tf.networks import NetworkCIFAR  # pylint: disable=import-outside-toplevel
    from trainers import retrain  # pylint: disable=import-outside-toplevel

    config = retrain_presets.digits().replace(init_channels=4, num_cells=3, batch_size=4,
                                              drop_path_rate=0.3, auxiliary=True,
                                              step_cache=str(tmp_path))
    rng = np.random.default_rng(1)
    # 32x32: the auxiliary head (at 2/3 of the depth) pools an 8x8 map.
    batches = [(tf.constant(rng.normal(size=(4, 32, 32, 1)).astype(np.float32)),
                tf.constant(rng.integers(0, 10, size=4).astype(np.int32))) for _ in range(2)]
    runs = []
    for _ in range(2):
        tf.keras.utils.set_random_seed(0)
        trainer = retrain.RetrainTrainer(
            lambda: NetworkCIFAR(DARTS_V2, 10, 4, 3, True, 0.3, input_channels=1), config,
            input_shape=(32, 32, 1), num_classes=10)
        _, drop = trainer.set_epoch(config.epochs - 1)  # masks that matter
        assert drop > 0.25
        metrics = [{k: float(v) for k, v in trainer.train_step(b).items()} for b in batches]
        runs.append((trainer.step_traces, trainer.step_loads, metrics,
                     [v.numpy() for v in trainer.model.variables]))
    assert runs[0][:2] == (1, 0) and runs[1][:2] == (0, 1)
    assert runs[1][2] == runs[0][2]
    for a, b in zip(runs[1][3], runs[0][3]):
        np.testing.assert_array_equal(a, b)


def test_collapse_monitor_product_is_cached_with_its_batch(tmp_path):
    """The monitor's Hessian-vector product (nested tapes, the longest trace) is cached with
    its fixed batch among the captured variables; loaded, it gives the same eigenvalue."""
    from trainers.search.monitor import CollapseMonitor  # pylint: disable=import-outside-toplevel

    config = CONFIG.replace(step_cache=str(tmp_path), monitor=True, monitor_iterations=2)
    rng = np.random.default_rng(2)
    batch = (rng.normal(size=(8, 8, 8, 1)).astype(np.float32),
             rng.integers(0, 10, size=8).astype(np.int32))
    runs = []
    for _ in range(2):
        trainer = _trainer(config)
        monitor = CollapseMonitor(trainer, batch)
        values = monitor.power_iteration()
        runs.append((monitor.traces, trainer.step_cache.loads, values))
    assert runs[0][:2] == (1, 0) and runs[1][:2] == (0, 1)
    assert runs[1][2] == runs[0][2] and runs[0][2][0] != 0.0
    assert len(list(tmp_path.glob("monitor_hvp-*.step"))) == 1
    # Another fixed batch (here: of another size) is another key.
    trainer = _trainer(config)
    monitor = CollapseMonitor(trainer, (batch[0][:4], batch[1][:4]), chunk=4)
    monitor.power_iteration(1)
    assert (monitor.traces, trainer.step_cache.loads) == (1, 0)
