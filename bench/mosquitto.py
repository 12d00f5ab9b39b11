"""A real mosquitto on a free 127.0.0.1 port, for benchmarks and tests (which may kill and
restart it). The binary is Debian's ``mosquitto`` package; nothing talks to a public broker.
Not a benchmark itself.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# mosquitto listens within milliseconds on an idle machine; a loaded 2-core box (CI still busy
# with other work) may take seconds. The deadline only bounds a broker that will never listen.
START_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def executable() -> str | None:
    """The mosquitto binary, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found is not None:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def write_config(directory: Path, port: int, extra: str = "") -> Path:
    """Write a mosquitto.conf listening on 127.0.0.1:``port`` with anonymous access."""
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 100000\n"
        "max_inflight_messages 0\n"
        f"{extra}"
    )
    return conf


@dataclass
class Broker:
    """A running (or stopped) mosquitto process."""

    host: str
    port: int
    config: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start mosquitto; return once it accepts connections.

        Raises:
            RuntimeError: mosquitto is not installed, or exited (a bad config, a taken port).
            TimeoutError: it did not listen within `START_TIMEOUT_S`.
        """
        exe = executable()
        if exe is None:
            raise RuntimeError("mosquitto is not installed: `make test` installs it")
        self.proc = subprocess.Popen(  # noqa: S603 - the Debian broker, our own config
            [exe, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._listening():
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {self.config}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mosquitto did not listen on port {self.port}")
            time.sleep(0.02)

    def _listening(self) -> bool:
        try:
            socket.create_connection((self.host, self.port), timeout=1.0).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """Kill it (SIGKILL: no clean DISCONNECTs, no will suppressed)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
