"""Every ``prepay bench`` runs end to end on a small load and ends with its JSON line.

Numbers are not asserted (timings do not belong in tests); what is asserted is that each
benchmark runs, checks what it claims to check (kernel = reference, AOT = JIT, every shutoff
seen) and reports the keys its docs name. A benchmark that no longer runs is a defect.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


# A benchmark on a loaded 2-core machine (CI still busy with other work) runs several times
# slower than on an idle one; the timeouts only bound a benchmark that hangs.
TIMEOUT_S = 400


def _bench(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S - 20,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.timeout(TIMEOUT_S)
def test_bench_billing_runs_and_both_builds_agree() -> None:
    # Most of its ~12 s is fixed: a cold JIT compile and the AOT build it compares against.
    result = _bench(
        "billing", "--readings", "20000", "--accounts", "500", "--reference-sample", "2000"
    )
    assert result["readings"] == 20_000
    assert result["agree"] is True
    assert result["aot_agrees_with_jit"] is True
    assert result["kernel_readings_per_s"] > 0
    assert result["aot_readings_per_s"] > 0


@pytest.mark.timeout(TIMEOUT_S)
def test_bench_publish_runs_and_every_message_is_acknowledged() -> None:
    # The benchmark raises when a way misses a PUBACK or has one refused.
    result = _bench("publish", "--messages", "500", "--rounds", "1")
    assert result["messages"] == 500
    [only] = result["rounds"]
    assert set(only) == {"paho", "own", "own_over_paho"}
    assert only["own"]["cpu_us_per_msg"] > 0
    assert result["own_over_paho_median"] == only["own_over_paho"]


@pytest.mark.timeout(TIMEOUT_S)
def test_bench_gateway_runs_every_phase() -> None:
    result = _bench(
        "gateway",
        "--accounts",
        "50",
        "--readings",
        "500",
        "--outage-readings",
        "300",
        "--shutoffs",
        "5",
        "--background",
        "100",
    )
    assert result["kernel"] == "aot"
    assert result["sustained_readings"] == 500
    assert result["shutoff_count"] == 5
    assert result["shutoff_missing"] == 0
    assert result["drain_messages"] >= 300
    assert result["held"] == 0
    assert result["supervised_failures"] == 0
    assert set(result["targets_met"]) == {
        "readings_per_s",
        "drain_msgs_per_s",
        "shutoff_p99_ms",
        "rss_mb",
    }


@pytest.mark.timeout(TIMEOUT_S)
def test_bench_modbus_runs() -> None:
    # A fleet of 2 x 10 meters, polled over a little more than one 1 s round.
    result = _bench(
        "modbus",
        "--seconds",
        "0.3",
        "--fleet-seconds",
        "1.2",
        "--fleet-buses",
        "2",
        "--fleet-meters-per-bus",
        "10",
    )
    assert result["tcp_raw_tps"] > 0
    assert result["tcp_gateway_tps"] > 0
    assert result["pty_gateway_tps"] > 0
    assert result["fleet_meters"] == 20
    assert result["fleet_readings_per_s"] > 0


@pytest.mark.timeout(TIMEOUT_S)
def test_bench_tickets_runs_and_redeems_each_once() -> None:
    result = _bench("tickets", "--tickets", "200", "--ranges", "50", "--redemptions", "100")
    assert result["redemptions"] == 200  # 100 paper + 100 electronic
    assert result["stored_redemptions"] == 200
    assert result["second_redemption_refused"] is True
    assert result["raw_verify_per_s"] > 0
    assert result["electronic_verify_per_s"] > 0
    assert result["paper_check_per_s"] > 0
    assert result["verify_ratio"] > 0


@pytest.mark.timeout(TIMEOUT_S)
def test_bench_console_runs_with_and_without_the_console() -> None:
    result = _bench("console", "--accounts", "50", "--readings", "500", "--rounds", "1")
    assert result["accounts"] == 50
    assert result["readings"] == 500
    assert len(result["readings_per_s_without"]) == len(result["readings_per_s_with"]) == 1
    assert min(result["readings_per_s_without"] + result["readings_per_s_with"]) > 0
    assert result["ratio"] > 0
    assert result["accounts_page_requests"] > 0
    assert result["metrics_requests"] > 0
    assert result["accounts_page_failures"] == result["metrics_failures"] == 0
    for key in ("accounts_page", "metrics"):
        assert result[f"{key}_req_per_s"] > 0
        assert result[f"{key}_p99_ms"] >= result[f"{key}_p50_ms"] > 0
    assert result["gateway_cpu_s_per_1000_readings_with"] > 0
    assert result["held"] == 0
    assert result["supervised_failures"] == 0
    assert "target_met" in result


@pytest.mark.timeout(TIMEOUT_S)
def test_bench_site_runs_loses_nothing_and_measures_its_floor() -> None:
    result = _bench("site", "--meters", "20", "--seconds", "4", "--warmup", "3")
    (run,) = result["runs"]
    assert run["meters"] == 20
    assert run["registers"] == "energy"
    assert run["sim_server"] == "own"  # the meters are firmware_sim's own light server
    assert "sim_cpu_share_of_one_core" in run
    # The event loop's thread is a part of the process: never more than the whole.
    assert 0 <= run["loop_thread_share_of_one_core"] <= run["cpu_share_of_one_core"]
    assert run["delivered"] > 0
    # Correctness, not speed: every journalled reading of the window published, none twice.
    assert run["journalled_not_published"] == 0
    assert run["duplicates_at_subscriber"] == 0
    assert run["held"] == 0
    assert run["cpu_ms_per_poll"] > 0
    assert run["journal_commit_mean_ms"] > 0  # the daemon's commit-time histogram moved
    assert run["floor_polls_per_s"] > 0
    assert run["floor_cpu_ms_per_poll"] > 0
    assert run["ratio_to_floor"] > 0
    assert run["floor_delivered"] > 0  # the floor's messages reached the same subscriber
    assert run["floor_latency_p99_ms"] >= run["floor_latency_p50_ms"] > 0
