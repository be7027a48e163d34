"""The side-by-side benchmark's arithmetic (bench/compare_reference.py) and its process clock."""
import os
import subprocess
import sys

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
