"""The live benchmark runs and reports in its documented format, and loses no bar on the memory bus
(it measures latency and CPU; this checks only that it works and that delivery is complete)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "live.py"), "--quick"],
                         capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = out.stdout.strip().splitlines()
    values = dict(line.split("=", 1) for line in lines)
    assert len(values) == len(lines)  # nothing but name=value lines, each name once
    return lines, values


def test_prints_name_value_lines_with_the_headline_last(report):
    lines, values = report
    assert values["emulator"] in ("available", "unavailable")
    headline = "added_latency_p99_ms" if values["emulator"] == "available" else "memory_1sym_p99_ms"
    assert lines[-1].startswith(f"{headline}=")
    numbers = ["memory_1sym_p50_ms", "memory_1sym_p99_ms", "memory_10sym_p99_ms",
               "memory_10sym_added_processing_p99_ms", "idle_cpu_memory_core_fraction",
               "throughput_processed_bars_per_s", "throughput_lag_end_ms", "throughput_p99_ms", headline]
    if values["emulator"] == "available":
        numbers += ["emulator_raw_p50_ms", "emulator_raw_p99_ms", "emulator_client_p99_ms", "emulator_paper_p50_ms",
                    "emulator_paper_p99_ms", "emulator_added_per_message_p99_ms", "added_p99_of_difference_ms",
                    "idle_cpu_pubsub_core_fraction", "emulator_paper_switch_interval_ms",
                    "emulator_shared_cores_raw_p99_ms", "emulator_shared_cores_processing_p99_ms"]
        numbers += [f"emulator_processing_{stage}_p{q}_ms" for stage in ("in_callback", "to_strategy_thread", "to_next")
                    for q in (50, 99)]
    for key in numbers:
        assert math.isfinite(float(values[key])), key   # a number, whatever its size on a busy machine


def test_the_emulator_part_runs_in_ci(report):
    _, values = report
    if os.environ.get("CI") == "true":
        assert values["emulator"] == "available", "CI=true and the Pub/Sub emulator part was skipped"


def test_no_bar_is_lost_on_the_memory_bus(report):
    _, values = report
    published, processed = int(values["throughput_published"]), int(values["throughput_processed"])
    assert published == int(values["throughput_symbols"]) * 10 * int(float(values["throughput_seconds"]))
    assert processed == published and int(values["throughput_lost"]) == 0
    assert int(values["throughput_duplicates"]) == 0
    assert int(values["memory_1sym_lost"]) == 0 and int(values["memory_10sym_lost"]) == 0
