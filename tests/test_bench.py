"""The benchmarks' own logic: the side-by-side benchmark's arithmetic, lockstep and profile
tables (bench/compare_reference.py), the process clock (bench/proc_clock.py), the allocator
replay (bench/profile_step.py) and the 1x1 conv kernels' comparison (bench/pointwise_conv.py).
Timings themselves are not asserted: they live in BENCHMARKS.md."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import compare_reference  # noqa: E402  pylint: disable=wrong-import-position


def _run(side, config, round_, step, startup, rss):
    return {"side": side, "config": config, "round": round_, "step_s_median": step,
            "startup_s": startup, "peak_rss_gb": rss}


def test_summary_takes_medians_over_rounds_and_the_ratios_of_the_medians():
    records = [
        _run("reference", "first_order,16", 1, 8.0, 12.0, 2.6),
        _run("ours", "first_order,16", 1, 2.0, 30.0, 2.0),
        _run("ours", "first_order,16", 2, 3.0, 40.0, 2.2),
        _run("reference", "first_order,16", 2, 10.0, 11.0, 2.8),
        _run("reference", "first_order,16", 3, 9.0, 13.0, 2.7),
        _run("ours", "first_order,16", 3, 2.5, 35.0, 2.1),
        {"side": "ours", "config": "second_order_fd,16", "round": 1, "error": "boom"},
        _run("reference", "second_order_fd,16", 1, 24.0, 26.0, 3.5),
    ]
    first, second = compare_reference.summarize(records)
    assert first["reference"] == {"step_s_median": 9.0, "startup_s": 12.0,
                                  "peak_rss_gb": 2.7, "runs": 3}
    assert first["ours"] == {"step_s_median": 2.5, "startup_s": 35.0, "peak_rss_gb": 2.1,
                             "runs": 3}
    assert first["step_speedup"] == 3.6          # 9.0 / 2.5
    assert first["startup_ratio"] == 2.92        # 35 / 12
    assert first["rss_ratio"] == 0.78            # 2.1 / 2.7
    # A failed side gives no ratio (and the table says so) instead of a made-up one.
    assert second["ours"]["runs"] == 0 and "step_speedup" not in second
    table = compare_reference.markdown([first, second], records)
    assert "| first_order,16 | 8.00, 10.00, 9.00 | 2.00, 3.00, 2.50 | 3.6x |" in table
    assert "| second_order_fd,16 | 24.00 | failed | -x |" in table


def test_process_age_counts_from_the_process_start():
    """The start-up clock includes the interpreter's start and the imports."""
    code = ("import time; time.sleep(0.6); import sys; sys.path.insert(0, sys.argv[1]); "
            "import proc_clock; print(proc_clock.process_age_s())")
    out = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "bench")],
                         capture_output=True, text=True, check=True)
    age = float(out.stdout)
    assert 0.6 <= age < 10.0


def test_configs_are_checked():
    try:
        compare_reference.main(["--reference_dir=/nonexistent", "--configs", "third_order,16"])
    except SystemExit as exit_:
        assert exit_.code == 2
    else:
        raise AssertionError("an unknown order was accepted")


def _allocation_trace(events):
    """An XSpace with allocator events as TensorFlow's profiler writes them: on a tf_Compute
    line, the op name as a reference to a stat metadata entry, the rest as integers."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel

    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    plane.event_metadata[1].name = "MemoryAllocation"
    plane.event_metadata[2].name = "MemoryDeallocation"
    for i, name in enumerate(("addr", "allocation_bytes", "bytes_allocated", "tf_op"), start=1):
        plane.stat_metadata[i].name = name
    ops = sorted({op for _, _, _, _, op in events if op})
    for j, op in enumerate(ops, start=100):
        plane.stat_metadata[j].name = op
    line = plane.lines.add(name="tf_Compute/1", timestamp_ns=1000)
    # Written out of time order: the summary must sort them.
    for offset, kind, addr, size_and_total, op in reversed(events):
        event = line.events.add(metadata_id=1 if kind == "alloc" else 2, offset_ps=offset)
        event.stats.add(metadata_id=1, uint64_value=addr)
        size, total = size_and_total
        if kind == "alloc":
            event.stats.add(metadata_id=2, int64_value=size)
        event.stats.add(metadata_id=3, int64_value=total)
        if op:
            event.stats.add(metadata_id=4, ref_value=100 + ops.index(op))
    return space


def test_memory_at_peak_replays_allocations_and_labels_the_live_tensors():
    import profile_step  # pylint: disable=import-outside-toplevel

    gb = 10 ** 9
    events = [  # (time, kind, address, (size, bytes in use after), op)
        (10, "alloc", 1, (2 * gb, 2 * gb), "cell_0_1/node_2_from_0_to_1_1/sep_conv_3x3_1/Conv2D"),
        (20, "alloc", 2, (1 * gb, 3 * gb), "cell_0_1/preprocess0_1/Conv2D"),
        (30, "free", 1, (0, 1 * gb), None),
        (40, "alloc", 3, (3 * gb, 4 * gb),
         "gradient_tape/cell_1_1/node_3_from_0_to_2_1/max_pool_3x3_1/MaxPoolGrad"),
        (50, "alloc", 4, (gb // 2, int(4.5 * gb)), "cell_1_1/concat"),
        (60, "free", 3, (0, int(1.5 * gb)), None),
        (70, "alloc", 5, (2 * gb, int(3.5 * gb)), "cell_2_1/node_2_from_0_to_1_1/sep_conv_3x3_1/Conv2D"),
    ]
    peak, live = profile_step.memory_at_peak(_allocation_trace(events))
    assert peak == 4.5
    assert dict(live) == {"preprocess0/Conv2D": 1 * gb,
                          "backward: max_pool_3x3/MaxPoolGrad": 3 * gb,
                          "concat": gb // 2}
    assert profile_step.memory_at_peak(_allocation_trace([])) == (None, {})


_FAKE_SIDE = r"""
import json, sys, time
side, fail_at = sys.argv[1], int(sys.argv[2])
walls = {"reference": [9.0, 8.0, 12.0], "ours": [3.0, 2.0, 2.0]}[side]
print("a line that is not JSON", flush=True)
print(json.dumps({"startup_s": 1.5, "first_step_s": 0.5}), flush=True)
for i, line in enumerate(sys.stdin):
    if line.strip() != "step":
        break
    if i == fail_at:
        sys.exit("boom at step %d" % i)
    with open(sys.argv[3], "a") as log:
        log.write(side + "\n")
    print(json.dumps({"wall_s": walls[i], "cpu_s": 2 * walls[i] - 1}), flush=True)
print(json.dumps({"peak_rss_gb": {"reference": 2.5, "ours": 1.25}[side]}), flush=True)
"""


def _lockstep(tmp_path, monkeypatch, fail_side=None, fail_at=-1):
    script = tmp_path / "side.py"
    script.write_text(_FAKE_SIDE)
    log = tmp_path / "order.log"
    monkeypatch.setattr(compare_reference, "_command", lambda side, config, args, lockstep: [
        sys.executable, str(script), side,
        str(fail_at if side == fail_side else -1), str(log)])
    args = compare_reference.argparse.Namespace(steps=3)
    records = compare_reference.run_lockstep("first_order,16", ("reference", "ours"), args)
    return records, log


def test_lockstep_alternates_the_sides_step_by_step_and_takes_the_pair_ratios(
        tmp_path, monkeypatch):
    records, log = _lockstep(tmp_path, monkeypatch)
    # Pairs alternate which side goes first: ref, ours | ours, ref | ref, ours.
    assert log.read_text().split() == ["reference", "ours", "ours", "reference", "reference",
                                       "ours"]
    ref, ours = records
    assert (ref["side"], ours["side"]) == ("reference", "ours")
    assert ref["step_s"] == [9.0, 8.0, 12.0] and ref["step_s_median"] == 9.0
    assert ours["step_s_median"] == 2.0 and ours["cpu_s_median"] == 3.0
    assert ref["startup_s"] == 1.5 and ours["peak_rss_gb"] == 1.25
    assert ours["pair_ratios"] == [3.0, 4.0, 6.0]
    assert ours["cpu_pair_ratios"] == [round(17 / 5, 3), 5.0, round(23 / 3, 3)]
    row, = compare_reference.summarize([{**r, "round": 1} for r in records])
    assert row["step_speedup"] == 4.5                     # 9.0 / 2.0, of the medians
    assert row["step_speedup_pairs"] == 4.0                 # the median pair
    assert row["pair_ratio_range"] == [3.0, 6.0]
    assert row["rss_ratio"] == 0.5
    table = compare_reference.markdown([row], records)
    assert "| 4.5x (pairs: 4.0x, 3.00-6.00x; CPU 5.0x) |" in table


@pytest.mark.parametrize("fail_side", ["reference", "ours"])
def test_lockstep_reports_a_failed_side_and_stops_the_other(tmp_path, monkeypatch, fail_side):
    records, _ = _lockstep(tmp_path, monkeypatch, fail_side=fail_side, fail_at=1)
    failed, = [r for r in records if "error" in r]
    assert failed["side"] == fail_side and "boom at step 1" in failed["error"]
    row, = compare_reference.summarize(records)
    assert row[fail_side]["runs"] == 0 and "step_speedup" not in row


@pytest.mark.parametrize("mode", ["cold", "warm"])
def test_step_cache_modes_reach_our_children_through_the_environment(monkeypatch, mode):
    """--step_cache: cold turns our children's cache off; warm gives them a new directory,
    filled first by one untimed run (2 steps) of each configuration of ours."""
    monkeypatch.setenv("DARTS_TF_STEP_CACHE", "unchanged")  # restored after the test
    calls = []
    monkeypatch.setattr(compare_reference, "run_side", lambda side, config, args: (
        calls.append((side, config, args.steps)) or {"startup_s": 40.0}))
    monkeypatch.setattr(compare_reference, "_emit", lambda record, output: None)
    args = compare_reference.argparse.Namespace(steps=4, step_cache=mode, output=None)
    compare_reference._prepare_step_cache(["first_order,16", "retrain,96"], args)  # pylint: disable=protected-access
    directory = os.environ["DARTS_TF_STEP_CACHE"]
    if mode == "cold":
        assert directory == "off" and not calls
    else:
        assert os.path.isdir(directory) and not os.listdir(directory)
        assert calls == [("ours", "first_order,16", 2), ("ours", "retrain,96", 2)]
        os.rmdir(directory)
    assert args.steps == 4


def test_retrain_recompute_reaches_our_retraining_only():
    """--retrain_recompute: our side runs retrain_step.py with --recompute, the reference's
    side the same retraining step as --retrain (it has no such option)."""
    args = compare_reference.argparse.Namespace(
        steps=3, torch_python="/torch/python", reference_dir="/ref/cnn")
    command = compare_reference._command  # pylint: disable=protected-access
    ours = command("ours", "retrain_recompute,96", args)
    assert os.path.basename(ours[1]) == "retrain_step.py"
    assert ours[2:] == ["--batch=96", "--steps=3", "--no-export", "--recompute"]
    assert command("ours", "retrain,96", args)[2:] == ["--batch=96", "--steps=3", "--no-export"]
    assert command("reference", "retrain_recompute,96", args)[2:] == [
        "--child=retrain_recompute,96", "--reference_dir=/ref/cnn", "--steps=3"]
    lockstep = command("ours", "retrain_recompute,96", args, lockstep=True)
    assert lockstep[2:4] == ["--child=retrain_recompute,96", "--lockstep"]
    assert compare_reference.RETRAIN_KINDS == {"retrain": False, "retrain_recompute": True}


def test_reference_kinds_split_convolutions_by_their_weight():
    """--profile: aten ops into bench/profile_step.py's kinds; a conv is depthwise when its
    weight (the forward's second input, convolution_backward's third) is (C, 1, k, k), k > 1."""
    kind = compare_reference.reference_kind
    assert kind("aten::mkldnn_convolution", [[16, 16, 32, 32], [16, 1, 3, 3], []]) == "depthwise conv"
    assert kind("aten::convolution_backward",
                [[16, 16, 32, 32], [16, 16, 34, 34], [16, 1, 5, 5]]) == "depthwise conv"
    assert kind("aten::mkldnn_convolution", [[16, 16, 32, 32], [16, 16, 1, 1]]) == "conv 1x1 / conv"
    assert kind("aten::convolution_backward",
                [[16, 16, 32, 32], [16, 16, 32, 32], [16, 16, 1, 1]]) == "conv 1x1 / conv"
    assert kind("aten::mkldnn_convolution", [[16, 3, 32, 32], [48, 3, 3, 3]]) == "conv 1x1 / conv"
    assert kind("aten::mkldnn_convolution", [[16, 1, 8, 8], [4, 1, 1, 1]]) == "conv 1x1 / conv"
    assert kind("aten::native_batch_norm_backward", []) == "batch norm"
    assert kind("aten::threshold_backward", []) == "relu"
    assert kind("aten::max_pool2d_with_indices", []) == "pooling"
    assert kind("aten::mul", []) == "element-wise"
    assert kind("aten::cat", []) == "data movement"
    assert kind("aten::empty", []) == "other"


def test_kinds_table_gives_each_kind_on_both_sides_and_the_reference_outside_its_ops():
    reference = {"wall_s_per_step": 12.0, "outside_ops_s_per_step": 0.5, "unprofiled_step_s": 10.0,
                 "kinds_s": {"depthwise conv": 6.0, "batch norm": 1.5, "reductions": 0.009,
                             "other": 0.001}}
    ours = compare_reference.ours_kinds({"wall_s_per_step": 3.0, "kernels_over_wall_x_cores": 0.9,
                                         "unprofiled_step_s": 2.5,
                                         "kinds": {"depthwise conv": 40.0, "batch norm": 50.0,
                                                   "relu": 10.0, "reductions": 0.0}})
    assert ours["kinds_s"] == {"depthwise conv": 1.2, "batch norm": 1.5, "relu": 0.3,
                               "reductions": 0.0}
    table = compare_reference.kinds_table(reference, ours).splitlines()
    assert table[2:] == ["| depthwise conv | 6.00 | 1.20 | 5.00x |",
                         "| batch norm | 1.50 | 1.50 | 1.00x |",
                         "| reductions | 0.01 | 0.00 | - |",  # a ratio of noise: none
                         "| relu | 0.00 | 0.30 | - |",
                         "| outside the ops (Python, the autograd engine's loop) | 0.50 | - | - |",
                         "| **step (wall), profiled** | 12.00 | 3.00 | 4.00x |",
                         "| step without the profiler (the warm-up's second) | 10.00 | 2.50 |"
                         " 4.00x |"]


def test_pointwise_conv_bench_compares_equal_computations(monkeypatch, capsys):
    """bench/pointwise_conv.py times three matmuls against the 1x1 conv kernels: they must
    compute the same tensors (else the timing compares different work), and each row must
    carry both times for each kernel."""
    import json  # pylint: disable=import-outside-toplevel
    import pointwise_conv  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(sys, "argv", ["pointwise_conv.py", "--repeats=2",
                                      "--shapes=2x4x3x5x7,3x2x2x8x4"])
    pointwise_conv.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [row.get("shape") for row in rows[:2]] == [[2, 4, 3, 5, 7], [3, 2, 2, 8, 4]]
    for row in rows[:2]:
        for kernel in ("forward", "filter", "input"):
            assert row[f"{kernel}_conv_ms"] > 0 and row[f"{kernel}_matmul_ms"] > 0
            assert row[f"{kernel}_max_abs_diff"] < 1e-4
    assert "cpu" in rows[2] and isinstance(rows[2]["onednn"], bool)
