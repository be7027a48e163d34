"""Retraining, export and evaluation: artifacts, schedules, optimizer math, resume, errors.

Tiny everywhere (digits, C=4, 3 cells): the point is the plumbing, not accuracy.
Runs that need a fresh process (the CLI, SIGKILL, two logical CPUs, no darts_tf)
use subprocesses.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import ConfigError, RetrainConfig
from configs import retrain as presets
from darts_tf import genotypes
from darts_tf.genotype import genotype_to_nni, load_genotype
from trainers import data, retrain
from trainers.cli import parse_field

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
TINY = presets.digits().replace(init_channels=4, num_cells=3, epochs=2, drop_path_rate=0.2)
TINY_FLAGS = ["--config=digits", "--init_channels=4", "--num_cells=3", "--epochs=2",
              "--drop_path_rate=0.2"]
ARTIFACTS = ("config.json", "genotype.json", "metrics.jsonl", "model.keras", "saved_model",
             "final_metrics.json", "checkpoints", "tensorboard")


def _cli(program, *args, **kwargs):
    """`darts-{program}` with `args`, in its own process (as the console script runs it)."""
    script = f"import sys; from trainers import cli; sys.exit(cli.{program}_main(sys.argv))"
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _finish(process, timeout=240, stderr=False):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return (out, err) if stderr else out


def _weights(workdir):
    return keras.saving.load_model(Path(workdir) / "model.keras").get_weights()


_MIRRORED_SCRIPT = '''
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from configs import retrain as presets
from darts_tf import NetworkCIFAR, load_genotype
from trainers import data, retrain
from trainers.runtime import distribute

# Few batch norms: tracing two replicas' updates dominates this test's time.
LIGHT_TEXT = """Genotype(
    normal=[('sep_conv_3x3', 0), ('skip_connect', 1), ('avg_pool_3x3', 0), ('skip_connect', 2),
            ('max_pool_3x3', 1), ('skip_connect', 3), ('skip_connect', 0), ('avg_pool_3x3', 4)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('avg_pool_3x3', 1),
            ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 1)],
    reduce_concat=[2, 3, 4, 5])"""
LIGHT = load_genotype(LIGHT_TEXT)
x, y = next(iter(data.train_data("digits", batch_size=16, seed=0, epoch=0)))
results = []
# The same global batch of 16 on one device and split over two replicas: the loss is averaged
# over the global batch, gradients are all-reduced and batch norm uses the global batch's
# statistics (darts_tf.ops synchronizes them across replicas), so the updates agree.
for name in ("default", "mirrored"):
    config = presets.digits().replace(init_channels=4, num_cells=3, drop_path_rate=0.0,
                                      batch_size=16, strategy=name, weight_decay=0.1)
    keras.utils.set_random_seed(0)
    model_fn = lambda: NetworkCIFAR(LIGHT, 10, 4, 3, False, 0.0, input_channels=1)
    trainer = retrain.RetrainTrainer(model_fn, config, distribute.make_strategy(name),
                                     input_shape=(8, 8, 1), num_classes=10)
    if results:
        trainer.model.set_weights(results[0][0])
    initial = trainer.model.get_weights()
    ds = trainer.strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, y)))
    for _ in range(2):
        for b in ds:
            loss = float(trainer.train_step(b)["loss"])
    results.append((initial, trainer.model.get_weights(), loss,
                    trainer.strategy.num_replicas_in_sync))
assert results[1][3] == 2, results[1][3]
assert abs(results[0][2] - results[1][2]) < 1e-5, (results[0][2], results[1][2])
moved = 0
for a, b, before in zip(results[0][1], results[1][1], results[0][0]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    moved += not np.allclose(a, before)
assert moved > 20, moved

# A whole run under the mirrored strategy: mirrored checkpoints, uneven test batches
# (40 = 20 + 20 per replica in the last batch), export from mirrored variables.
import sys
config = presets.digits().replace(genotype=LIGHT_TEXT, init_channels=4, num_cells=3, epochs=1,
                                  data_limit=64, batch_size=32, eval_batch_size=80,
                                  strategy="mirrored")
result = retrain.run(config, sys.argv[1])
assert result.global_step == 2 and result.step_traces == 1, result
loaded = tf.saved_model.load(sys.argv[1] + "/saved_model")
assert loaded.serve(x).shape == (16, 10)
print("OK", moved)
'''


class _Background:
    """The runs that need their own process, started together when the module starts.

    Their TensorFlow imports and traces are single-threaded, so on 2 cores they
    overlap with each other and with the in-process tests (about halving this
    file's time). A watcher thread SIGKILLs the second run after its first
    checkpoint and restarts it with the same command.
    """

    def __init__(self, tmp: Path):
        nni = tmp / "epoch_49.json"
        nni.write_text(json.dumps(genotype_to_nni(genotypes.DARTS_V2)))
        self.reference_dir, self.resume_dir = tmp / "reference", tmp / "resume"
        self.reference = _cli("retrain", f"--genotype={nni}",
                              f"--workdir={self.reference_dir}", *TINY_FLAGS)
        self.resume_args = ["--genotype=DARTS_V2", f"--workdir={self.resume_dir}", *TINY_FLAGS,
                            "--checkpoint_every=3"]
        self.killed = _cli("retrain", *self.resume_args)
        self.mirrored = subprocess.Popen(
            [sys.executable, "-c", _MIRRORED_SCRIPT, str(tmp / "mirrored")], cwd=ROOT, env=ENV,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.kill_report, self.resumed = {}, None
        self._watcher = threading.Thread(target=self._kill_and_resume, daemon=True)
        self._watcher.start()

    def _kill_and_resume(self):
        deadline = time.time() + 300
        while not (self.resume_dir / "checkpoints" / "checkpoint").exists():
            if self.killed.poll() is not None or time.time() > deadline:
                self.kill_report["error"] = self.killed.communicate()[1][-3000:]
                return
            time.sleep(0.01)
        self.killed.send_signal(signal.SIGKILL)
        self.killed.wait()
        self.kill_report["finished_before_kill"] = (self.resume_dir / "final_metrics.json").exists()
        self.resumed = _cli("retrain", *self.resume_args)

    def resume_output(self) -> str:
        self._watcher.join(timeout=300)
        assert "error" not in self.kill_report, self.kill_report["error"]
        assert not self.kill_report["finished_before_kill"]
        return _finish(self.resumed, stderr=True)


@pytest.fixture(scope="module", autouse=True)
def background(tmp_path_factory):
    runs = _Background(tmp_path_factory.mktemp("background"))
    yield runs
    for process in (runs.reference, runs.killed, runs.mirrored, runs.resumed):
        if process is not None and process.poll() is None:
            process.kill()


@pytest.fixture(scope="module")
def cli_run(background):
    """darts-retrain on an NNI-format genotype file: 2 tiny epochs on digits."""
    return background.reference_dir, _finish(background.reference)


# --- In-process runs -------------------------------------------------------------------------

def test_schedules_follow_the_reference():
    config = RetrainConfig(epochs=600)
    assert config.learning_rate(0) == pytest.approx(0.025)
    assert config.learning_rate(300) == pytest.approx(0.0125)
    assert config.learning_rate(600) == pytest.approx(0.0, abs=1e-12)
    assert [config.drop_path_prob(e) for e in (0, 300, 599)] == pytest.approx(
        [0.0, 0.1, 0.2 * 599 / 600])
    imagenet = presets.imagenet()
    assert [imagenet.learning_rate(e) for e in (0, 1, 10)] == pytest.approx(
        [0.1, 0.097, 0.1 * 0.97 ** 10])


def test_drop_path_variable_ramps_and_step_traces_once(tmp_path):
    config = TINY.replace(epochs=3, data_limit=64, batch_size=32)
    result = retrain.run(config, str(tmp_path), export=False)  # exports: the CLI run below
    assert [x["drop_path_prob"] for x in result.history] == pytest.approx(
        [0.2 * e / 3 for e in range(3)])
    assert [x["lr"] for x in result.history] == pytest.approx(
        [config.learning_rate(e) for e in range(3)])
    assert result.step_traces == 1 and result.global_step == 6


class TinyLinear(keras.Model):
    """Linear logits and linear auxiliary logits: gradients by hand are easy."""

    def __init__(self):
        super().__init__()
        self.head = keras.layers.Dense(3)
        self.aux = keras.layers.Dense(3)

    def build(self, input_shape):
        self.head.build(input_shape)
        self.aux.build(input_shape)

    def call(self, x, training=None, return_aux=False):
        logits = self.head(x)
        return (logits, self.aux(x)) if return_aux else logits


def _hand_grads(x, y, weights, aux_weight, smoothing):
    """d/dW of mean_i [CE(x W + b) + aux_weight CE(x A + c)] with smoothed targets."""
    target = (1 - smoothing) * np.eye(3)[y] + smoothing / 3
    grads = []
    for (kernel, bias), scale in ((weights[:2], 1.0), (weights[2:], aux_weight)):
        logits = x @ kernel + bias
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        d = scale * (p - target) / len(x)
        grads += [x.T @ d, d.sum(0)]
    return grads


def test_coupled_weight_decay_and_clipping_match_a_hand_computation():
    config = RetrainConfig(batch_size=4, lr=0.1, momentum=0.9, weight_decay=0.01, grad_clip=0.05,
                           auxiliary_weight=0.4, label_smoothing=0.1)
    trainer = retrain.RetrainTrainer(TinyLinear, config, input_shape=(5,), num_classes=3)
    rng = np.random.default_rng(0)
    w = [v.numpy().astype(np.float64) for v in trainer.model.trainable_variables]
    w = [rng.normal(size=v.shape) for v in w]  # nonzero biases too
    for var, value in zip(trainer.model.trainable_variables, w):
        var.assign(value)
    buf = [np.zeros_like(v) for v in w]
    for _ in range(2):  # the second step uses the momentum buffer
        x = rng.normal(size=(4, 5)).astype(np.float32)
        y = rng.integers(0, 3, size=4)
        g = _hand_grads(x.astype(np.float64), y, w, 0.4, 0.1)
        norm = np.sqrt(sum(np.sum(gi ** 2) for gi in g))
        assert norm > 0.05  # clipping is active
        g = [gi * min(1.0, 0.05 / (norm + 1e-6)) for gi in g]
        buf = [0.9 * b + gi + 0.01 * wi for b, gi, wi in zip(buf, g, w)]  # PyTorch SGD
        w = [wi - 0.1 * b for wi, b in zip(w, buf)]
        trainer.train_step((tf.constant(x), tf.constant(y, tf.int32)))
        for var, expected in zip(trainer.model.trainable_variables, w):
            np.testing.assert_allclose(var.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_naming_epoch_and_step_keeping_the_last_good_checkpoint(tmp_path):
    config = TINY.replace(data_limit=96, batch_size=32, checkpoint_every=1)

    def data_fn(epoch):
        ds = data.train_data("digits", batch_size=32, seed=config.seed, epoch=epoch, limit=96)
        if epoch == 1:  # the third batch of the second epoch is poisoned
            ds = ds.enumerate().map(lambda i, b: (
                tf.where(i == 2, tf.fill(tf.shape(b[0]), np.nan), b[0]), b[1]))
        return ds

    with pytest.raises(retrain.DivergedError, match=r"epoch 1 step 2 \(global step 5\)"):
        retrain.run(config, str(tmp_path), data_fn=data_fn)
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert latest.endswith("-5")  # 3 steps of epoch 0 + 2 good steps of epoch 1
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name
    assert not (tmp_path / "final_metrics.json").exists()


@pytest.mark.parametrize("field, value", [
    ("batch_size", 0), ("lr", -1.0), ("lr", float("nan")), ("drop_path_rate", 1.0),
    ("strategy", "tpu"), ("network", "resnet"), ("num_cells", 2), ("init_channels", 5),
    ("lr_schedule", "linear"), ("cutout", -1), ("auxiliary", "yes"), ("genotype", ""),
    ("recompute", 1),
])
def test_invalid_config_values_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=f"{field}="):
        RetrainConfig(**{field: value})


def test_recompute_reaches_the_network_and_may_change_on_resumption(tmp_path):
    """--recompute (memory for time) builds the network with recomputing convs; it changes
    no value, so a run may be resumed with it switched."""
    from trainers.retrain import loop  # pylint: disable=import-outside-toplevel
    setup = loop.prepare(TINY.replace(recompute=True), str(tmp_path))
    model = setup.model_fn()
    convs = [op for cell in model.cells for op in cell.ops if hasattr(op, "recompute")]
    assert model.recompute is True and convs and all(op.recompute for op in convs)
    assert not loop.prepare(TINY, str(tmp_path)).model_fn().recompute  # the same workdir
    assert parse_field(RetrainConfig, "recompute", "true") is True


def test_invalid_runs_are_refused_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="genotype='NOT_A_GENOTYPE'"):
        retrain.run(TINY.replace(genotype="NOT_A_GENOTYPE"), str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="auxiliary=True"):  # digits maps are too small
        retrain.run(TINY.replace(auxiliary=True), str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text(TINY.to_json())
    with pytest.raises(ConfigError, match=r"different \['lr'\]"):
        retrain.run(TINY.replace(lr=0.1), str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="Unknown config field"):
        TINY.replace(learning_rate=0.1)
    assert parse_field(RetrainConfig, "cutout", "none") is None and parse_field(RetrainConfig, "auxiliary", "false") is False
    with pytest.raises(ConfigError, match="data_limit='abc'"):
        parse_field(RetrainConfig, "data_limit", "abc")
    process = _cli("retrain", "--config=digits", f"--workdir={tmp_path / 'd'}",
                   "--batch_size=0")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert err.strip().splitlines() == [
        "darts-retrain: Invalid config value batch_size=0: expected a positive integer."]


def test_imagenet_preset_runs_a_step_on_mock_imagenet(tmp_path):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    config = presets.imagenet().replace(init_channels=8, num_cells=3, batch_size=2, epochs=1,
                                        steps_per_epoch=1, eval_batch_size=4)
    with tfds.testing.mock_data(num_examples=4):
        result = retrain.run(config, str(tmp_path))
    assert result.global_step == 1 and np.isfinite(result.history[0]["train_loss"])
    assert result.history[0]["lr"] == pytest.approx(0.1)
    model = keras.saving.load_model(tmp_path / "model.keras")
    assert type(model).__name__ == "NetworkImageNet" and model.auxiliary
    assert result.final_metrics["params_with_auxiliary"] > result.final_metrics["params"]


# --- Runs in their own processes (started by `background`) ---------------------------------

def test_cli_on_nni_genotype_writes_every_artifact(cli_run):
    workdir, out = cli_run
    for name in ARTIFACTS:
        assert (workdir / name).exists(), name
    assert load_genotype(str(workdir / "genotype.json")) == genotypes.DARTS_V2
    config = RetrainConfig.from_json((workdir / "config.json").read_text())
    assert (config.init_channels, config.num_cells, config.epochs) == (4, 3, 2)
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    assert lines[1]["train_loss"] < lines[0]["train_loss"]
    # Drop path is ramped per epoch: rate * epoch / epochs, read back from the model's variable.
    assert [x["drop_path_prob"] for x in lines] == pytest.approx([0.0, 0.1])
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert json.loads(out.strip().splitlines()[-1]) == final
    assert final["epochs"] == 2 and final["test_top1"] == lines[-1]["test_top1"]
    assert final["params"] == final["params_with_auxiliary"] > 0  # digits: no auxiliary head
    assert any(p.name.startswith("events") for p in (workdir / "tensorboard").iterdir())


def test_evaluate_without_darts_tf_matches_the_model_in_process(cli_run, tmp_path):
    workdir, _ = cli_run
    output = tmp_path / "eval.json"
    script = textwrap.dedent(f"""
        import sys
        sys.modules["darts_tf"] = None  # importing darts_tf now fails
        sys.argv = ["darts-evaluate", "--saved_model={workdir / 'saved_model'}",
                    "--dataset=digits", "--batch_size=100", "--output={output}"]
        from trainers import cli
        sys.exit(cli.evaluate_main())
    """)
    out = _finish(subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=ENV,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    result = json.loads(output.read_text())
    assert json.loads(out.strip().splitlines()[-1]) == result
    model = keras.saving.load_model(workdir / "model.keras")
    hits = sum(int(np.sum(np.argmax(model(x, training=False), -1) == y.numpy()))
               for x, y in data.eval_data("digits", batch_size=100))
    assert result["examples"] == 360
    assert result["top1"] == pytest.approx(hits / 360)
    assert result["params"] == model.count_params(include_auxiliary=False)
    assert result["params_auxiliary"] == 0 and result["latency_ms_per_batch"] > 0


def test_resume_after_sigkill_gives_the_same_weights(background, cli_run):
    reference, _ = cli_run
    out, err = background.resume_output()
    resumed = [line for line in err.splitlines() if line.startswith("Resumed from")]
    assert resumed and "global step 0)" not in resumed[0]
    for a, b in zip(_weights(background.resume_dir), _weights(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    lines = (background.resume_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]


def test_one_mirrored_step_on_two_logical_cpus_equals_the_default_update(background):
    assert _finish(background.mirrored).splitlines()[-1].startswith("OK")
