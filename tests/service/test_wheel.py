"""The wheel works on its own: built from the source tree, installed into a fresh virtual
environment (its dependencies from the package index pip is configured with, nothing of the
test's environment), then used the way an operator uses it, from a directory outside the
source checkout.

It takes 35 to 50 s on the 2-core CI machine: pip installing the dependencies from PyPI about
15 s, the kernel build and the billing benchmark (a JIT compile and an AOT build) most of the
rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the wheel is built from: the packaged folders and the project files, nothing else.
SHIPPED = ("pyproject.toml", "README.md", "gateway", "drivers", "billing_engine", "firmware_sim")
SHIPPED_DATA = ("bench", "configs")
TIMEOUT_S = 600

# integration: pip reaches the package index for the dependencies.
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(TIMEOUT_S)]


def _run(*command: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=TIMEOUT_S / 2,
        check=False,
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _copy_source(into: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".demo")
    for name in (*SHIPPED, *SHIPPED_DATA):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=ignore)
        else:
            shutil.copy2(source, into / name)


def _clean_env() -> dict[str, str]:
    """The environment without what points at the source tree or the test's venv."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_wheel_installs_alone_and_runs_version_tariff_check_site_check_and_bench(
    tmp_path: Path,
) -> None:
    source, dist, outside = tmp_path / "source", tmp_path / "dist", tmp_path / "operator"
    source.mkdir()
    outside.mkdir()
    _copy_source(source)
    env = _clean_env()

    # Built with this environment's setuptools (no download of a build environment).
    _run(
        sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
        "-w", dist, "-q", cwd=source, env=env,
    )  # fmt: skip
    (wheel,) = dist.glob("prepay_gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # Every benchmark and sample file, but no key of the demo's (made locally, never shipped).
    data = {
        path.relative_to(ROOT).as_posix()
        for folder in SHIPPED_DATA
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and not {"__pycache__", "keys"} & set(path.parts)
    }
    assert "bench/billing.py" in data
    assert data - names == set()
    assert not [n for n in names if "/keys/" in n or n.endswith(".pem")], "demo keys shipped"

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=outside, env=env)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=outside, env=env)
    prepay = venv / "bin" / "prepay"

    version = _run(prepay, "--version", cwd=outside, env=env).stdout
    # "prepay-gateway 0.1.0 (sample configs: .../site-packages/configs)"
    assert version.startswith("prepay-gateway 0.1.0 "), version
    samples = Path(version.rsplit("sample configs: ", 1)[1].rstrip().rstrip(")"))
    assert samples.is_relative_to(venv), samples
    tariffs = sorted(samples.glob("tariffs/*.yaml"))
    assert len(tariffs) == 4, tariffs

    checked = _run(prepay, "tariff", "check", *tariffs, cwd=outside, env=env).stdout
    assert checked.count(": ok") == len(tariffs), checked

    # An operator copies the samples and generates keys: the demo site's tariffs, Modbus
    # device profiles and LoRaWAN codecs then load from the installed copy.
    site_dir = outside / "configs"
    shutil.copytree(samples, site_dir)
    _run(
        prepay, "keys", "init", site_dir / "sites" / "keys", "--with-backend", cwd=outside, env=env
    )
    site = site_dir / "sites" / "demo-site.yaml"
    ok = _run(prepay, "check-config", "-c", site, cwd=outside, env=env).stdout
    assert ": ok (site demo-site: 7 accounts, 4 tariffs," in ok, ok

    # The daemon's kernel, built the way the operator guide says, saying what it does first.
    kernels = outside / "kernels"
    built = _run(prepay, "kernel", "build", "--cache-dir", kernels, cwd=outside, env=env)
    first, last = built.stdout.splitlines()
    assert first == f"building the ahead-of-time billing kernel in {kernels} ..."
    assert last.startswith(f"built {kernels}/")

    bench = _run(
        prepay, "bench", "billing", "--readings", "20000", "--accounts", "500",
        "--reference-sample", "2000", cwd=outside, env=env,
    )  # fmt: skip
    result = json.loads(bench.stdout.splitlines()[-1])
    assert result["agree"] is True
    assert result["aot_agrees_with_jit"] is True
    # Progress on stderr while it works; stdout keeps the results.
    assert "... building the ahead-of-time kernel" in bench.stderr
