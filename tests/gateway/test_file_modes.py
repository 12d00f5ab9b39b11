"""File modes: the state stays private whatever the umask; a private key others can read is
refused.

``prepay run`` under umask 022 as a real process: the state directory is 0700, the store (with
its ``-wal`` and ``-shm``) and the lock file 0600; modes loosened between two runs are tightened
again, with a log line. A private key file readable by its group or others stops ``prepay run``
before anything is created, and ``prepay topup`` and ``prepay ledger verify`` refuse it too.
"""

from __future__ import annotations

import asyncio
import stat
import subprocess
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_site
from gateway.startup import LOCK_FILE, STATE_FILE
from tests.fixtures.mosquitto import Broker, free_port
from tests.gateway.crash_support import Watcher
from tests.gateway.site import ROOT, write_site

pytestmark = pytest.mark.integration

PREPAY = str(ROOT / ".venv" / "bin" / "prepay")
START_TIMEOUT_S = 60.0
STORE_FILES = (STATE_FILE, f"{STATE_FILE}-wal", f"{STATE_FILE}-shm", LOCK_FILE)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _too_open(path: Path, mode: int) -> str:
    return (
        f"{path}: permissions {mode:04o} are too open; the key must be readable by its owner "
        f"only (chmod 600 {path})"
    )


async def _run_once(site: Path, watcher: Watcher, runs: int) -> None:
    """Start ``prepay run`` under umask 022, wait for its ``online``, check the modes while it
    runs, stop it with SIGTERM."""
    state = site.parent / "state"
    with (site.parent / "daemon.log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            PREPAY,
            "run",
            "-c",
            str(site),
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=site.parent,
            umask=0o022,
        )
    try:
        await watcher.wait_until(
            lambda: watcher.statuses().count("online") == runs, START_TIMEOUT_S
        )
        assert _mode(state) == 0o700
        assert {name: _mode(state / name) for name in STORE_FILES} == dict.fromkeys(
            STORE_FILES, 0o600
        )
        proc.terminate()
        async with asyncio.timeout(30):
            assert await proc.wait() == 0, (site.parent / "daemon.log").read_text()[-4000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_file_modes_state_private_under_umask_022_and_tightened_again(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site = write_site(tmp_path, mqtt_port=mosquitto.port)
    for public in (tmp_path / "keys").glob("*.pub.pem"):
        public.chmod(0o644)  # public keys may be read by anyone
    state = tmp_path / "state"
    watcher = Watcher()
    async with watcher.connected(mosquitto.host, mosquitto.port):
        await _run_once(site, watcher, runs=1)
        log = (tmp_path / "daemon.log").read_text()
        assert "more open than" not in log  # created private, not tightened afterwards

        # Someone loosened them while the daemon was stopped: the next start tightens them.
        state.chmod(0o755)
        for name in STORE_FILES:
            if (state / name).exists():  # -wal and -shm go with a clean close
                (state / name).chmod(0o644)
        await _run_once(site, watcher, runs=2)
    log = (tmp_path / "daemon.log").read_text()
    assert f"{state} had mode 0755, more open than 0700: changed" in log
    assert f"{state / STATE_FILE} had mode 0644, more open than 0600: changed" in log
    assert f"{state / LOCK_FILE} had mode 0644, more open than 0600: changed" in log


@pytest.mark.parametrize(("key", "mode"), [("gateway.pem", 0o644), ("ledger.key", 0o640)])
def test_file_modes_run_refuses_a_private_key_others_can_read(
    tmp_path: Path, key: str, mode: int
) -> None:
    site = write_site(tmp_path, mqtt_port=free_port())
    path = load_site(site).resolve(Path("keys") / key)
    path.chmod(mode)
    result = subprocess.run(
        [PREPAY, "run", "-c", str(site)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
        cwd=ROOT,
        umask=0o022,
    )
    assert result.returncode == 1
    # Reported like every other problem of the site: at the site file's line naming the key.
    field = {"gateway.pem": "gateway_private_key", "ledger.key": "ledger_key_file"}[key]
    line = next(i for i, text in enumerate(site.read_text().splitlines(), 1) if field in text)
    assert f"{site}:{line}: keys.{field}: {_too_open(path, mode)}\n" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()  # nothing was created


def test_file_modes_topup_and_ledger_verify_refuse_a_key_others_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = write_site(tmp_path, mqtt_port=free_port())
    operator = tmp_path / "keys" / "operator.pem"
    operator.chmod(0o604)
    argv = ["topup", "-c", str(site), "--account", "A1", "--amount", "1.00"]
    assert main([*argv, "--operator-key", str(operator), "--wait", "0"]) == 1
    assert _too_open(operator, 0o604) in capsys.readouterr().err
    assert not (tmp_path / "state").exists()  # nothing was queued

    ledger = tmp_path / "keys" / "ledger.key"
    ledger.chmod(0o660)
    state = tmp_path / "state"
    assert main(["ledger", "verify", "--state", str(state), "--key", str(ledger)]) == 1
    assert _too_open(ledger, 0o660) in capsys.readouterr().err


def test_file_modes_keys_init_under_umask_000(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    result = subprocess.run(
        [PREPAY, "keys", "init", str(directory)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
        umask=0,
    )
    assert result.returncode == 0, result.stderr
    modes = {path.name: _mode(path) for path in directory.iterdir()}
    assert modes == {
        "ledger.key": 0o600,
        "gateway.pem": 0o600,
        "operator.pem": 0o600,
        "gateway.pub.pem": 0o644,
        "operator.pub.pem": 0o644,
    }
    assert _mode(directory) == 0o755
