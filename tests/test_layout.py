"""The layout's promises that import-linter cannot see: what a module loads at run time.

import-linter checks the import statements; it does not follow a package's ``__init__`` that
imports more than the module asked for. These tests import a module in a fresh interpreter and
look at what actually got loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROTOCOL_LIBRARIES = ("aiomqtt", "paho", "pymodbus", "serial", "bleak", "bleak_retry_connector")


def _top_level_modules(imports: str) -> set[str]:
    code = f"import sys, json{imports}; print(json.dumps(sorted(sys.modules)))"
    # Without coverage's subprocess measurement, which loads sqlite3 and more by itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    ).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def _loaded_by(module: str) -> set[str]:
    """The top-level packages importing ``module`` adds to a bare interpreter (whatever that
    interpreter loads by itself, e.g. coverage measuring subprocesses, is left out)."""
    return _top_level_modules(f", {module}") - _top_level_modules("")


@pytest.mark.parametrize(
    "module",
    [
        "gateway.flows.pipeline",
        "gateway.flows.command_handler",
        "gateway.config",
        "gateway.store",
        "gateway.northbound.payloads",
        "gateway.cli",
    ],
)
def test_layout_core_loads_no_protocol_library(module: str) -> None:
    assert _loaded_by(module).isdisjoint(_PROTOCOL_LIBRARIES)


def test_layout_policy_is_pure() -> None:
    loaded = _loaded_by("gateway.policy.machine")
    assert "gateway" in loaded
    assert loaded.isdisjoint({"asyncio", "sqlite3", "numba", *_PROTOCOL_LIBRARIES})


def test_layout_billing_path_never_loads_numba_unless_asked() -> None:
    # The daemon bills with the ahead-of-time kernel; Numba and LLVM (~140 MB) stay out.
    assert "numba" not in _loaded_by("gateway.daemon")
