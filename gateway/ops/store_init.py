"""``prepay init --new-store -c SITE``: start a new, empty store deliberately.

The daemon refuses to start where this site has run before and its state file is gone (see
`gateway.startup.check_state_present`): balances would silently restart at zero. When that is
what the operator wants (the old state is lost for good, and the backend re-credits the
accounts), this command says so: it creates the new store, records it in the marker next to the
ledger key, and journals a ``store_created`` event naming the store it replaces.

It never overwrites a store: a state file that exists must be moved away first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from billing_engine.base.errors import PrepayError
from gateway.config import Site
from gateway.northbound.payloads import format_rfc3339
from gateway.startup import (
    STATE_FILE,
    claim_state_dir,
    load_keys,
    open_store,
    read_marker,
    write_marker,
)


class StoreExistsError(PrepayError):
    """``prepay init --new-store`` found a state file: it never replaces a store."""


@dataclass(frozen=True)
class NewStore:
    """The store made, and the one it replaces (None when none was recorded)."""

    path: Path
    incarnation: str
    previous: str | None
    marker: Path


def new_store(site: Site) -> NewStore:
    """Create the site's store anew and record it as the site's current store.

    Raises:
        StoreExistsError: the state file exists (move it away first).
        AlreadyRunningError: a daemon holds the state directory.
        KeyPermissionError, KeyFileError: the site's keys cannot be used.
        StoreMarkerError: the marker cannot be read.
        OSError: the marker cannot be written.
    """
    keys = load_keys(site)
    path = site.state_dir / STATE_FILE
    marker = read_marker(site)
    previous = marker.incarnation if marker is not None else None
    with claim_state_dir(site.state_dir):
        if path.exists():
            raise StoreExistsError(
                f"{path} exists: prepay init --new-store never replaces a store; move the state"
                " directory away first if this store is to be abandoned"
            )
        now = datetime.now(UTC)
        with open_store(site, keys) as store:
            with store.transaction() as tx:
                tx.record_event(
                    None,
                    "store_created",
                    {
                        "incarnation": store.incarnation,
                        "previous_incarnation": previous or "",
                        "deliberate": True,
                        "by": "prepay init --new-store",
                    },
                    now,
                )
            written = write_marker(site, store.incarnation, created_at=format_rfc3339(now))
            return NewStore(path, store.incarnation, previous, written)
