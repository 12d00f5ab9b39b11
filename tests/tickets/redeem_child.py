"""Child process for the ticket crash and race tests: a pickup point redeeming tickets.

Usage:

- ``python redeem_child.py SITE loop NAME FIRST COUNT``: redeem the paper codes of serials
  FIRST, FIRST+1, ... one transaction each (request id ``NAME-<serial>``), trying each one twice
  (the second must be refused), and print ``<code> <request id>`` after each redemption the
  store acknowledged. Runs until done or killed.
- ``python redeem_child.py SITE race CODE GO``: print ``ready``, wait for the file GO to exist,
  redeem CODE once and print the outcome as one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.ops import tickets
from gateway.tickets.codes import TicketCode


def _loop(site: tickets.TicketSite, name: str, first: int, count: int) -> None:
    with tickets.open_ticket_store(site) as store:
        for serial in range(first, first + count):
            code = TicketCode(site.settings.plant_code, serial).text
            request = f"{name}-{serial}"
            result = tickets.redeem(
                site, store, code, now=datetime.now(UTC), where=name, redemption_id=request
            )
            if result.redeemed is not None:
                print(code, request, flush=True)  # noqa: T201 - the parent reads these lines
            again = tickets.redeem(site, store, code, now=datetime.now(UTC), where=name)
            if again.redeemed is not None:
                print("DOUBLE", code, flush=True)  # noqa: T201 - the parent reads these lines


def _race(site: tickets.TicketSite, code: str, go: Path) -> None:
    with tickets.open_ticket_store(site) as store:
        print("ready", flush=True)  # noqa: T201 - the parent reads these lines
        while not go.exists():  # a busy wait: both racers leave it within microseconds
            time.sleep(0.0005)
        result = tickets.redeem(site, store, code, now=datetime.now(UTC))
    outcome = {
        "redeemed": result.redeemed is not None,
        "reason": None if result.refusal is None else result.refusal.reason.value,
    }
    print(json.dumps(outcome), flush=True)  # noqa: T201 - the parent reads these lines


def main() -> None:
    site = tickets.load_ticket_site(Path(sys.argv[1]))
    if sys.argv[2] == "loop":
        _loop(site, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        _race(site, sys.argv[3], Path(sys.argv[4]))


if __name__ == "__main__":
    main()
