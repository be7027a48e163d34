r"""Side by side with the PyTorch reference: step time, start-up and peak memory, alternated.

    python bench/compare_reference.py --reference_dir=/tmp/darts/cnn \
        --torch_python=/tmp/torchenv/bin/python --rounds=2 --output=/tmp/compare.jsonl

The reference (quark0/darts, its `cnn/` directory) is NOT part of this repository: give a
checkout of it (`git clone https://github.com/quark0/darts /tmp/darts`) and a Python that has
torch (outside this project's environment, e.g. `python -m venv /tmp/torchenv &&
/tmp/torchenv/bin/pip install torch numpy`). Its modules are imported unmodified at run
time; the only changes are made in memory, in the reference's process, so that its
GPU-only code runs on a CPU: `.cuda()` on tensors and modules returns them unchanged,
`torch.cuda.FloatTensor` (its drop path's mask) allocates on the CPU, and an empty
`torchvision` stands in when torchvision is not installed (its `utils.py` imports the
transforms, which a step never uses).

Configurations (`--configs`, each `ORDER,BATCH`; the default is all four of issue 15):
  first_order,16  second_order_fd,16  first_order,64  second_order_fd,64
on the reference search network (C=16, 8 cells, 4 nodes, 32x32x3, 10 classes), one full
search step each (the architecture step on a validation batch, then the weight step with
gradient clipping), the reference's hyperparameters on both sides. `--retrain` adds the
retraining step (NetworkCIFAR DARTS_V2, C=36, 20 cells, auxiliary head, drop path 0.1,
batch 96; quark0's train.py against trainers/retrain's step, without the export).

Both sides draw the same batches (numpy default_rng(0), NHWC here and transposed to NCHW
for torch), each configuration runs in a fresh process per side, and the sides alternate
(the side that goes first swaps every round), so that drift of the machine's load falls on
both. Per run: start-up (process start to the end of the first step, from /proc), median
step after the first, peak RSS; the load average before and after each run. At the end: the
medians over rounds and the ratios (reference / ours for time, ours / reference for memory),
as JSON lines and as a Markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import proc_clock  # noqa: E402  pylint: disable=wrong-import-position

DEFAULT_CONFIGS = ("first_order,16", "second_order_fd,16", "first_order,64", "second_order_fd,64")
ORDERS = ("first_order", "second_order_fd")
# The reference's search hyperparameters (train_search.py's defaults), used on both sides.
LR, MOMENTUM, WEIGHT_DECAY, ARCH_LR, ARCH_WEIGHT_DECAY, GRAD_CLIP = (
    0.025, 0.9, 3e-4, 3e-4, 1e-3, 5.0)


def batches(batch: int, steps: int, shape=(32, 32, 3), pairs: bool = True):
    """The benchmark's batches, as search_step.py and retrain_step.py draw them (NHWC)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)

    def one():
        return (rng.normal(size=(batch, *shape)).astype(np.float32),
                rng.integers(0, 10, size=batch).astype(np.int64))
    for _ in range(steps):
        yield (one(), one()) if pairs else one()


# ----- the reference's side (run by --torch_python; imports no TensorFlow) -----

def _import_reference(reference_dir: str):
    import types  # pylint: disable=import-outside-toplevel

    import torch  # pylint: disable=import-outside-toplevel
    if not os.path.isfile(os.path.join(reference_dir, "model_search.py")):
        raise SystemExit(f"--reference_dir={reference_dir!r} holds no model_search.py: give the "
                         "`cnn` directory of a quark0/darts checkout")
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.cuda.FloatTensor = lambda *size: torch.empty(*size)
    try:
        import torchvision  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")
        sys.modules.update({"torchvision": stub, "torchvision.transforms": stub.transforms})
    sys.path.insert(0, os.path.abspath(reference_dir))
    return torch


def reference_search(reference_dir: str, order: str, batch: int, steps: int) -> dict:
    torch = _import_reference(reference_dir)
    from torch import nn  # pylint: disable=import-outside-toplevel
    import architect  # pylint: disable=import-outside-toplevel,import-error
    import model_search  # pylint: disable=import-outside-toplevel,import-error

    torch.manual_seed(0)
    criterion = nn.CrossEntropyLoss()
    model = model_search.Network(16, 10, 8, criterion)
    optimizer = torch.optim.SGD(model.parameters(), LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    args = argparse.Namespace(momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                              arch_learning_rate=ARCH_LR, arch_weight_decay=ARCH_WEIGHT_DECAY)
    arch = architect.Architect(model, args)
    model.train()

    def step(xt, yt, xv, yv):
        # train_search.py's train(): the architecture step, then the weight step.
        arch.step(xt, yt, xv, yv, LR, optimizer, unrolled=order != "first_order")
        optimizer.zero_grad()
        loss = criterion(model(xt), yt)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        return loss
    return _time_steps(torch, step, ((*_nchw(torch, *t), *_nchw(torch, *v))
                                     for t, v in batches(batch, steps)))


def reference_retrain(reference_dir: str, batch: int, steps: int) -> dict:
    torch = _import_reference(reference_dir)
    from torch import nn  # pylint: disable=import-outside-toplevel
    import genotypes  # pylint: disable=import-outside-toplevel,import-error
    import model  # pylint: disable=import-outside-toplevel,import-error

    torch.manual_seed(0)
    criterion = nn.CrossEntropyLoss()
    network = model.NetworkCIFAR(36, 10, 20, True, genotypes.DARTS_V2)
    network.drop_path_prob = 0.2 * 300 / 600  # mid-run, as retrain_step.py's set_epoch(300)
    optimizer = torch.optim.SGD(network.parameters(), LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    network.train()

    def step(x, y):
        # train.py's train(): auxiliary weight 0.4, clipping at 5.
        optimizer.zero_grad()
        logits, logits_aux = network(x)
        loss = criterion(logits, y) + 0.4 * criterion(logits_aux, y)
        loss.backward()
        nn.utils.clip_grad_norm_(network.parameters(), GRAD_CLIP)
        optimizer.step()
        return loss
    return _time_steps(torch, step, (_nchw(torch, *b) for b in batches(batch, steps, pairs=False)))


def _nchw(torch, x, y):
    """A numpy NHWC batch as torch tensors, NCHW."""
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)


def _time_steps(torch, step, inputs) -> dict:
    """Times `step(*tensors)` per batch (batches are converted outside the timing)."""
    times, startup = [], None
    for tensors in inputs:
        start = time.time()
        float(step(*tensors))
        times.append(time.time() - start)
        startup = startup or proc_clock.process_age_s()
    return _figures(times, startup, torch_threads=torch.get_num_threads(),
                    torch_version=torch.__version__)


def _figures(times, startup, **extra) -> dict:
    median = _median(times[1:])
    return {"startup_s": round(startup, 2), "first_step_s": round(times[0], 2),
            "step_s_median": round(median, 3) if median is not None else None,
            "steps_timed": len(times) - 1, "peak_rss_gb": round(proc_clock.peak_rss_gb(), 2),
            **extra}


# ----- the parent: alternate the two sides -----

def _command(side: str, config: str, args) -> list[str]:
    if side == "reference":
        return [args.torch_python, os.path.abspath(__file__), f"--child={config}",
                f"--reference_dir={args.reference_dir}", f"--steps={args.steps}"]
    if config.startswith("retrain"):
        batch = config.split(",")[1]
        return [sys.executable, os.path.join(HERE, "retrain_step.py"), f"--batch={batch}",
                f"--steps={args.steps}", "--no-export"]
    return [sys.executable, os.path.join(HERE, "search_step.py"), f"--one={config}",
            f"--steps={args.steps}"]


def run_side(side: str, config: str, args) -> dict:
    load = os.getloadavg()[0]
    out = subprocess.run(_command(side, config, args), capture_output=True, text=True,
                         check=False)
    record = {"side": side, "config": config, "load_before": round(load, 2),
              "load_after": round(os.getloadavg()[0], 2)}
    if out.returncode != 0:
        record["error"] = out.stderr.strip()[-1500:]
        return record
    result = json.loads(out.stdout.strip().splitlines()[-1])
    keep = ("startup_s", "first_step_s", "step_s_median", "steps_timed", "peak_rss_gb",
            "torch_threads", "torch_version", "images_per_s")
    record.update({k: result[k] for k in keep if k in result})
    return record


def _median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summarize(records: list[dict]) -> list[dict]:
    """Per configuration: each side's medians over its rounds and the ratios."""
    rows = []
    for config in dict.fromkeys(r["config"] for r in records):
        row = {"config": config}
        for side in ("reference", "ours"):
            runs = [r for r in records if r["config"] == config and r["side"] == side
                    and "error" not in r]
            row[side] = {k: _median([r.get(k) for r in runs])
                         for k in ("step_s_median", "startup_s", "peak_rss_gb")}
            row[side]["runs"] = len(runs)
        ref, ours = row["reference"], row["ours"]
        if ref["runs"] and ours["runs"]:
            row["step_speedup"] = round(ref["step_s_median"] / ours["step_s_median"], 2)
            row["startup_ratio"] = round(ours["startup_s"] / ref["startup_s"], 2)
            row["rss_ratio"] = round(ours["peak_rss_gb"] / ref["peak_rss_gb"], 2)
        rows.append(row)
    return rows


def markdown(rows: list[dict], records: list[dict]) -> str:
    lines = ["| configuration | reference step (s) | ours step (s) | speed-up | reference start-up"
             " (s) | ours start-up (s) | start-up ours/ref | reference RSS (GB) | ours RSS (GB) |"
             " RSS ours/ref |", "|---" * 10 + "|"]
    for row in rows:
        def each(side, key, digits):
            values = [r.get(key) for r in records if r["config"] == row["config"]
                      and r["side"] == side and "error" not in r]
            return ", ".join(f"{v:.{digits}f}" for v in values) or "failed"
        lines.append(
            f"| {row['config']} | {each('reference', 'step_s_median', 2)} | "
            f"{each('ours', 'step_s_median', 2)} | {row.get('step_speedup', '-')}x | "
            f"{each('reference', 'startup_s', 1)} | {each('ours', 'startup_s', 1)} | "
            f"{row.get('startup_ratio', '-')}x | {each('reference', 'peak_rss_gb', 2)} | "
            f"{each('ours', 'peak_rss_gb', 2)} | {row.get('rss_ratio', '-')}x |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference_dir", help="the cnn/ directory of a quark0/darts checkout")
    parser.add_argument("--torch_python", default="python",
                        help="a Python with torch (and numpy) for the reference's side")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        help="ORDER,BATCH with ORDER in " + ", ".join(ORDERS))
    parser.add_argument("--retrain", action="store_true",
                        help="also the retraining step at batch 96 (config retrain,96)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="steps per run (the first is "
                        "start-up; the median is over the others)")
    parser.add_argument("--output", help="append every record and the summary (JSON lines)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.reference_dir:
        parser.error("--reference_dir is required (the cnn/ directory of quark0/darts)")

    if args.child:  # in the reference's process
        kind, batch = args.child.split(",")
        if kind == "retrain":
            result = reference_retrain(args.reference_dir, int(batch), args.steps)
        else:
            result = reference_search(args.reference_dir, kind, int(batch), args.steps)
        print(json.dumps(result), flush=True)
        return

    for config in args.configs:
        order, _, batch = config.partition(",")
        if order not in ORDERS or not batch.isdigit():
            parser.error(f"--configs: {config!r} is not ORDER,BATCH with ORDER in {ORDERS}")
    configs = list(args.configs) + (["retrain,96"] if args.retrain else [])
    header = {"machine": proc_clock.cpu_model(), "uptime_before": _uptime(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    _emit(header, args.output)
    records = []
    for round_index in range(args.rounds):
        sides = ("reference", "ours") if round_index % 2 == 0 else ("ours", "reference")
        for config in configs:
            for side in sides:
                record = run_side(side, config, args)
                record["round"] = round_index + 1
                records.append(record)
                _emit(record, args.output)
    rows = summarize(records)
    for row in rows:
        _emit({"summary": row}, args.output)
    _emit({"uptime_after": _uptime()}, args.output)
    print(markdown(rows, records))


def _uptime() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return "load average " + " ".join(f.read().split()[:3])


def _emit(record: dict, output: str | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if output:
        with open(output, "a", encoding="utf-8") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
