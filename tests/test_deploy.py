"""From your own images to a phone-ready model: the image-folder pipeline, the LiteRT export
(trainers/deploy/tflite.py), evaluation of .tflite files and darts-predict.

The command-line programs run in this process (`cli.X_main(argv)` is what the console
scripts call). Tiny settings (C=4, 3 cells, a few steps) except the digits model of the
int8 accuracy bound, which is retrained to ~95% (C=8, 3 cells, 5 epochs, about a minute).
"""
import json

import numpy as np
import pytest
import tensorflow as tf

from configs import retrain as retrain_presets
from trainers import cli, data, retrain
from trainers.deploy import evaluate, tflite
from trainers.deploy.evaluate import serving_fn

from image_folders import write_digits_folder

TINY_SEARCH = "epochs=1,steps_per_epoch=2,init_channels=4,num_cells=3,num_nodes=1,batch_size=16"
TINY_RETRAIN = "epochs=1,steps_per_epoch=3,init_channels=4,num_cells=3,batch_size=16"
MAINS = {"search": cli.search_main, "retrain": cli.retrain_main, "export": cli.export_main,
         "evaluate": cli.evaluate_main, "predict": cli.predict_main,
         "pipeline": cli.pipeline_main}


def _call(capsys, program, *args):
    """(exit status, stdout lines, stderr) of `darts-{program} args` in this process."""
    status = MAINS[program]([f"darts-{program}", *args])
    out, err = capsys.readouterr()
    return status, [line for line in out.splitlines() if line.strip()], err


def _ok(capsys, program, *args):
    status, out, err = _call(capsys, program, *args)
    assert status == 0, err[-3000:]
    return [json.loads(line) for line in out]


def _fails(capsys, program, *args, expect):
    status, out, err = _call(capsys, program, *args)
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert status == 2 and out == [] and last.startswith(f"darts-{program}: "), err
    assert expect in last, last


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A digits SavedModel retrained to ~95% top-1, and its float32 and int8 exports."""
    workdir = tmp_path_factory.mktemp("digits")
    config = retrain_presets.digits().replace(init_channels=8, num_cells=3, epochs=5,
                                              drop_path_rate=0.0)
    trained = retrain.run(config, str(workdir))
    exported = {q: tflite.export_tflite(workdir / "saved_model", workdir / f"digits_{q}.tflite",
                                        q, representative_examples=100)
                for q in ("none", "int8")}
    return workdir, trained.final_metrics, exported


def test_float32_tflite_gives_the_saved_models_logits(digits_model):
    workdir, _, exported = digits_model
    images, _ = next(iter(data.eval_data("digits", batch_size=64, raw=True)))
    spec = tflite.model_spec(workdir / "saved_model")
    normalised = (tf.cast(images, tf.float32) / 255.0 - spec.mean) / spec.std
    loaded = tf.saved_model.load(str(workdir / "saved_model"))
    expected = serving_fn(loaded)(normalised).numpy()
    model = tflite.LiteRTModel(exported["none"]["output"])
    got = model(images.numpy())
    assert got.shape == (64, 10) and np.abs(expected).max() > 1.0
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # The sidecar names the classes and the raw input.
    sidecar = json.loads(tflite.sidecar_path(exported["none"]["output"]).read_text())
    assert sidecar["class_names"] == [str(i) for i in range(10)]
    assert sidecar["input"] == {"dtype": "uint8", "range": [0, 255], "shape": [8, 8, 1]}


def test_int8_is_within_one_point_of_float32_on_digits(digits_model):
    workdir, final, exported = digits_model
    float32 = evaluate.evaluate_tflite(exported["none"]["output"])
    int8 = evaluate.evaluate_tflite(exported["int8"]["output"])
    saved = evaluate.evaluate_saved_model(str(workdir / "saved_model"))
    assert float32["examples"] == int8["examples"] == 360
    assert saved["top1"] == pytest.approx(final["test_top1"])
    assert abs(float32["top1"] - saved["top1"]) <= 1 / 360  # raw uint8 digits: rounding
    assert float32["top1"] >= 0.90
    assert abs(int8["top1"] - float32["top1"]) <= 0.01, (int8["top1"], float32["top1"])
    assert int8["size_bytes"] < float32["size_bytes"]
    for result in (float32, int8, saved):
        assert result["size_bytes"] > 0 and result["latency_ms_per_image"] > 0


def test_an_image_folder_from_pipeline_to_phone(tmp_path, capsys):
    """One command from images to a SavedModel, then the phone model, its evaluation and
    predictions: the README's "search on your own images" and "put it on a phone"."""
    images = write_digits_folder(tmp_path / "images")
    work = tmp_path / "run"
    summary = _ok(capsys, "pipeline", "--config=folder", f"--data_dir={images}",
                  f"--workdir={work}", f"--search_set={TINY_SEARCH},image_size=16",
                  f"--retrain_set={TINY_RETRAIN},image_size=16,auxiliary=false")[-1]
    assert 0.0 <= summary["top1"] <= summary["top5"] <= 1.0
    stored = json.loads((work / "retrain" / "data.json").read_text())
    assert stored["class_names"] == [str(i) for i in range(10)]
    assert stored["image_shape"] == [16, 16, 1] and stored["num_test"] == 20
    assert json.loads((work / "search" / "data.json").read_text()) == stored
    assert json.loads((work / "retrain" / "saved_model" / "assets.extra" / "data.json")
                      .read_text()) == stored
    saved = _ok(capsys, "evaluate", f"--model={work / 'retrain' / 'saved_model'}",
                f"--data_dir={images}")[0]
    assert saved["examples"] == 20 and saved["dataset"] == "folder"

    phone = tmp_path / "phone" / "model.tflite"
    exported = _ok(capsys, "export", f"--saved_model={work / 'retrain' / 'saved_model'}",
                   f"--output={phone}", "--quantize=int8", f"--data_dir={images}")[0]
    assert exported["input_shape"] == [16, 16, 1] and phone.with_suffix(".json").exists()
    result = _ok(capsys, "evaluate", f"--model={phone}", f"--data_dir={images}")[0]
    assert result["examples"] == 20 and result["size_bytes"] == phone.stat().st_size
    assert abs(result["top1"] - saved["top1"]) <= 0.1  # 2 of 20 images

    pictures = [images / "0" / "000.jpg", images / "7" / "003.png"]
    for model in (phone, work / "retrain" / "saved_model"):
        lines = _ok(capsys, "predict", f"--model={model}", "--top_k=3", *map(str, pictures))
        assert [line["image"] for line in lines] == list(map(str, pictures))
        for line in lines:
            assert len(line["top_k"]) == 3
            assert {p["class"] for p in line["top_k"]} <= set(stored["class_names"])
            probabilities = [p["probability"] for p in line["top_k"]]
            assert probabilities == sorted(probabilities, reverse=True)
            assert 0 < sum(probabilities) <= 1 + 1e-6


def test_rgb_images_through_search_retrain_export_and_predict(tmp_path, capsys):
    images = write_digits_folder(tmp_path / "rgb", mode="RGB", per_class=8, classes=4)
    flags = ["--dataset=folder", f"--data_dir={images}", "--image_size=20"]
    _ok(capsys, "search", *flags, f"--workdir={tmp_path / 'search'}",
        *[f"--{item}" for item in TINY_SEARCH.replace("batch_size=16", "batch_size=8")
          .split(",")])
    _ok(capsys, "retrain", *flags, f"--workdir={tmp_path / 'retrain'}",
        f"--genotype={tmp_path / 'search' / 'genotype.json'}",
        *[f"--{item}" for item in TINY_RETRAIN.replace("batch_size=16", "batch_size=8")
          .split(",")])
    phone = tmp_path / "rgb.tflite"
    _ok(capsys, "export", f"--saved_model={tmp_path / 'retrain' / 'saved_model'}",
        f"--output={phone}")
    assert json.loads(phone.with_suffix(".json").read_text())["input"]["shape"] == [20, 20, 3]
    lines = _ok(capsys, "predict", f"--model={phone}", "--top_k=10",
                str(images / "2" / "000.png"))
    assert len(lines[0]["top_k"]) == 4  # as many as there are classes
    assert sum(p["probability"] for p in lines[0]["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_deployment_errors(tmp_path, capsys, digits_model):
    workdir, _, exported = digits_model
    saved_model = str(workdir / "saved_model")
    _fails(capsys, "export", f"--saved_model={saved_model}", "--output=model.bin",
           expect="--output='model.bin': expected a file name ending in .tflite")
    _fails(capsys, "export", f"--saved_model={tmp_path / 'none'}", "--output=m.tflite",
           expect=f"No SavedModel directory at {tmp_path / 'none'}")
    _fails(capsys, "evaluate", f"--model={tmp_path / 'none.tflite'}",
           expect=f"No LiteRT model at {tmp_path / 'none.tflite'}")
    _fails(capsys, "predict", f"--model={saved_model}", expect="No image files given")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    _fails(capsys, "predict", f"--model={exported['none']['output']}", str(broken),
           expect=f"{broken} is not a readable JPEG, PNG, BMP or GIF image")
    # A folder of other classes than the model's.
    other = write_digits_folder(tmp_path / "other", per_class=3, classes=3, size=8)
    _fails(capsys, "evaluate", f"--model={saved_model}", "--dataset=folder",
           f"--data_dir={other}", expect="The model was trained on the classes")
