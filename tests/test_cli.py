"""The command line (trainers/cli.py): every anticipated failure is one line on stderr and
exit status 2, the shared default preset, the pipeline's overrides, quiet TensorFlow start-up.

The programs run in this process (`cli.X_main(argv)` is what the console scripts call),
except the start-up tests, which need a fresh TensorFlow.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import SearchConfig
from configs import retrain as retrain_presets
from configs import search as search_presets
from trainers import cli, pipeline
from trainers.runtime import run as run_lib

ROOT = Path(__file__).resolve().parents[1]
TINY_SEARCH = ["--init_channels=4", "--num_cells=3", "--num_nodes=1", "--batch_size=16",
               "--epochs=1", "--steps_per_epoch=2"]
TINY_RETRAIN = ["--init_channels=4", "--num_cells=3", "--batch_size=16", "--epochs=1",
                "--steps_per_epoch=2"]
MAINS = {"search": cli.search_main, "retrain": cli.retrain_main,
         "evaluate": cli.evaluate_main, "pipeline": cli.pipeline_main}


def _call(capsys, program, *args):
    """(exit status, stdout, stderr lines) of `darts-{program} args`."""
    status = MAINS[program]([f"darts-{program}", *args])
    out, err = capsys.readouterr()
    return status, out, [line for line in err.splitlines() if line.strip()]


def _fails_in_one_line(capsys, program, *args, expect: str):
    """Exit status 2, nothing on stdout, and the failure as the one last line on stderr
    (progress lines may come before it; no traceback)."""
    status, out, err = _call(capsys, program, *args)
    assert status == 2 and out == ""
    assert [line for line in err if line.startswith(f"darts-{program}: ")] == err[-1:], err
    assert not any("Traceback" in line or line.lstrip().startswith('File "') for line in err)
    assert expect in err[-1], err[-1]
    return err[-1]


def _other_run(workdir: Path, config) -> Path:
    workdir.mkdir(parents=True)
    run_lib.write_json(workdir / "config.json", config.to_dict())
    return workdir


# One line for each anticipated failure ----------------------------------------------------


@pytest.mark.parametrize("program, args, expect", [
    ("search", ["--batch_size=0"], "Invalid config value batch_size=0"),
    ("search", ["--w_lr=abc"], "w_lr='abc'"),
    ("retrain", ["--lr_schedule=linear"], "lr_schedule='linear'"),
    ("pipeline", ["--search_set=epochs=0"], "epochs=0"),
    ("pipeline", ["--search_set=epochs"], "Expected field=value"),
    ("pipeline", ["--retrain_set=no_such_field=1"], "Unknown config field 'no_such_field'"),
])
def test_config_errors(capsys, tmp_path, program, args, expect):
    _fails_in_one_line(capsys, program, f"--workdir={tmp_path / 'w'}", *args, expect=expect)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("program, args, expect", [
    ("search", [], "--workdir is required"),
    ("evaluate", [], "--saved_model is required"),
    ("search", ["--workdir=x", "--no_such_flag=1"], "no_such_flag"),
    ("evaluate", ["--saved_model=x", "--batch_size=0"], "batch_size"),
    ("retrain", ["--workdir=x", "stray"], "unexpected arguments ['stray']"),
])
def test_command_line_errors(capsys, program, args, expect):
    _fails_in_one_line(capsys, program, *args, expect=expect)


def test_genotype_errors(capsys, tmp_path):
    _fails_in_one_line(capsys, "retrain", f"--workdir={tmp_path / 'r'}",
                       "--genotype=NOT_A_GENOTYPE", expect="genotype='NOT_A_GENOTYPE'")
    bad = tmp_path / "genotype.json"
    bad.write_text('{"normal": [["conv_9x9", 0]]}')
    _fails_in_one_line(capsys, "retrain", f"--workdir={tmp_path / 'r'}", f"--genotype={bad}",
                       expect=str(bad))
    # The pipeline retrains what its search finds: a genotype override was a TypeError.
    _fails_in_one_line(capsys, "pipeline", f"--workdir={tmp_path / 'p'}",
                       "--retrain_set=genotype=DARTS_V2", expect="genotype='DARTS_V2'")
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists()


def test_a_field_given_twice_is_refused_not_a_type_error(capsys, tmp_path):
    _fails_in_one_line(capsys, "pipeline", f"--workdir={tmp_path}", f"--data_dir={tmp_path}",
                       "--retrain_set=data_dir=/elsewhere", expect="data_dir is given twice")
    _fails_in_one_line(capsys, "pipeline", f"--workdir={tmp_path}",
                       "--search_set=epochs=1,epochs=2", expect="'epochs' is given twice")
    # The same value twice is not a conflict.
    search_config, retrain_config = pipeline.check_configs(
        "digits", {"data_dir": str(tmp_path)}, {}, str(tmp_path))
    assert search_config.data_dir == retrain_config.data_dir == str(tmp_path)


@pytest.mark.parametrize("program", ["search", "retrain", "pipeline"])
def test_data_errors(capsys, tmp_path, program):
    """A preset whose data is not prepared: one line naming the data set and the directory
    (the search's was a traceback ending in the DataError)."""
    args = [f"--workdir={tmp_path / 'w'}", "--config=cifar10", f"--data_dir={tmp_path}"]
    _fails_in_one_line(capsys, program, *args, expect=f"'cifar10' is not prepared in {tmp_path}")


def test_evaluate_data_and_model_errors(capsys, tmp_path):
    _fails_in_one_line(capsys, "evaluate", f"--saved_model={tmp_path}",
                       "--dataset=no_such_data_set", expect="Unknown data set 'no_such_data_set'")
    _fails_in_one_line(capsys, "evaluate", f"--saved_model={tmp_path / 'none'}",
                       expect=str(tmp_path / "none"))


def test_a_work_directory_of_another_run(capsys, tmp_path):
    other = search_presets.digits().replace(seed=99)
    _other_run(tmp_path / "s", other)
    _other_run(tmp_path / "p" / "search", other)
    _other_run(tmp_path / "r", retrain_presets.digits().replace(lr=0.5))
    _fails_in_one_line(capsys, "search", f"--workdir={tmp_path / 's'}",
                       expect="different ['seed']")
    _fails_in_one_line(capsys, "pipeline", f"--workdir={tmp_path / 'p'}",
                       expect="different ['seed']")
    _fails_in_one_line(capsys, "retrain", f"--workdir={tmp_path / 'r'}",
                       expect="different ['lr']")


def test_divergence(capsys, tmp_path):
    line = _fails_in_one_line(capsys, "search", f"--workdir={tmp_path / 's'}", *TINY_SEARCH,
                              "--w_lr=1e30", expect="Non-finite loss at epoch 0 step")
    assert "the last checkpoint is" in line
    _fails_in_one_line(capsys, "retrain", f"--workdir={tmp_path / 'r'}", *TINY_RETRAIN,
                       "--lr=1e30", expect="Non-finite loss at epoch 0 step")


# Defaults and outputs -------------------------------------------------------------------------


def test_every_program_starts_from_the_digits_preset(capsys, tmp_path):
    """darts-retrain without --config ran the 600-epoch CIFAR-10 recipe."""
    status, out, _ = _call(capsys, "retrain", f"--workdir={tmp_path}", *TINY_RETRAIN)
    assert status == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dataset"] == "digits" and config["drop_path_rate"] == 0.1  # digits preset
    assert json.loads(out.splitlines()[-1]) == json.loads(
        (tmp_path / "final_metrics.json").read_text())
    assert search_presets.DEFAULT_PRESET == "digits"


def test_the_pipeline_writes_its_summary_atomically(tmp_path, monkeypatch):
    """A crash while summary.json is written leaves the previous summary whole (it was
    written in place, so a crash left half a file)."""
    from trainers import retrain, search  # pylint: disable=import-outside-toplevel
    from trainers.deploy import evaluate  # pylint: disable=import-outside-toplevel

    class Found:
        architecture, history = {"normal": []}, [{"loss": 1.0}]

    class Trained:
        final_metrics = {"test_top1": 0.5}

    monkeypatch.setattr(search, "run", lambda config, workdir: Found)
    monkeypatch.setattr(retrain, "run", lambda config, workdir: Trained)
    monkeypatch.setattr(evaluate, "evaluate_saved_model", lambda *a, **k: {"top1": 0.5})
    first = pipeline.run_pipeline("digits", tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text()) == first

    def half_then_crash(path, text, *args, **kwargs):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text[:len(text) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_crash)
    with pytest.raises(OSError, match="No space left"):
        pipeline.run_pipeline("digits", tmp_path)
    monkeypatch.undo()
    assert json.loads((tmp_path / "summary.json").read_text()) == first


def test_tensorflow_start_up_lines_are_hidden_unless_verbose(tmp_path):
    """TensorFlow's native notices (oneDNN, CUDA probing) filled the first screen of every
    program, even with TF_CPP_MIN_LOG_LEVEL=2; now only the failure line shows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    env["PYTHONPATH"] = str(ROOT)
    script = "import sys; from trainers import cli; sys.exit(cli.evaluate_main(sys.argv))"
    missing = f"--saved_model={tmp_path / 'none'}"

    def stderr(*args):
        done = subprocess.run([sys.executable, "-c", script, missing, *args], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 2, done.stderr
        return [line for line in done.stderr.splitlines() if line.strip()]

    quiet = stderr()
    assert len(quiet) == 1 and quiet[0].startswith("darts-evaluate: "), quiet
    verbose = stderr("--verbosity=1")
    assert verbose[-1] == quiet[0] and len(verbose) > 1, verbose


def test_programs_import_tensorflow_without_keras_sklearn_and_pyplot():
    """Keras imports scikit-learn and matplotlib.pyplot with TensorFlow whenever they are
    installed (1.7 s of a 5.3 s import, BENCHMARKS.md "Start-up: Keras' scikit-learn and
    pyplot imports"); the programs' start-up leaves them out, and the digits data and the
    cell drawings still import them when they need them."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    script = (
        "import json, sys\n"
        "from trainers import cli\n"
        "cli._start_tensorflow(0)\n"
        "at_start = [m for m in ('sklearn', 'matplotlib', 'matplotlib.pyplot') if m in sys.modules]\n"
        "from trainers.data import sources\n"
        "(x, y), (xt, yt) = sources.digits_arrays()\n"
        "import os, tempfile, darts_tf\n"
        "from darts_tf import plot\n"
        "png = plot.plot_genotype(darts_tf.genotypes.DARTS_V2, os.path.join(tempfile.mkdtemp(), 'c.png'))\n"
        "print(json.dumps([at_start, 'tensorflow' in sys.modules, x.shape[0], xt.shape[0],\n"
        "                  open(png, 'rb').read(4).hex()]))")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    # Neither package at start; then the digits split's sizes and a PNG's signature.
    assert json.loads(done.stdout.splitlines()[-1]) == [[], True, 1437, 360, "89504e47"]


def test_help_lists_the_config_fields(capsys):
    status, out, _ = _call(capsys, "search", "--help")
    assert status == 0 and "darts-search" in out
    for name in ("--workdir", "--config", "--verbosity", *(f"--{f}" for f in ("w_lr", "unrolled"))):
        assert name in out
    assert set(cli.field_types(SearchConfig)) == set(SearchConfig.__dataclass_fields__)
