"""The ``prepay`` command's manners: --version, a closed pipe, --help descriptions, plurals."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.cli import EXIT_INTERRUPTED, EXIT_PIPE_CLOSED, SAMPLES_DIR, main
from gateway.ops.status import count
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import ROOT, water_account, write_site

PREPAY = str(ROOT / ".venv" / "bin" / "prepay")


def _closed_reader(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``prepay ARGS`` with its stdout a pipe whose reader is gone (``| head`` after it
    read what it wanted)."""
    proc = subprocess.Popen([PREPAY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, b"", err)


def test_cli_version_names_the_version_and_the_samples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert re.fullmatch(r"prepay-gateway \S+ \(sample configs: (.+)\)\n", out), out
    assert f"(sample configs: {SAMPLES_DIR})" in out
    assert (SAMPLES_DIR / "tariffs" / "beijing-residential-water.yaml").is_file()


def test_cli_status_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    site = write_site(tmp_path, mqtt_port=free_port())
    assert main(["init", "-c", str(site), "--new-store"]) == 0
    done = _closed_reader("status", "-c", str(site))
    assert done.returncode == EXIT_PIPE_CLOSED
    assert done.stderr == b""  # no BrokenPipeError traceback, no "Exception ignored" at exit


def test_cli_version_into_a_closed_pipe_exits_quietly() -> None:
    done = _closed_reader("--version")
    assert done.returncode == EXIT_PIPE_CLOSED
    assert done.stderr == b""


def test_cli_kernel_build_says_what_it_builds_and_stops_quietly_on_ctrl_c(tmp_path: Path) -> None:
    cache = tmp_path / "kernels"
    proc = subprocess.Popen(
        [PREPAY, "kernel", "build", "--cache-dir", str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    # Printed before the build (seconds of Numba and a C compiler in a child process).
    assert proc.stdout.readline() == f"building the ahead-of-time billing kernel in {cache} ...\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (EXIT_INTERRUPTED, "", "prepay: interrupted\n")


def test_cli_every_subcommand_help_opens_with_a_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = re.search(r"\{([a-z,-]+)\}", capsys.readouterr().out)
    assert listed is not None
    names = listed.group(1).split(",")
    assert {"run", "status", "kernel", "bench", "check-config"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        help_text = capsys.readouterr().out
        # usage: ..., a blank line, then the description (argparse prints none without one).
        paragraphs = help_text.split("\n\n")
        assert paragraphs[0].startswith(f"usage: prepay {name}"), help_text
        assert not paragraphs[1].startswith(("positional arguments:", "options:")), help_text


def test_cli_kernel_build_help_describes_where_the_kernel_goes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["kernel", "build", "--help"])
    assert "Build the ahead-of-time kernel (a C compiler is needed)." in capsys.readouterr().out


def test_cli_check_config_counts_agree_with_their_nouns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One account (A1, billed only), one tariff, one Modbus bus (one meter), nothing else.
    site = write_site(
        tmp_path,
        mqtt_port=free_port(),
        modbus_port=free_port(),
        accounts=[water_account("A1", "m1")],
    )
    assert main(["check-config", "-c", str(site)]) == 0
    assert capsys.readouterr().out == (
        f"{site}: ok (site test-site: 1 account, 1 tariff, 1 Modbus bus,"
        " 0 network servers, 0 dispensers)\n"
    )
    doc = yaml.safe_load(site.read_text())
    doc["accounts"].append(dict(doc["accounts"][0], id="A2", meter="m2"))
    bus0 = doc["devices"]["modbus_buses"][0]
    valve2 = dict(bus0["devices"][0], device_id="v2", meter_id="m2")
    doc["devices"]["modbus_buses"].append(dict(bus0, name="bus1", devices=[valve2]))
    site.write_text(yaml.safe_dump(doc))
    assert main(["check-config", "-c", str(site)]) == 0
    assert capsys.readouterr().out == (
        f"{site}: ok (site test-site: 2 accounts, 1 tariff, 2 Modbus buses,"
        " 0 network servers, 0 dispensers)\n"
    )


def test_status_count_singular_plural_and_irregular() -> None:
    assert count(1, "account") == "1 account"
    assert count(0, "account") == "0 accounts"
    assert count(1, "entry", "entries") == "1 entry"
    assert count(1_200, "entry", "entries") == "1,200 entries"
