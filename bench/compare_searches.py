r"""How much two searches agree: their last epoch's alphas and their genotypes.

    python bench/compare_searches.py --a=runs/f32/seed_{seed}/search \
        --b=runs/bf16/seed_{seed}/search --seeds=0,1,2,3,4

For each seed, the search work directory `--a` (with `{seed}` replaced) against `--b`'s;
then, as the scale to read those numbers against, every pair of `--a`'s own seeds (the
same search with another seed). Per pair and cell type (the alpha matrices of the last
epoch_N.json's `arch_weights`, rows = edges, columns = primitives):

- top op: the share of edges whose strongest op other than `none` is the same;
- rank correlation: Spearman's rho between the two rows of weights of an edge, averaged
  over the edges (every primitive ranked, `none` included);
- genotype: the share of the genotypes' (op, input) pairs found in both (per node, as sets).

Written for issue 15's check that `mixed_bfloat16` finds what float32 finds; it compares
any two sets of DARTS supernet searches (strategies, machines, versions). Prints a Markdown
table and, with `--json`, one JSON line.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CELLS = ("normal", "reduce")


def last_epoch(workdir: Path) -> dict:
    """The last epoch_N.json of a search work directory."""
    epochs = sorted(workdir.glob("epoch_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    if not epochs:
        raise SystemExit(f"{workdir}: no epoch_N.json (not a search work directory, or no "
                         "epoch finished)")
    return json.loads(epochs[-1].read_text())


def cell_weights(workdir: Path) -> dict[str, np.ndarray]:
    """{"normal": (edges, primitives), "reduce": ...}: softmax(alpha) of the last epoch."""
    record = last_epoch(workdir)
    found = {}
    for name, values in record.get("arch_weights", {}).items():
        leaf = name.rsplit("/", 1)[-1].split(":")[0]
        for cell in CELLS:
            if leaf == f"alpha_{cell}":
                found[cell] = np.asarray(values, np.float64)
    missing = [c for c in CELLS if c not in found]
    if missing:
        raise SystemExit(f"{workdir}: the last epoch's arch_weights has no alpha_{missing[0]} "
                         f"(names: {sorted(record.get('arch_weights', {}))})")
    return found


def genotype(workdir: Path):
    from darts_tf import load_genotype  # pylint: disable=import-outside-toplevel

    return load_genotype(str(workdir / "genotype.json"))


def top_op_agreement(a: np.ndarray, b: np.ndarray, primitives) -> float:
    """Share of rows whose argmax over the primitives other than `none` is the same."""
    keep = [i for i, p in enumerate(primitives) if p != "none"]
    return float(np.mean(np.argmax(a[:, keep], axis=1) == np.argmax(b[:, keep], axis=1)))


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho between matching rows (ties ranked by their mean rank), averaged."""
    from scipy import stats  # pylint: disable=import-outside-toplevel

    return float(np.mean([stats.spearmanr(x, y).statistic for x, y in zip(a, b)]))


def genotype_agreement(g, h) -> float:
    """Share of (op, input) pairs both genotypes pick, node by node (a node's two as a set)."""
    shared = total = 0
    for cell in CELLS:
        mine, theirs = getattr(g, cell), getattr(h, cell)
        for node in range(0, len(mine), 2):
            x, y = list(mine[node:node + 2]), list(theirs[node:node + 2])
            for pair in x:
                if pair in y:
                    y.remove(pair)
                    shared += 1
            total += len(x)
    return shared / total


def compare(dir_a: Path, dir_b: Path) -> dict:
    """The agreement of two search work directories, per cell type and overall."""
    from darts_tf.genotype import PRIMITIVES  # pylint: disable=import-outside-toplevel

    wa, wb = cell_weights(dir_a), cell_weights(dir_b)
    out = {}
    for cell in CELLS:
        if wa[cell].shape != wb[cell].shape:
            raise SystemExit(f"alpha_{cell}: {dir_a} has shape {wa[cell].shape}, {dir_b} "
                             f"{wb[cell].shape}: not the same search space")
        if wa[cell].shape[1] != len(PRIMITIVES):
            raise SystemExit(f"{dir_a}: alpha_{cell} has {wa[cell].shape[1]} columns, the "
                             f"DARTS space {len(PRIMITIVES)}")
        out[f"top_op_{cell}"] = top_op_agreement(wa[cell], wb[cell], PRIMITIVES)
        out[f"rho_{cell}"] = rank_correlation(wa[cell], wb[cell])
    out["genotype"] = genotype_agreement(genotype(dir_a), genotype(dir_b))
    return out


FIELDS = ("top_op_normal", "top_op_reduce", "rho_normal", "rho_reduce", "genotype")


def _row(label: str, values: dict) -> str:
    return f"| {label} | " + " | ".join(f"{values[k]:.3f}" for k in FIELDS) + " |"


def _mean(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in FIELDS}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="search work directory, with {seed}")
    parser.add_argument("--b", required=True, help="the other one, with {seed}")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    a_of = {s: Path(args.a.format(seed=s)) for s in seeds}
    b_of = {s: Path(args.b.format(seed=s)) for s in seeds}
    same = {s: compare(a_of[s], b_of[s]) for s in seeds}
    across = {(s, t): compare(a_of[s], a_of[t]) for s, t in itertools.combinations(seeds, 2)}
    lines = ["| pair | top op, normal | top op, reduce | rank corr., normal | "
             "rank corr., reduce | genotype pairs shared |", "|---|---|---|---|---|---|"]
    lines += [_row(f"seed {s}: a / b", v) for s, v in same.items()]
    lines.append(_row("**mean, a / b, same seed**", _mean(list(same.values()))))
    if across:
        lines.append(_row(f"**mean, a / a, other seed** ({len(across)} pairs)",
                          _mean(list(across.values()))))
    print("\n".join(lines))
    result = {"a": args.a, "b": args.b, "same_seed": {str(s): v for s, v in same.items()},
              "other_seed": {f"{s},{t}": v for (s, t), v in across.items()}}
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
