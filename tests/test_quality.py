"""The quality study: random cells (the baseline), RandomCellOracle, and bench/quality.py.

The sampler is checked on 1,000 cells (the space's rules and uniform marginals); the
oracle by a two-trial tuner run on tiny digits; the study script by a tiny run through
its main() (2 folds, 1 epoch, C=4, 3 cells of 1 node), a second identical run (nothing
new), and `--report` from the command line rebuilding QUALITY.md's table from the JSONL alone.
"""
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from darts_tf import PRIMITIVES, Genotype, GenotypeError, random_genotype
from darts_tf.genotype import random_genotype as direct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import quality  # noqa: E402  pylint: disable=wrong-import-position
import quality_report  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.filterwarnings("ignore:(currentThread|getName):DeprecationWarning")
OPS = [p for p in PRIMITIVES if p != "none"]
CELLS = [random_genotype(seed) for seed in range(1000)]


# The sampler ---------------------------------------------------------------------------


def test_random_cells_follow_the_space_rules():
    assert random_genotype is direct  # exported lazily by darts_tf
    for genotype in CELLS:
        assert genotype.num_nodes == 4
        for cell in ("normal", "reduce"):
            assert getattr(genotype, f"{cell}_concat") == (2, 3, 4, 5)
            pairs = getattr(genotype, cell)
            for node in range(4):
                (op_a, a), (op_b, b) = pairs[2 * node:2 * node + 2]
                assert a != b, (genotype, cell, node)       # two distinct inputs
                assert 0 <= a < node + 2 and 0 <= b < node + 2  # cell inputs or earlier nodes
                assert op_a in OPS and op_b in OPS           # the space's ops, never 'none'


def _chi_square(counts, expected) -> tuple[float, int]:
    counts, expected = np.asarray(counts, float), np.asarray(expected, float)
    return float(np.sum((counts - expected) ** 2 / expected)), len(counts) - 1


def test_random_cells_have_uniform_marginals():
    """Pearson's chi-square at a fixed seed (seeds 0..999), threshold p > 0.001.

    Ops: 16,000 draws over 7 ops (6 dof). Inputs: for each cell type and node i, the
    unordered pair of inputs is uniform over the C(i+2, 2) pairs (1, 3, 6, 10 pairs; the
    statistics of the 8 (cell, node) tables are summed, 36 dof), which also makes each
    input's marginal 2 / (i + 2). A correct sampler fails with probability 0.001 for a
    random seed; it is fixed here, so the test is deterministic. The power, on expected
    counts: one op drawn 15% too often (weights 1.15 : 1 : ... : 1), or an input that is
    never drawn (an off-by-one leaving out the newest node), gives p < 1e-6.
    """
    ops = [op for g in CELLS for cell in (g.normal, g.reduce) for op, _ in cell]
    counts = [ops.count(op) for op in OPS]
    stat, dof = _chi_square(counts, [len(ops) / len(OPS)] * len(OPS))
    assert stats.chi2.sf(stat, dof) > 1e-3, counts
    biased = np.array([1.15] + [1.0] * 6) / 7.15 * len(ops)
    assert stats.chi2.sf(*_chi_square(biased, [len(ops) / 7] * 7)) < 1e-6

    total_stat, total_dof = 0.0, 0
    for cell, node in itertools.product(("normal", "reduce"), range(4)):
        pairs = list(itertools.combinations(range(node + 2), 2))
        drawn = [tuple(sorted(j for _, j in getattr(g, cell)[2 * node:2 * node + 2]))
                 for g in CELLS]
        pair_counts = [drawn.count(p) for p in pairs]
        stat, dof = _chi_square(pair_counts, [len(CELLS) / len(pairs)] * len(pairs))
        total_stat, total_dof = total_stat + stat, total_dof + dof
        inputs = [j for p in drawn for j in p]
        for j in range(node + 2):  # the marginal: within 4 binomial std of 2000 / (i + 2)
            p = 2 / (node + 2)
            assert abs(inputs.count(j) - len(CELLS) * p) <= 4 * math.sqrt(len(CELLS) * p * (1 - p))
    assert total_dof == 2 * (0 + 2 + 5 + 9)
    assert stats.chi2.sf(total_stat, total_dof) > 1e-3, total_stat
    pairs = list(itertools.combinations(range(5), 2))  # node 3 never drawing input 4
    missing = [0.0 if 4 in p else len(CELLS) / 6 for p in pairs]
    assert stats.chi2.sf(*_chi_square(missing, [len(CELLS) / 10] * 10)) < 1e-6


def test_random_cells_are_seeded_and_checked():
    assert random_genotype(5) == random_genotype(5) != random_genotype(6)
    rng = np.random.default_rng(5)
    assert random_genotype(rng) == random_genotype(5) != random_genotype(rng)  # rng advances
    small = random_genotype(1, num_nodes=2, primitives=("none", "skip_connect", "max_pool_3x3"))
    assert small.num_nodes == 2 and {op for op, _ in small.normal + small.reduce} <= {
        "skip_connect", "max_pool_3x3"}
    with pytest.raises(GenotypeError, match="num_nodes"):
        random_genotype(0, num_nodes=0)
    with pytest.raises(GenotypeError, match="besides 'none'"):
        random_genotype(0, primitives=("none",))
    with pytest.raises(GenotypeError, match="unknown ops"):
        random_genotype(0, primitives=("conv_7x7",))
    with pytest.raises(GenotypeError, match="seed"):
        random_genotype(-1)


# RandomCellOracle ------------------------------------------------------------------------


def test_random_cell_oracle_trials_are_random_cells_without_search(tmp_path):
    from trainers import data  # pylint: disable=import-outside-toplevel
    from trainers.search import tuner as tuner_lib  # pylint: disable=import-outside-toplevel
    from configs import SearchConfig  # pylint: disable=import-outside-toplevel

    images, labels = zip(*data.eval_data("digits", batch_size=512, split="train"))
    x, y = np.concatenate(images)[:192], np.concatenate(labels)[:192]
    config = SearchConfig(dataset="digits", init_channels=4, num_cells=3, num_nodes=2)
    tuner = tuner_lib.DartsTuner(
        tuner_lib.DartsHyperModel(10, input_channels=1, init_channels=4, num_cells=3), config,
        oracle=tuner_lib.RandomCellOracle(max_trials=2, seed=3), directory=str(tmp_path),
        project_name="random", overwrite=True)
    tuner.search(x[:128], y[:128], validation_data=(x[128:], y[128:]), epochs=1,
                 batch_size=32, verbose=0)

    trials = tuner.oracle.trials
    assert sorted(trials) == ["0", "1"] and all(t.status == "COMPLETED" for t in trials.values())
    cells = [Genotype.from_json(trials[t].hyperparameters.get("genotype")) for t in "01"]
    assert cells[0] != cells[1]
    seeds = [trials[t].hyperparameters.get("seed") for t in "01"]
    assert seeds == [tuner_lib.DartsOracle(seed=3).trial_seed(i) for i in range(2)]
    # Deterministic: trial i's cell is random_genotype of its seed, in the tuner's space.
    assert cells == [random_genotype(s, num_nodes=2, primitives=PRIMITIVES) for s in seeds]
    for trial_id in "01":  # no search ran: no search files in the trial's directory
        assert not os.path.exists(os.path.join(tuner.get_trial_dir(trial_id), "genotype.json"))
    assert tuner.oracle.get_best_trials()[0].score is not None  # scored by the proxy training

    resumed = tuner_lib.DartsTuner(  # KerasTuner's resume: only the missing trial is left
        tuner_lib.DartsHyperModel(10, input_channels=1, init_channels=4, num_cells=3), config,
        oracle=tuner_lib.RandomCellOracle(max_trials=3, seed=3), directory=str(tmp_path),
        project_name="random", overwrite=False)
    assert resumed.remaining_trials == 1 and sorted(resumed.oracle.trials) == ["0", "1"]
    third = resumed.oracle.create_trial("resumed").hyperparameters
    assert third.get("seed") not in seeds
    assert Genotype.from_json(third.get("genotype")) == random_genotype(third.get("seed"), 2)

    again = tuner_lib.RandomCellOracle(max_trials=2, seed=3, num_nodes=2, primitives=PRIMITIVES)
    again._set_project_dir(str(tmp_path), "again")  # pylint: disable=protected-access
    assert Genotype.from_json(again.create_trial("t").hyperparameters.get("genotype")) == cells[0]

    with pytest.raises(ValueError, match="belong to the oracle"):
        tuner_lib.DartsTuner(tuner_lib.DartsHyperModel(10), config, max_trials=3,
                             oracle=tuner_lib.RandomCellOracle(), directory=str(tmp_path))
    with pytest.raises(ValueError, match="num_nodes=3"):
        tuner_lib.DartsTuner(tuner_lib.DartsHyperModel(10), config,
                             oracle=tuner_lib.RandomCellOracle(num_nodes=3),
                             directory=str(tmp_path))


def test_fold_pipeline_is_the_retraining_pipeline():
    """train_data_from_arrays on the digits training arrays = train_data, byte for byte."""
    from trainers import data  # pylint: disable=import-outside-toplevel

    (x, y), _ = data.digits_arrays()
    ours = list(data.train_data_from_arrays(x, y, data.get_spec("digits"), batch_size=256,
                                            seed=3, epoch=1))
    theirs = list(data.train_data("digits", batch_size=256, seed=3, epoch=1))
    assert len(ours) == len(theirs) == 5
    for (a, b), (c, d) in zip(ours, theirs):
        np.testing.assert_array_equal(a.numpy(), c.numpy())
        np.testing.assert_array_equal(b.numpy(), d.numpy())


# bench/quality.py ------------------------------------------------------------------------

TINY = ["--methods=darts_1st,random,spread", "--seeds=0", "--limit=200", "--folds=2",
        "--retrain_epochs=1", "--random_trials=1", "--random_epochs=1", "--spread_seeds=0,1",
        "--search_set", "epochs=1", "--search_set", "steps_per_epoch=1", "--search_set",
        "batch_size=32", "--search_set", "init_channels=4", "--search_set", "num_cells=3",
        "--search_set", "num_nodes=1", "--search_set", "monitor_iterations=1",
        "--search_set", "monitor_chunk=null", "--retrain_set", "init_channels=4",
        "--retrain_set", "num_cells=3", "--retrain_set", "batch_size=32",
        "--retrain_set", "steps_per_epoch=2"]


def _quality(*args):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quality.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(name="study", scope="module")
def fixture_study(tmp_path_factory):
    """The tiny study, run through the script's main() in this process (a subprocess would
    start TensorFlow again); `--report` below runs as a subprocess, from the command line."""
    out_dir = tmp_path_factory.mktemp("quality") / "study"
    quality.main([f"--out_dir={out_dir}", *TINY])
    return out_dir


def _records(out_dir):
    return [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]


def test_tiny_study_records_every_unit(study):
    records = _records(study)
    units = sorted(quality_report.key(r) for r in records)
    assert units == sorted(
        [("search", "darts_1st", 0, None, None, None), ("search", "random", 0, None, None, None)]
        + [("retrain", m, 0, None, 0, f) for m in ("darts_1st", "random") for f in (0, 1)]
        + [("retrain", "spread", None, "DARTS_V2", r, f) for r in (0, 1) for f in (0, 1)])
    for r in records:
        assert r["cpu_s"] > 0 and r["wall_s"] > 0
        genotype = Genotype.from_dict(r["genotype"])
        if r["kind"] == "search":
            assert genotype.num_nodes == 1 and set(r["monitor"]) == set(quality_report.MONITOR)
        else:
            assert r["test_count"] == 100 and r["train_count"] == 100  # 2 folds of 200
            assert 0 <= r["errors"] <= 100 and r["params"] > 0 and r["epochs"] == 1
    darts = next(r for r in records if r["kind"] == "search" and r["method"] == "darts_1st")
    assert darts["monitor"]["hessian_eigenvalue"] is not None and darts["epochs"] == 1
    random = next(r for r in records if r["kind"] == "search" and r["method"] == "random")
    assert random["trials"] == 1 and random["monitor"]["hessian_eigenvalue"] is None
    folds = {r["fold"]: r for r in records if r["kind"] == "retrain"
             and r["method"] == "spread" and r["retrain_seed"] == 0}
    assert folds[0]["genotype"] == folds[1]["genotype"]


def _expected(records):
    """Per method: the mean over search seeds of the cells' pooled errors, computed here."""
    cells = {}
    for r in records:
        if r["kind"] == "retrain":
            name = (r["method"], r["seed"], r["retrain_seed"])
            errors, count = cells.get(name, (0, 0))
            cells[name] = (errors + r["errors"], count + r["test_count"])
    return {name: 100.0 * e / c for name, (e, c) in cells.items()}


def test_report_rebuilds_the_table_from_the_jsonl(study, tmp_path):
    copy = tmp_path / "QUALITY.md"
    text = open(os.path.join(ROOT, "QUALITY.md"), encoding="utf-8").read()
    start = text.index(quality_report.BEGIN) + len(quality_report.BEGIN)
    copy.write_text(text[:start] + "\n" + text[text.index(quality_report.END):])
    assert "| darts_1st |" not in copy.read_text()
    _quality(f"--out_dir={study}", "--report", f"--quality_md={copy}",
             f"--plot={tmp_path / 'plot.png'}")

    rebuilt = copy.read_text()
    assert rebuilt.replace(rebuilt[rebuilt.index(quality_report.BEGIN):
                                  rebuilt.index(quality_report.END)], "") == \
        text.replace(text[text.index(quality_report.BEGIN):text.index(quality_report.END)], "")
    expected = _expected(_records(study))
    rows = {}  # the method table's rows (the per-run table below starts the same way)
    for line in rebuilt.splitlines():
        for m in ("darts_1st", "random", "darts_2nd"):
            if line.startswith(f"| {m} | "):
                rows.setdefault(m, line.split("|")[1:-1])
    for method in ("darts_1st", "random"):
        cells = [c.strip() for c in rows[method]]
        assert cells[1] == "1"  # one search seed
        assert float(cells[2]) == pytest.approx(expected[(method, 0, 0)], abs=0.005)
    assert [c.strip() for c in rows["darts_2nd"]][1:3] == ["0", "—"]
    run_line = next(line for line in rebuilt.splitlines() if line.startswith("| random | 0 | "))
    assert f"| {expected[('random', 0, 0)]:.2f} |" in run_line
    spread = [expected[("spread", None, r)] for r in (0, 1)]
    line = next(line for line in rebuilt.splitlines() if line.startswith("Evaluation spread"))
    assert f"test error % {spread[0]:.2f}, {spread[1]:.2f}" in line
    assert f"std {np.std(spread, ddof=1):.2f}" in line
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (study / "quality.md").read_text() in rebuilt


def test_second_run_does_no_new_work(study, capsys):
    before = (study / "results.jsonl").read_bytes()
    capsys.readouterr()
    quality.main([f"--out_dir={study}", *TINY])
    assert (study / "results.jsonl").read_bytes() == before
    assert "[quality] (" not in capsys.readouterr().err  # no unit ran


def test_another_protocol_is_refused(tmp_path):
    args = quality.parse_args([f"--out_dir={tmp_path}"])
    quality.check_protocol(tmp_path, quality.protocol_of(args))
    quality.check_protocol(tmp_path, quality.protocol_of(args))  # the same: accepted
    other = quality.parse_args([f"--out_dir={tmp_path}", "--folds=3"])
    with pytest.raises(SystemExit, match=r"fields \['folds'\]"):
        quality.check_protocol(tmp_path, quality.protocol_of(other))


def test_summary_statistics():
    row = quality_report.interval([1.0, 2.0, 3.0])
    assert row["mean"] == 2.0 and row["std"] == 1.0
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert row["ci"] == pytest.approx((2 - half, 2 + half))
    assert quality_report.interval([4.0])["ci"] is None


def test_bf16_method_is_darts_1st_with_bfloat16_and_optional():
    study = quality.Study.__new__(quality.Study)  # the configs only: no data loaded
    args = quality.parse_args(["--out_dir=unused"])
    study.protocol = quality.protocol_of(args)
    f32, bf16 = study.search_config("darts_1st", 3), study.search_config("darts_1st_bf16", 3)
    assert f32.mixed_precision is None and bf16.mixed_precision == "mixed_bfloat16"
    assert bf16.replace(mixed_precision=None) == f32
    assert "darts_1st_bf16" not in args.methods.split(",")  # not in a default study
    assert quality.parse_args(["--out_dir=x", "--methods=darts_1st_bf16"]).methods == \
        "darts_1st_bf16"
    # The report lists it only once one of its searches is recorded.
    protocol = {**study.protocol, "folds": 1}
    search = {"kind": "search", "method": "darts_1st", "seed": 0, "cpu_s": 1.0, "wall_s": 2.0,
              "monitor": dict.fromkeys(quality_report.MONITOR)}
    retrain = {"kind": "retrain", "method": "darts_1st", "seed": 0, "cell": None,
               "retrain_seed": 0, "fold": 0, "errors": 3, "test_count": 100, "params": 10}
    methods = [r["method"] for r in quality_report.summarize([search, retrain], protocol)["methods"]]
    assert "darts_1st_bf16" not in methods and methods[0] == "darts_1st"
    records = [search, retrain, {**search, "method": "darts_1st_bf16"},
               {**retrain, "method": "darts_1st_bf16", "errors": 5}]
    rows = {r["method"]: r for r in quality_report.summarize(records, protocol)["methods"]}
    assert rows["darts_1st"]["mean"] == 3.0 and rows["darts_1st_bf16"]["mean"] == 5.0


# bench/compare_searches.py --------------------------------------------------------------


def _search_dir(path, normal, reduce, genotype):
    path.mkdir(parents=True)
    for epoch, scale in ((0, 0.0), (1, 1.0)):  # the last epoch is the one compared
        weights = {"alpha_normal": (scale * np.asarray(normal)).tolist(),
                   "alpha_reduce": (scale * np.asarray(reduce)).tolist()}
        (path / f"epoch_{epoch}.json").write_text(json.dumps({"arch_weights": weights}))
    (path / "genotype.json").write_text(json.dumps(genotype.to_dict()))
    return path


def test_compare_searches_counts_agreement(tmp_path, capsys):
    import compare_searches  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    a_n, a_r = rng.random((14, 8)), rng.random((14, 8))
    b_n, b_r = a_n.copy(), a_r.copy()
    # Normal: edges 0-2 swap their two strongest non-`none` ops (top op differs there).
    for e in range(3):
        order = np.argsort(-a_n[e, 1:]) + 1
        b_n[e, order[0]], b_n[e, order[1]] = a_n[e, order[1]], a_n[e, order[0]]
    b_r = 1.0 - a_r  # reduce: every rank reversed: rho = -1 on every edge
    g = random_genotype(0)
    h = Genotype.from_dict({**g.to_dict(), "normal": [list(p) for p in g.normal[:2]]
                            + [list(p) for p in random_genotype(1).normal[2:]]})
    expected_shared = 8 + 2 + sum(  # reduce all 8, normal node 0, then what nodes 1-3 share
        len([p for p in g.normal[i:i + 2] if p in h.normal[i:i + 2]]) for i in (2, 4, 6))
    for seed, (n, r, gen) in enumerate(((a_n, a_r, g), (b_n, b_r, h))):
        _search_dir(tmp_path / "a" / f"s{seed}", n, r, g)
        _search_dir(tmp_path / "b" / f"s{seed}", n if seed else b_n, r if seed else b_r, gen)
    # seed 0: a = (a_n, a_r, g), b = (b_n, b_r, g); seed 1: a = (b_n, b_r, g), b = (.., h).
    result = compare_searches.main([f"--a={tmp_path}/a/s{{seed}}",
                                    f"--b={tmp_path}/b/s{{seed}}", "--seeds=0,1"])
    same = result["same_seed"]
    assert same["0"]["top_op_normal"] == pytest.approx(11 / 14)
    assert same["0"]["top_op_reduce"] == pytest.approx(
        np.mean(np.argmax(a_r[:, 1:], 1) == np.argmin(a_r[:, 1:], 1)))
    assert same["0"]["rho_reduce"] == pytest.approx(-1.0)
    ranks = lambda x: np.argsort(np.argsort(x))  # no ties in random floats
    rho = np.mean([np.corrcoef(ranks(x), ranks(y))[0, 1] for x, y in zip(a_n, b_n)])
    assert same["0"]["rho_normal"] == pytest.approx(rho) and rho < 1.0
    assert same["0"]["genotype"] == 1.0
    assert same["1"]["top_op_normal"] == 1.0 and same["1"]["rho_reduce"] == pytest.approx(1.0)
    assert same["1"]["genotype"] == pytest.approx(expected_shared / 16) and expected_shared < 16
    assert result["other_seed"]["0,1"]["top_op_normal"] == pytest.approx(11 / 14)
    table = capsys.readouterr().out
    assert "| seed 0: a / b | 0.786 |" in table and "other seed** (1 pairs)" in table
    with pytest.raises(SystemExit, match="no epoch_N.json"):
        compare_searches.main([f"--a={tmp_path}/none", f"--b={tmp_path}/none", "--seeds=0"])
