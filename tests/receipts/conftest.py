"""A real store with real receipts: a running `Gateway` applies two operator top-ups from the
spool (`prepay topup`), reissues the first (`prepay receipt reissue`) and, while it still runs,
`prepay receipt print` writes the second as a PDF. The tests read what that left behind."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import Site, load_site
from gateway.daemon import Gateway
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import write_site
from tests.support.gateways import running


@dataclass(frozen=True)
class Issued:
    """What the daemon run left: the site, its keys, the CLI's answers and the printed PDF."""

    site_file: Path
    site: Site
    keys: Path
    topups: list[dict[str, Any]]  # the results of `prepay topup`, in order
    reissue_exit: int
    reissued: dict[str, Any]  # the result of `prepay receipt reissue` of the first top-up
    print_exit: int
    print_out: str
    pdf: Path  # receipt 2, printed while the daemon ran


def _cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


async def _issue(directory: Path) -> Issued:
    site_file = write_site(directory, mqtt_port=free_port())  # nothing listens: offline
    site = load_site(site_file)
    keys = directory / "keys"
    common = ["-c", str(site_file), "--operator-key", str(keys / "operator.pem")]
    # The daemon answers at once; a loaded machine may take seconds.
    wait = ["--wait", "60"]
    topups = []
    async with running(Gateway(site)):
        for amount, reference in (("25.50", "desk-1"), ("10.00", "desk-2")):
            argv = ["topup", *wait, *common, "--account", "A1", "--amount", amount]
            code, out = await asyncio.to_thread(_cli, [*argv, "--reference", reference])
            assert code == 0, out
            topups.append(json.loads(out.strip().splitlines()[-1]))
        first = topups[0]["receipt"]["topup_id"]
        argv = ["receipt", "reissue", *wait, *common, "--topup", first]
        reissue_exit, out = await asyncio.to_thread(_cli, argv)
        reissued = json.loads(out.strip().splitlines()[-1])
        pdf = directory / "printed" / "receipt-2.pdf"
        argv = ["receipt", "print", "2", "-c", str(site_file), "-o", str(pdf)]
        print_exit, print_out = await asyncio.to_thread(_cli, argv)
    return Issued(site_file, site, keys, topups, reissue_exit, reissued, print_exit, print_out, pdf)


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return asyncio.run(_issue(tmp_path_factory.mktemp("receipts")))
