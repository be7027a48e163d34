r"""Does the search help? DARTS variants and random cells, one evaluation protocol for all.

    python bench/quality.py --out_dir=runs/quality --methods=darts_1st --seeds=0,1,2,3,4
    python bench/quality.py --out_dir=runs/quality --report --quality_md=QUALITY.md \
        --plot=docs/quality.png

Methods: darts_1st (the `digits` search preset), darts_2nd (the same, unrolled=True),
pc_darts (`digits_pc_darts`), darts_minus (`digits_darts_minus`), darts_1st_bf16
(darts_1st with `mixed_precision="mixed_bfloat16"`; not in the default list), random (the best of
`--random_trials` random cells, each proxy-trained for `--random_epochs` epochs by
`DartsTuner` with a `RandomCellOracle`, on the same halves the searches use), and
spread (one fixed cell, `--spread_cell`, retrained with each of `--spread_seeds`: the
evaluation's own noise).

Evaluation: stratified k-fold over every image of the data set (train and test splits
together, held in memory as float32: fine for digits or an image folder, ~740 MB for
CIFAR-10; `--folds`, `--repeats`, folds fixed by `--fold_seed` for every method). Each
cell is retrained from scratch on each fold's training part with the same recipe (the
`--retrain_preset` with `--retrain_epochs`) and the same `--retrain_seeds`, and tested
on the held-out part; a cell's error pools the errors of all its folds.

Every finished unit (one search, one retraining) is one line of OUT_DIR/results.jsonl;
a rerun skips what is recorded, and an interrupted unit resumes from its checkpoint
(work directories under OUT_DIR/runs/). OUT_DIR/protocol.json fixes the settings that
make results comparable; another protocol in the same OUT_DIR is refused. Each command
ends by rebuilding OUT_DIR/quality.md and the plot from the JSONL (`--report` does only
that); `--quality_md` also rewrites the table between the markers of that file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import quality_report as report  # noqa: E402  pylint: disable=wrong-import-position

SEARCH_PRESETS = {"darts_1st": ("digits", {}), "darts_2nd": ("digits", {"unrolled": True}),
                  "pc_darts": ("digits_pc_darts", {}),
                  "darts_minus": ("digits_darts_minus", {}),
                  # darts_1st with bfloat16 compute (issue 15: does bfloat16 change what is found?)
                  "darts_1st_bf16": ("digits", {"mixed_precision": "mixed_bfloat16"})}
METHODS = (*SEARCH_PRESETS, "random", "spread")
DEFAULT_METHODS = tuple(m for m in METHODS if m not in report.OPTIONAL_METHODS)
RESULTS, PROTOCOL = "results.jsonl", "protocol.json"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _setting(text: str) -> tuple[str, object]:
    """key=value; the value parsed as JSON when it is JSON (true, 3, 0.1, null), else text."""
    key, _, value = text.partition("=")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="search seeds")
    parser.add_argument("--retrain_seeds", default="0", help="the same for every cell")
    parser.add_argument("--spread_cell", default="DARTS_V2")
    parser.add_argument("--spread_seeds", default="0,1,2,3,4",
                        help="retraining seeds of the fixed cell (method 'spread')")
    parser.add_argument("--report", action="store_true",
                        help="only rebuild the table and the plot from the JSONL")
    parser.add_argument("--quality_md", help="a Markdown file whose table (between the "
                        "markers) is rewritten, e.g. QUALITY.md")
    parser.add_argument("--plot", help="PNG path (default OUT_DIR/quality.png)")
    protocol = parser.add_argument_group("protocol (fixed per OUT_DIR)")
    protocol.add_argument("--dataset", default="digits")
    protocol.add_argument("--data_dir")
    protocol.add_argument("--image_size", type=int)
    protocol.add_argument("--limit", type=int,
                          help="use only the first N images (searches and folds)")
    protocol.add_argument("--search_preset", default="digits",
                          help="the first-order search; the other methods change it as their "
                               "digits presets change `digits`")
    protocol.add_argument("--retrain_preset", default="digits")
    protocol.add_argument("--retrain_epochs", type=int, default=15)
    protocol.add_argument("--folds", type=int, default=5)
    protocol.add_argument("--repeats", type=int, default=1)
    protocol.add_argument("--fold_seed", type=int, default=0)
    protocol.add_argument("--random_trials", type=int, default=6)
    protocol.add_argument("--random_epochs", type=int, default=10)
    protocol.add_argument("--search_set", action="append", default=[], type=_setting,
                          metavar="FIELD=VALUE", help="SearchConfig override (repeatable)")
    protocol.add_argument("--retrain_set", action="append", default=[], type=_setting,
                          metavar="FIELD=VALUE", help="RetrainConfig override (repeatable)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    return args


def protocol_of(args) -> dict:
    keys = ("dataset", "data_dir", "image_size", "limit", "search_preset", "retrain_preset",
            "retrain_epochs", "folds", "repeats", "fold_seed", "random_trials", "random_epochs")
    return {**{k: getattr(args, k) for k in keys}, "search_set": dict(args.search_set),
            "retrain_set": dict(args.retrain_set)}


def check_protocol(out_dir: Path, protocol: dict) -> None:
    """Writes protocol.json, or refuses a different one already there."""
    path = out_dir / PROTOCOL
    if path.exists():
        recorded = json.loads(path.read_text())
        changed = sorted(k for k in set(recorded) | set(protocol)
                         if recorded.get(k) != protocol.get(k))
        if changed:
            raise SystemExit(f"{path} holds another protocol (fields {changed}: "
                             f"{ {k: recorded.get(k) for k in changed} } there, "
                             f"{ {k: protocol.get(k) for k in changed} } now). Use another "
                             "--out_dir or the same settings.")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(protocol, indent=2, sort_keys=True) + "\n")


def append(out_dir: Path, record: dict) -> None:
    """One line, one write (appends from parallel commands do not interleave), synced."""
    with open(out_dir / RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


# Units ------------------------------------------------------------------------------------


class Study:
    """The data, the folds and the configs of one protocol; runs one unit at a time."""

    def __init__(self, out_dir: Path, protocol: dict):
        from trainers import data  # pylint: disable=import-outside-toplevel

        self.out_dir, self.protocol = out_dir, protocol
        p = protocol
        self.spec = data.get_spec(p["dataset"], p["data_dir"], p["image_size"])
        self.images, self.labels, self.num_train = _all_examples(p)
        self.done = {report.key(r) for r in report.read(out_dir / RESULTS)}

    def search_config(self, method: str, seed: int):
        from configs import search  # pylint: disable=import-outside-toplevel

        p = self.protocol
        preset, extra = SEARCH_PRESETS[method]
        digits, variant = search.get("digits").to_dict(), search.get(preset).to_dict()
        delta = {k: v for k, v in variant.items() if v != digits[k]}  # what the method changes
        return search.get(p["search_preset"]).replace(
            **delta, **extra, dataset=p["dataset"], data_dir=p["data_dir"],
            image_size=p["image_size"], data_limit=p["limit"], seed=seed, monitor=True,
            **p["search_set"])

    def retrain_config(self, genotype, retrain_seed: int):
        from configs import retrain  # pylint: disable=import-outside-toplevel

        p = self.protocol
        return retrain.get(p["retrain_preset"]).replace(
            genotype=genotype.to_json(), epochs=p["retrain_epochs"], seed=retrain_seed,
            dataset=p["dataset"], data_dir=p["data_dir"], image_size=p["image_size"],
            data_limit=None, **p["retrain_set"])

    def folds(self) -> list[tuple]:
        """(train indices, test indices) of every fold: `folds` per repeat, seeded per repeat."""
        from sklearn.model_selection import StratifiedKFold  # pylint: disable=import-outside-toplevel

        p, out = self.protocol, []
        for repeat in range(p["repeats"]):
            splitter = StratifiedKFold(p["folds"], shuffle=True,
                                       random_state=p["fold_seed"] + repeat)
            out.extend(splitter.split(self.images.reshape(len(self.labels), -1), self.labels))
        return out

    def search(self, method: str, seed: int) -> dict:
        from darts_tf import Genotype  # pylint: disable=import-outside-toplevel
        from trainers import search  # pylint: disable=import-outside-toplevel

        config = self.search_config(method, seed)
        workdir = self.out_dir / "runs" / method / f"seed_{seed}" / "search"
        with _Meter() as meter:
            result = search.run(config, str(workdir))
        last = result.history[-1] if result.history else {}
        genotype = Genotype.from_dict(result.architecture)
        return {"kind": "search", "method": method, "seed": seed,
                "genotype": genotype.to_dict(), **meter.values,
                "resumed_from_step": result.resumed_from_step,
                "epochs": len(result.history), "early_stop": result.stopped,
                "monitor": {k: last.get(k) for k in report.MONITOR}}

    def random(self, seed: int) -> dict:
        """The best of `random_trials` random cells by a short proxy training (weights half
        -> alphas half of the search data), through DartsTuner and RandomCellOracle."""
        import keras  # pylint: disable=import-outside-toplevel

        from darts_tf import Genotype  # pylint: disable=import-outside-toplevel
        from trainers.search import tuner  # pylint: disable=import-outside-toplevel

        p, config = self.protocol, self.search_config("darts_1st", seed)
        total = min(p["limit"] or self.num_train, self.num_train)
        x = report.normalize(self.images[:total], self.spec)
        y = self.labels[:total]
        half = total // 2
        hypermodel = tuner.DartsHyperModel(
            num_classes=self.spec.num_classes, input_channels=self.spec.image_shape[-1],
            init_channels=config.init_channels, num_cells=config.num_cells,
            learning_rate=config.w_lr, momentum=config.w_momentum,
            weight_decay=config.w_weight_decay, global_clipnorm=config.w_grad_clip or None)
        workdir = self.out_dir / "runs" / "random" / f"seed_{seed}"
        with _Meter() as meter:
            random_tuner = tuner.DartsTuner(
                hypermodel, config, oracle=tuner.RandomCellOracle(
                    max_trials=p["random_trials"], seed=seed),
                directory=str(workdir), project_name="tuner", overwrite=False)
            random_tuner.search(x[:half], y[:half], validation_data=(x[half:], y[half:]),
                                epochs=p["random_epochs"], batch_size=config.batch_size,
                                verbose=0)
        best = random_tuner.oracle.get_best_trials(1)[0]
        genotype = Genotype.from_json(best.hyperparameters.get(tuner.GENOTYPE))
        keras.backend.clear_session()
        return {"kind": "search", "method": "random", "seed": seed,
                "genotype": genotype.to_dict(), **meter.values,
                "trials": p["random_trials"], "proxy_epochs": p["random_epochs"],
                "best_trial": best.trial_id, "best_score": best.score,
                "monitor": {"hessian_eigenvalue": None, **report.skip_counts(genotype)}}

    def retrain(self, method: str, seed, genotype, retrain_seed: int, fold: int,
                train_index, test_index, cell: str | None = None) -> dict:
        import keras  # pylint: disable=import-outside-toplevel

        from trainers import data, retrain  # pylint: disable=import-outside-toplevel

        config = self.retrain_config(genotype, retrain_seed)
        name = cell if cell else f"seed_{seed}"
        workdir = self.out_dir / "runs" / method / name / f"fold_{fold}_rs_{retrain_seed}"
        x_train, y_train = self.images[train_index], self.labels[train_index]
        x_test, y_test = self.images[test_index], self.labels[test_index]
        with _Meter() as meter:
            result = retrain.run(
                config, str(workdir), export=False,
                data_fn=lambda epoch: data.train_data_from_arrays(
                    x_train, y_train, self.spec, batch_size=config.batch_size,
                    seed=config.seed, epoch=epoch, augment=config.augment, cutout=config.cutout),
                eval_fn=lambda: data.eval_data_from_arrays(
                    x_test, y_test, self.spec, batch_size=config.eval_batch_size))
        keras.backend.clear_session()
        final = result.final_metrics
        return {"kind": "retrain", "method": method, "seed": seed, "cell": cell,
                "retrain_seed": retrain_seed, "fold": fold, "genotype": genotype.to_dict(),
                "test_count": len(y_test), "train_count": len(y_train),
                "errors": int(round((1.0 - final["test_top1"]) * len(y_test))),
                "test_top1": final["test_top1"], "params": final["params"],
                "epochs": final["epochs"], "resumed_from_step": result.resumed_from_step,
                **meter.values}

    def run(self, kind_method_seed: tuple, make) -> dict | None:
        """Runs `make()` unless the unit is recorded; records and returns its record."""
        if kind_method_seed in self.done:
            return None
        record = make()
        append(self.out_dir, record)
        self.done.add(report.key(record))
        print(f"[quality] {kind_method_seed}: cpu {record['cpu_s']:.0f} s, wall "
              f"{record['wall_s']:.0f} s", file=sys.stderr, flush=True)
        return record


class _Meter:
    """Process CPU seconds (every thread of TensorFlow's pools) and wall seconds of a block."""

    def __enter__(self):
        self._cpu, self._wall, self._load = time.process_time(), time.time(), os.getloadavg()[0]
        return self

    def __exit__(self, *exc):
        self.values = {"cpu_s": round(time.process_time() - self._cpu, 2),
                       "wall_s": round(time.time() - self._wall, 2),
                       "load_before": round(self._load, 2),
                       "load_after": round(os.getloadavg()[0], 2)}
        return False


def _all_examples(protocol: dict):
    """Every image of the data set, train split then test split, as [0, 1] float arrays;
    (images, labels, number from the train split), cut to the first `limit`."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    from trainers.data import sources  # pylint: disable=import-outside-toplevel

    p, images, labels, counts = protocol, [], [], []
    for split in ("train", "test"):
        ds, decode = sources.source(p["dataset"], split, None, None, p["data_dir"],
                                    image_size=p["image_size"])
        ds = ds.map(lambda raw, label, decode=decode: (decode(raw), label)).batch(1024)
        batches = [(np.asarray(x), np.asarray(y)) for x, y in ds]
        images += [x for x, _ in batches]
        labels += [y for _, y in batches]
        counts.append(sum(len(y) for _, y in batches))
    images, labels = np.concatenate(images).astype(np.float32), np.concatenate(labels)
    limit = p["limit"] or len(labels)
    return images[:limit], labels[:limit].astype(np.int32), min(counts[0], limit)


def run_study(args) -> None:
    out_dir = Path(args.out_dir)
    protocol = protocol_of(args)
    check_protocol(out_dir, protocol)
    study = Study(out_dir, protocol)
    folds = study.folds()
    methods = args.methods.split(",")
    for method in methods:
        if method == "spread":
            continue
        for seed in _ints(args.seeds):
            make = ((lambda s=seed: study.random(s)) if method == "random" else
                    (lambda m=method, s=seed: study.search(m, s)))
            study.run(("search", method, seed, None, None, None), make)
            genotype = report.genotype_of(report.read(out_dir / RESULTS), method, seed)
            for retrain_seed in _ints(args.retrain_seeds):
                for fold, (train_index, test_index) in enumerate(folds):
                    study.run(("retrain", method, seed, None, retrain_seed, fold),
                              lambda r=retrain_seed, f=fold, a=train_index, b=test_index:
                              study.retrain(method, seed, genotype, r, f, a, b))
    if "spread" in methods:
        from darts_tf import load_genotype  # pylint: disable=import-outside-toplevel

        genotype = load_genotype(args.spread_cell)
        for retrain_seed in _ints(args.spread_seeds):
            for fold, (train_index, test_index) in enumerate(folds):
                study.run(("retrain", "spread", None, args.spread_cell, retrain_seed, fold),
                          lambda r=retrain_seed, f=fold, a=train_index, b=test_index:
                          study.retrain("spread", None, genotype, r, f, a, b,
                                        cell=args.spread_cell))


def main(argv=None) -> None:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    if not args.report:
        run_study(args)
    elif not (out_dir / PROTOCOL).exists():
        raise SystemExit(f"{out_dir / PROTOCOL} not found: nothing recorded in {out_dir}.")
    protocol = json.loads((out_dir / PROTOCOL).read_text())
    records = report.read(out_dir / RESULTS)
    report.write(records, protocol, out_dir, quality_md=args.quality_md,
                 plot_path=args.plot or str(out_dir / "quality.png"))


if __name__ == "__main__":
    main()
