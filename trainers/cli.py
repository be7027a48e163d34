r"""The command line, in one place: darts-search, darts-retrain, darts-evaluate, darts-pipeline.

    darts-pipeline --workdir=runs/digits                 # search, retrain, export, evaluate
    darts-search --workdir=runs/search --config=cifar10 --data_dir=~/tensorflow_datasets \
        --unrolled=true --hessian=exact --strategy=mirrored
    darts-retrain --workdir=runs/retrain --genotype=runs/search/genotype.json
    darts-evaluate --saved_model=runs/retrain/saved_model --dataset=digits

Every program starts from the embedded digits preset; `--config` picks another preset
by name (configs/search.py, configs/retrain.py). Every config field has a flag of the
same name that overrides it (optional fields accept "none"), checked by the config's
own validation, so errors name the field and the value. Running the same command again
resumes from the work directory's checkpoints.

Output: progress and log lines on stderr, the result as one JSON line on stdout. Every
anticipated failure (a config value, a genotype, missing data, divergence, a work
directory of another run) ends the program with one line on stderr, "PROGRAM: what went
wrong", and exit status 2. TensorFlow's native start-up lines (oneDNN, CUDA probing) are
hidden unless --verbosity=1.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
import typing
from typing import Any, Callable

from absl import flags

from configs import ConfigError, RetrainConfig, SearchConfig
from configs import retrain as retrain_presets
from configs import search as search_presets

# Config fields -> flags ------------------------------------------------------------------------


def field_types(config_cls) -> dict[str, tuple[type, bool]]:
    """{field name: (base type, optional)} for every field of a config dataclass."""
    out = {}
    for name, hint in typing.get_type_hints(config_cls).items():
        if name not in {f.name for f in dataclasses.fields(config_cls)}:
            continue  # class attributes such as RESUMABLE_CHANGES
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = (args[0], True) if args else (hint, False)
    return out


def parse_field(config_cls, name: str, text: str) -> Any:
    """Command-line text -> the type of field `name` ("none" gives None if optional)."""
    types = field_types(config_cls)
    if name not in types:
        raise ConfigError(f"Unknown config field {name!r} for {config_cls.__name__}.")
    base, optional = types[name]
    if optional and str(text).strip().lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            lowered = str(text).strip().lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return lowered in ("true", "1")
        return base(text)
    except ValueError:
        kind = {int: "an integer", float: "a number", bool: "true or false"}.get(base, "text")
        raise ConfigError(f"Invalid config value {name}={text!r}: expected "
                          f"{'none or ' if optional else ''}{kind}.") from None


def parse_overrides(config_cls, items) -> dict:
    """["field=value", ...] -> {field: parsed value}; a field given twice is refused."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"Expected field=value, received {item!r}.")
        if name in out:
            raise ConfigError(f"Config field {name!r} is given twice ({item!r}).")
        out[name] = parse_field(config_cls, name, value)
    return out


def _define_field_flags(fv, config_cls) -> None:
    """A string flag per field (parsed by `parse_field`, so errors name the field)."""
    for name, (base, optional) in field_types(config_cls).items():
        flags.DEFINE_string(name, None, f"Overrides {config_cls.__name__}.{name} "
                            f"({'none or ' if optional else ''}{base.__name__}).", flag_values=fv)


def _config_from_flags(fv, config_cls, preset):
    """`preset` with every field flag present on the command line applied."""
    overrides = {name: parse_field(config_cls, name, fv[name].value)
                 for name in field_types(config_cls) if fv[name].present}
    return preset.replace(**overrides)


# Running a program ------------------------------------------------------------------------------


class _StderrHandler(logging.Handler):
    """Log lines to the current sys.stderr (which tests and tools may swap)."""

    def emit(self, record):
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # pylint: disable=broad-except
            self.handleError(record)


@contextlib.contextmanager
def _logging(verbosity: int):
    """Shows darts-tf's progress and log lines on stderr for the program's duration;
    TensorFlow's Python warnings only with verbosity >= 1."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = [logging.getLogger(name) for name in ("trainers", "darts_tf")]
    quiet = [logging.getLogger(name) for name in ("tensorflow", "absl")]
    saved = [(lg, lg.level, lg.propagate) for lg in ours + quiet]
    for lg in ours:
        lg.addHandler(handler)
        lg.propagate = False  # a library may give the root logger a handler (lines twice)
        lg.setLevel(logging.INFO if verbosity >= 0 else logging.WARNING)
    for lg in quiet:
        lg.setLevel(logging.WARNING if verbosity >= 1 else logging.ERROR)
    try:
        yield
    finally:
        for lg in ours:
            lg.removeHandler(handler)
        for lg, level, propagate in saved:
            lg.setLevel(level)
            lg.propagate = propagate


@contextlib.contextmanager
def _native_stderr_hidden(hide: bool):
    """Hides what native code writes to file descriptor 2 in this block (replayed if the
    block raises). TensorFlow's C++ runtime prints its start-up notices there before its
    log level applies, so TF_CPP_MIN_LOG_LEVEL cannot hide them."""
    if not hide:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _start_tensorflow(verbosity: int, strategy: str = "default") -> None:
    """Imports TensorFlow and initialises its devices, quietly unless verbosity >= 1.

    A multi-worker strategy must exist before the devices are initialised, so it is
    created here (strategies are cached, the run takes the same one).
    """
    if verbosity < 1:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _native_stderr_hidden(verbosity < 1):
        from trainers.runtime import startup  # pylint: disable=import-outside-toplevel

        tf = startup.import_tensorflow()  # without Keras' scikit-learn and pyplot extras
        from trainers.runtime import distribute  # pylint: disable=import-outside-toplevel

        if strategy == "multi_worker":
            distribute.make_strategy(strategy)
        tf.config.list_logical_devices()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _anticipated() -> tuple:
    """The failures a user can cause and fix: reported in one line, not a traceback."""
    anticipated = (ConfigError, FloatingPointError)
    try:  # darts-evaluate serves a SavedModel without darts_tf
        from darts_tf.genotype import GenotypeError  # pylint: disable=import-outside-toplevel
        anticipated += (GenotypeError,)
    except ImportError:
        pass
    if "tensorflow" in sys.modules:  # the data code needs TensorFlow
        from trainers.data import DataError  # pylint: disable=import-outside-toplevel
        anticipated += (DataError,)
    return anticipated


def _program(name: str, doc: str, define: Callable, body: Callable, argv, extra=(),
             positional: bool = False) -> int:
    """Parses `argv` into fresh flags, runs `body(fv)` (`body(fv, args)` with the positional
    arguments if `positional`) and turns anticipated failures into one stderr line and exit
    status 2. Returns the exit status."""
    fv = flags.FlagValues()
    flags.DEFINE_integer("verbosity", 0, "-1: warnings only; 0: progress; 1: also "
                         "TensorFlow's own start-up lines and warnings.", flag_values=fv)
    define(fv)
    argv = list(sys.argv if argv is None else argv)
    if any(arg in ("--help", "-h", "--helpfull") for arg in argv[1:]):
        print(doc.strip() + "\n\nFlags:\n" + fv.get_help(include_special_flags=False))
        return 0
    try:
        rest = fv(argv)
        if len(rest) > 1 and not positional:
            raise flags.Error(f"unexpected arguments {rest[1:]}")
    except flags.Error as err:
        print(f"{name}: {_one_line(err)} (see {name} --help)", file=sys.stderr)
        return 2
    with _logging(fv.verbosity):
        try:
            body(fv, rest[1:]) if positional else body(fv)
        except _anticipated() + tuple(extra) as err:
            print(f"{name}: {_one_line(err)}", file=sys.stderr)
            return 2
    return 0


def _required(fv, name: str) -> str:
    value = fv[name].value
    if not value:
        raise ConfigError(f"--{name} is required.")
    return value


# The programs -----------------------------------------------------------------------------------


def _stage_program(name: str, doc: str, presets, config_cls, run_stage, argv) -> int:
    """A program that runs one stage from a preset (`--config`), its field flags and
    `--workdir`; `run_stage(config, workdir)` returns the JSON-able result it prints."""
    def define(fv):
        flags.DEFINE_enum("config", presets.DEFAULT_PRESET, sorted(presets.PRESETS),
                          f"Preset to start from ({presets.__name__.replace('.', '/')}.py).",
                          flag_values=fv)
        flags.DEFINE_string("workdir", None, "Output directory (resumed if it holds a "
                            "checkpoint).", flag_values=fv)
        _define_field_flags(fv, config_cls)

    def body(fv):
        workdir = _required(fv, "workdir")
        config = _config_from_flags(fv, config_cls, presets.get(fv.config))
        _start_tensorflow(fv.verbosity, config.strategy)
        print(json.dumps(run_stage(config, workdir), sort_keys=True))
    return _program(name, doc, define, body, argv)


def search_main(argv=None) -> int:
    """darts-search: run (or resume) a DARTS search; prints {"genotype", "workdir"}.

    Writes config.json, epoch_{N}.json, alphas.jsonl, cells.png, tensorboard/, checkpoints/
    and genotype.json into --workdir."""
    def run_stage(config, workdir):
        from trainers import search  # pylint: disable=import-outside-toplevel

        return {"workdir": workdir, "genotype": search.run(config, workdir).architecture}
    return _stage_program("darts-search", search_main.__doc__, search_presets, SearchConfig,
                          run_stage, argv)


def retrain_main(argv=None) -> int:
    """darts-retrain: train a genotype from scratch, export it, report test accuracy.

    --genotype takes anything `darts_tf.load_genotype` reads (a published name such as
    DARTS_V2, our genotype.json, an NNI epoch JSON, the reference's Genotype(...) text).
    Writes config.json, genotype.json, metrics.jsonl, tensorboard/, checkpoints/,
    model.keras, saved_model/ and final_metrics.json; prints final_metrics as JSON."""
    def run_stage(config, workdir):
        from trainers import retrain  # pylint: disable=import-outside-toplevel

        return retrain.run(config, workdir).final_metrics
    return _stage_program("darts-retrain", retrain_main.__doc__, retrain_presets, RetrainConfig,
                          run_stage, argv)


def evaluate_main(argv=None) -> int:
    """darts-evaluate: accuracy, size on disk, latency (and parameters) of an exported model.

    --model is a SavedModel directory (darts-retrain's saved_model/, loaded with plain
    `tf.saved_model.load`, darts_tf is not needed) or a .tflite file of darts-export (run
    by the LiteRT interpreter on raw uint8 images). The data set, its image size and
    normalisation default to those stored with the model. Prints one JSON line (and
    writes it to --output if given): top1, top5, size_bytes, latency_ms_per_image, ..."""
    def define(fv):
        flags.DEFINE_string("model", None, "SavedModel directory or .tflite file.",
                            flag_values=fv)
        flags.DEFINE_string("saved_model", None, "SavedModel directory (same as --model).",
                            flag_values=fv)
        flags.DEFINE_string("dataset", None, "Data set (trainers/data names; default: the "
                            "one stored with the model).", flag_values=fv)
        flags.DEFINE_string("split", "test", "Split to evaluate ('test' is ImageNet's "
                            "validation).", flag_values=fv)
        flags.DEFINE_integer("batch_size", 256, "Batch size, also the batch timed for "
                             "latency.", lower_bound=1, flag_values=fv)
        flags.DEFINE_string("data_dir", None, "TFDS data directory, or the image folder.",
                            flag_values=fv)
        flags.DEFINE_integer("limit", None, "Evaluate only the first N examples.",
                             lower_bound=1, flag_values=fv)
        flags.DEFINE_integer("timed_batches", 5, "Calls timed for the median latency of a "
                             "batch (10x as many for one image).", lower_bound=1,
                             flag_values=fv)
        flags.DEFINE_string("output", None, "Also write the JSON result to this file.",
                            flag_values=fv)

    def body(fv):
        if fv.model and fv.saved_model and fv.model != fv.saved_model:
            raise ConfigError("Give the model once: --model or --saved_model.")
        path = fv.model or _required(fv, "saved_model")
        _start_tensorflow(fv.verbosity)
        from trainers.deploy import evaluate  # pylint: disable=import-outside-toplevel

        result = evaluate.evaluate(
            path, dataset=fv.dataset, split=fv.split, batch_size=fv.batch_size,
            data_dir=fv.data_dir, limit=fv.limit, timed_batches=fv.timed_batches)
        line = json.dumps(result, sort_keys=True)
        print(line)
        if fv.output:
            from trainers.runtime.run import write_text  # pylint: disable=import-outside-toplevel

            write_text(fv.output, line + "\n")
    # A missing or unreadable model is an OSError; a bad split or an empty one ValueError.
    return _program("darts-evaluate", evaluate_main.__doc__, define, body, argv,
                    extra=(OSError, ValueError))


def export_main(argv=None) -> int:
    """darts-export: a retrained SavedModel as a LiteRT (.tflite) model for phones and boards.

        darts-export --saved_model=runs/digits/retrain/saved_model --output=digits.tflite \\
            --quantize=int8

    The model takes raw uint8 images (batch, H, W, C) and returns logits; the
    normalisation is inside it. FILE.json next to FILE.tflite holds the class names and
    the input shape. --quantize: none (float32), dynamic (int8 weights) or int8 (full
    integer, calibrated on the training split of --dataset/--data_dir, by default the
    data set stored with the model). Prints one JSON line."""
    from trainers.deploy.tflite import QUANTIZE  # pylint: disable=import-outside-toplevel

    def define(fv):
        flags.DEFINE_string("saved_model", None, "SavedModel directory (darts-retrain's "
                            "saved_model/).", flag_values=fv)
        flags.DEFINE_string("output", None, "The .tflite file to write.", flag_values=fv)
        flags.DEFINE_enum("quantize", "none", list(QUANTIZE), "Quantization.", flag_values=fv)
        flags.DEFINE_string("dataset", None, "int8's representative data (default: the data "
                            "set stored with the model).", flag_values=fv)
        flags.DEFINE_string("data_dir", None, "TFDS data directory, or the image folder.",
                            flag_values=fv)
        flags.DEFINE_integer("representative_examples", 200, "Training images that "
                             "calibrate int8.", lower_bound=1, flag_values=fv)

    def body(fv):
        saved_model, output = _required(fv, "saved_model"), _required(fv, "output")
        if not output.endswith(".tflite"):
            raise ConfigError(f"--output={output!r}: expected a file name ending in .tflite.")
        _start_tensorflow(fv.verbosity)
        from trainers.deploy import tflite  # pylint: disable=import-outside-toplevel

        if not os.path.isdir(saved_model):
            raise OSError(f"No SavedModel directory at {saved_model}.")
        with _native_stderr_hidden(fv.verbosity < 1):  # the converter's C++ log lines
            result = tflite.export_tflite(
                saved_model, output, fv.quantize, dataset=fv.dataset, data_dir=fv.data_dir,
                representative_examples=fv.representative_examples)
        print(json.dumps(result, sort_keys=True))
    return _program("darts-export", export_main.__doc__, define, body, argv,
                    extra=(OSError, ValueError))


def predict_main(argv=None) -> int:
    """darts-predict --model=PATH IMAGE...: the top-k classes of image files.

    --model is a SavedModel directory of darts-retrain or a .tflite file of darts-export.
    Images (JPEG, PNG, BMP, GIF, any size) are resized to the model's input. Prints one
    JSON line per image: {"image", "top_k": [{"class", "probability"}, ...]}."""
    def define(fv):
        flags.DEFINE_string("model", None, "SavedModel directory or .tflite file.",
                            flag_values=fv)
        flags.DEFINE_integer("top_k", 5, "Classes per image.", lower_bound=1, flag_values=fv)

    def body(fv, images):
        path = _required(fv, "model")
        if not images:
            raise ConfigError("No image files given: darts-predict --model=PATH IMAGE...")
        _start_tensorflow(fv.verbosity)
        from trainers.deploy import predict  # pylint: disable=import-outside-toplevel

        for result in predict.predict(path, images, top_k=fv.top_k):
            print(json.dumps(result))
    return _program("darts-predict", predict_main.__doc__, define, body, argv,
                    extra=(OSError, ValueError), positional=True)


def pipeline_main(argv=None) -> int:
    """darts-pipeline: search -> retrain -> export -> evaluate, one command.

    Runs the search preset --config into WORKDIR/search, retrains the genotype it found
    with the retrain preset of the same name into WORKDIR/retrain (model.keras and the
    SavedModel WORKDIR/retrain/saved_model), evaluates the SavedModel on the test split
    and writes WORKDIR/summary.json. Stage fields are set with --search_set/--retrain_set:

        darts-pipeline --workdir=DIR --search_set=epochs=5,unrolled=true \\
            --retrain_set=epochs=10"""
    from trainers import pipeline  # pylint: disable=import-outside-toplevel  (no TensorFlow)

    def define(fv):
        flags.DEFINE_enum("config", search_presets.DEFAULT_PRESET, list(pipeline.PRESETS),
                          "Preset for both stages.", flag_values=fv)
        flags.DEFINE_string("workdir", None, "Output directory (each stage resumes from it).",
                            flag_values=fv)
        flags.DEFINE_list("search_set", [], "field=value overrides of the search config.",
                          flag_values=fv)
        flags.DEFINE_list("retrain_set", [], "field=value overrides of the retrain config.",
                          flag_values=fv)
        flags.DEFINE_string("data_dir", None, "TFDS data directory, or the image folder "
                            "(--config=folder), for both stages.", flag_values=fv)

    def body(fv):
        workdir = _required(fv, "workdir")
        search_overrides = parse_overrides(SearchConfig, fv.search_set)
        retrain_overrides = parse_overrides(RetrainConfig, fv.retrain_set)
        pipeline.check_configs(fv.config, search_overrides, retrain_overrides, fv.data_dir)
        _start_tensorflow(fv.verbosity, search_overrides.get("strategy", "default"))
        summary = pipeline.run_pipeline(fv.config, workdir, search_overrides=search_overrides,
                                        retrain_overrides=retrain_overrides,
                                        data_dir=fv.data_dir)
        ev = summary["evaluation"]
        print(json.dumps({"workdir": workdir, "top1": ev.get("top1"), "top5": ev.get("top5"),
                          "wall_time_s": summary["wall_time_s"]}))
    return _program("darts-pipeline", pipeline_main.__doc__, define, body, argv)
