"""The SQLite file: connection settings, schema and forward migrations.

One file in the state directory, in WAL mode with ``synchronous=FULL`` so that a returned COMMIT
survives a power cut, not just a process crash. ``foreign_keys`` is on. Every table that holds
money or identities checks its column types (SQLite would otherwise store ``1.5`` in an INTEGER
column without complaint).

Migrations only go forward: each is a list of statements applied in one ``BEGIN IMMEDIATE``
transaction together with its ``schema_version`` row, so a crash mid-migration leaves the
previous version intact. A file from a newer gateway is refused (`SchemaError`).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from gateway.messages import MessageClass
from gateway.store.errors import SchemaError, StoreError

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 10.0

_V1 = (
    """CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    # --- reading journal -------------------------------------------------------------------
    """CREATE TABLE readings (
        row_id          INTEGER PRIMARY KEY AUTOINCREMENT,
        reading_id      TEXT    NOT NULL UNIQUE,
        meter_id        TEXT    NOT NULL,
        read_at_us      INTEGER NOT NULL CHECK (typeof(read_at_us) = 'integer'),
        register_milli  INTEGER NOT NULL CHECK (typeof(register_milli) = 'integer'
                                                AND register_milli >= 0),
        source          TEXT    NOT NULL,
        quality         TEXT    NOT NULL,
        device_seq      INTEGER CHECK (device_seq IS NULL OR typeof(device_seq) = 'integer'),
        received_at_us  INTEGER NOT NULL CHECK (typeof(received_at_us) = 'integer'),
        state           TEXT    NOT NULL DEFAULT 'unbilled'
                                CHECK (state IN ('unbilled', 'billed', 'held')),
        bill_status     TEXT,
        deduction_minor INTEGER CHECK (deduction_minor IS NULL
                                       OR typeof(deduction_minor) = 'integer'),
        detail_json     TEXT,
        hold_reason     TEXT
    )""",
    # A journalled reading is never removed (version 2 lets old billed rows be pruned).
    """CREATE TRIGGER readings_no_delete BEFORE DELETE ON readings
       BEGIN SELECT RAISE(ABORT, 'the reading journal is append-only'); END""",
    "CREATE INDEX readings_unbilled ON readings (row_id) WHERE state = 'unbilled'",
    "CREATE INDEX readings_held ON readings (row_id) WHERE state = 'held'",
    "CREATE INDEX readings_meter_time ON readings (meter_id, read_at_us)",
    # --- prepaid ledger (append-only, HMAC-chained) -----------------------------------------
    """CREATE TABLE ledger (
        seq             INTEGER PRIMARY KEY,
        account_id      TEXT    NOT NULL,
        kind            TEXT    NOT NULL,
        amount_minor    INTEGER NOT NULL CHECK (typeof(amount_minor) = 'integer'),
        currency        TEXT    NOT NULL,
        idempotency_key TEXT    NOT NULL,
        ref             TEXT    NOT NULL,
        detail_json     TEXT    NOT NULL,
        created_at_us   INTEGER NOT NULL CHECK (typeof(created_at_us) = 'integer'),
        mac             BLOB    NOT NULL,
        UNIQUE (account_id, idempotency_key)
    )""",
    "CREATE INDEX ledger_account ON ledger (account_id, seq)",
    # Defence in depth against our own bugs; someone with the file can drop these, which is
    # what the MAC chain is for.
    """CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
       BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END""",
    """CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
       BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END""",
    # Cached per-account balance, updated in the same transaction as each entry; verify
    # checks it against the sum of entries.
    """CREATE TABLE ledger_accounts (
        account_id    TEXT    PRIMARY KEY,
        currency      TEXT    NOT NULL,
        balance_minor INTEGER NOT NULL CHECK (typeof(balance_minor) = 'integer'),
        last_seq      INTEGER NOT NULL REFERENCES ledger (seq)
    )""",
    # --- outbox -----------------------------------------------------------------------------
    # AUTOINCREMENT: a seq is never reused, so a late PUBACK cannot acknowledge a newer message.
    """CREATE TABLE outbox (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        topic          TEXT    NOT NULL,
        payload        BLOB    NOT NULL,
        qos            INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
        retain         INTEGER NOT NULL CHECK (retain IN (0, 1)),
        message_class  TEXT    NOT NULL REFERENCES outbox_counters (message_class),
        enqueued_at_us INTEGER NOT NULL
    )""",
    "CREATE INDEX outbox_class ON outbox (message_class, seq)",
    "CREATE INDEX outbox_retained ON outbox (topic) WHERE retain = 1",
    """CREATE TABLE outbox_counters (
        message_class TEXT    PRIMARY KEY,
        pending       INTEGER NOT NULL DEFAULT 0 CHECK (pending >= 0),
        dropped       INTEGER NOT NULL DEFAULT 0,
        coalesced     INTEGER NOT NULL DEFAULT 0
    )""",
    # --- commands and receipts ----------------------------------------------------------------
    """CREATE TABLE commands (
        command_id     TEXT    PRIMARY KEY,
        kind           TEXT    NOT NULL,
        result_json    TEXT    NOT NULL,
        recorded_at_us INTEGER NOT NULL
    )""",
    """CREATE TABLE counters (
        name  TEXT    PRIMARY KEY,
        value INTEGER NOT NULL CHECK (typeof(value) = 'integer')
    )""",
    "INSERT INTO counters (name, value) VALUES ('receipt_seq', 0)",
    """CREATE TABLE receipts (
        seq         INTEGER PRIMARY KEY,
        topup_id    TEXT    NOT NULL UNIQUE,
        account_id  TEXT    NOT NULL,
        payload     BLOB    NOT NULL,
        signature   BLOB    NOT NULL
    )""",
    # --- state-change events and per-account runtime state ---------------------------------------
    """CREATE TABLE events (
        event_id    INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id  TEXT,
        kind        TEXT    NOT NULL,
        detail_json TEXT    NOT NULL,
        at_us       INTEGER NOT NULL CHECK (typeof(at_us) = 'integer')
    )""",
    "CREATE INDEX events_account ON events (account_id, event_id)",
    """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
       BEGIN SELECT RAISE(ABORT, 'the events journal is append-only'); END""",
    """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
       BEGIN SELECT RAISE(ABORT, 'the events journal is append-only'); END""",
    """CREATE TABLE account_state (
        account_id    TEXT    PRIMARY KEY,
        state_json    TEXT    NOT NULL,
        updated_at_us INTEGER NOT NULL
    )""",
)

# Version 2: journal retention. A billed reading may be deleted (`journal.prune_billed`); an
# unbilled or held one still may not: it has not been settled yet.
_V2 = (
    "DROP TRIGGER readings_no_delete",
    """CREATE TRIGGER readings_no_delete BEFORE DELETE ON readings WHEN OLD.state <> 'billed'
       BEGIN SELECT RAISE(ABORT, 'the reading journal is append-only until billed'); END""",
)

# Version 3: the outbox keeps each message's batch key (the meter of a reading), so the MQTT
# link batches a backlog on stored data instead of taking topics apart. Rows queued by an older
# version have none and are sent one by one, as before.
_V3 = ("ALTER TABLE outbox ADD COLUMN batch_key TEXT",)

# Version 4: a command id is stored with a digest of the command's content, so that the same
# id with other content is refused (``duplicate_conflict``) instead of replaying the first
# result. Commands recorded by an older version have none and are compared by id only.
_V4 = ("ALTER TABLE commands ADD COLUMN content_hash TEXT",)

#: The ``meta`` key of the store's incarnation (see `_V5`).
INCARNATION_META = "store_incarnation"

# Version 5: every store gets an incarnation, 16 random hex digits made once when the store is
# created (or reaches this version) and never changed: published event ids and receipts carry
# it, so a store started anew is told apart from the one before it, and the signed checkpoint
# names it (a checkpoint of another incarnation is not this store's history).
_V5 = (
    "INSERT OR IGNORE INTO meta (key, value)"
    " VALUES ('store_incarnation', lower(hex(randomblob(8))))",  # INCARNATION_META
)

# Version 6: water tickets (`gateway.store.tickets`): the paper batches and their code ranges,
# redemptions here (one per code: the UNIQUE constraint is the exactly-once) and those learned
# from other boxes, conflicts between the two, voids (paper converted to electronic),
# extensions and emergency tickets. What was used stays used: no update, no delete.
_V6 = (
    """CREATE TABLE ticket_batches (
        batch_id       TEXT    PRIMARY KEY,
        plant          TEXT    NOT NULL,
        product        TEXT    NOT NULL,
        face_minor     INTEGER NOT NULL CHECK (typeof(face_minor) = 'integer' AND face_minor >= 0),
        currency       TEXT    NOT NULL,
        valid_from     TEXT    NOT NULL,
        valid_until    TEXT    NOT NULL,
        scope_json     TEXT    NOT NULL,
        code_count     INTEGER NOT NULL CHECK (typeof(code_count) = 'integer'),
        content_hash   TEXT    NOT NULL,
        document       TEXT    NOT NULL,
        imported_at_us INTEGER NOT NULL
    )""",
    """CREATE TABLE ticket_ranges (
        plant        TEXT    NOT NULL,
        first_serial INTEGER NOT NULL CHECK (typeof(first_serial) = 'integer'),
        last_serial  INTEGER NOT NULL CHECK (typeof(last_serial) = 'integer'
                                             AND last_serial >= first_serial),
        batch_id     TEXT    NOT NULL REFERENCES ticket_batches (batch_id),
        PRIMARY KEY (plant, first_serial)
    )""",
    """CREATE TABLE ticket_redemptions (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        code           TEXT    NOT NULL UNIQUE,
        redemption_id  TEXT    NOT NULL UNIQUE,
        kind           TEXT    NOT NULL CHECK (kind IN ('paper', 'electronic', 'emergency')),
        product        TEXT    NOT NULL,
        quantity       INTEGER NOT NULL CHECK (typeof(quantity) = 'integer' AND quantity >= 1),
        box_id         TEXT    NOT NULL,
        incarnation    TEXT    NOT NULL,
        where_text     TEXT    NOT NULL,
        redeemed_at_us INTEGER NOT NULL CHECK (typeof(redeemed_at_us) = 'integer')
    )""",
    """CREATE TRIGGER ticket_redemptions_no_update BEFORE UPDATE ON ticket_redemptions
       BEGIN SELECT RAISE(ABORT, 'ticket redemptions are append-only'); END""",
    """CREATE TRIGGER ticket_redemptions_no_delete BEFORE DELETE ON ticket_redemptions
       BEGIN SELECT RAISE(ABORT, 'ticket redemptions are append-only'); END""",
    """CREATE TABLE ticket_remote_redemptions (
        row_id         INTEGER PRIMARY KEY AUTOINCREMENT,
        code           TEXT    NOT NULL,
        redemption_id  TEXT    NOT NULL,
        kind           TEXT    NOT NULL,
        product        TEXT    NOT NULL,
        quantity       INTEGER NOT NULL CHECK (typeof(quantity) = 'integer'),
        box_id         TEXT    NOT NULL,
        incarnation    TEXT    NOT NULL,
        where_text     TEXT    NOT NULL,
        redeemed_at_us INTEGER NOT NULL CHECK (typeof(redeemed_at_us) = 'integer'),
        imported_at_us INTEGER NOT NULL,
        UNIQUE (box_id, redemption_id)
    )""",
    "CREATE INDEX ticket_remote_code ON ticket_remote_redemptions (code)",
    """CREATE TABLE ticket_conflicts (
        conflict_id    INTEGER PRIMARY KEY AUTOINCREMENT,
        code           TEXT    NOT NULL,
        local_seq      INTEGER NOT NULL REFERENCES ticket_redemptions (seq),
        remote_row     INTEGER NOT NULL UNIQUE REFERENCES ticket_remote_redemptions (row_id),
        detected_at_us INTEGER NOT NULL
    )""",
    """CREATE TABLE ticket_voids (
        code         TEXT    PRIMARY KEY,
        reason       TEXT    NOT NULL CHECK (reason IN ('converted')),
        replacement  TEXT    NOT NULL,
        voided_at_us INTEGER NOT NULL
    )""",
    """CREATE TABLE ticket_extensions (
        code           TEXT    PRIMARY KEY,
        old_until      TEXT    NOT NULL,
        new_until      TEXT    NOT NULL,
        extended_at_us INTEGER NOT NULL
    )""",
    """CREATE TABLE ticket_emergency (
        code             TEXT    PRIMARY KEY,
        seq              INTEGER NOT NULL UNIQUE CHECK (typeof(seq) = 'integer' AND seq >= 1),
        product          TEXT    NOT NULL,
        issued_on        TEXT    NOT NULL,
        valid_until      TEXT    NOT NULL,
        note             TEXT    NOT NULL,
        issued_at_us     INTEGER NOT NULL,
        reconciled_at_us INTEGER
    )""",
    "CREATE INDEX ticket_emergency_day ON ticket_emergency (issued_on)",
    *(
        f"""CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
           BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"""
        for table in ("ticket_voids", "ticket_extensions", "ticket_emergency")
    ),
)

# Version 7: vending sessions at dispensers (`gateway.store.vending`): one row per session the
# gateway opened, keyed by (dispenser, the device's session id). Opened 'open'; closed once,
# 'settled' (with what was poured and billed, and the ledger entry) or 'voided' (never started at
# the device); a closed row never changes again (trigger), so a replayed report cannot re-bill.
_V7 = (
    """CREATE TABLE vend_sessions (
        dispenser_id     TEXT    NOT NULL,
        session_id       INTEGER NOT NULL CHECK (typeof(session_id) = 'integer'
                                                 AND session_id >= 1),
        request_id       INTEGER,
        identity_kind    TEXT    NOT NULL CHECK (identity_kind IN ('card', 'phone', 'ticket')),
        identity         TEXT    NOT NULL,
        account_id       TEXT,
        currency         TEXT,
        price_minor      INTEGER NOT NULL CHECK (typeof(price_minor) = 'integer'),
        unit_ml          INTEGER NOT NULL CHECK (typeof(unit_ml) = 'integer' AND unit_ml > 0),
        authorised_ml    INTEGER NOT NULL CHECK (typeof(authorised_ml) = 'integer'
                                                 AND authorised_ml > 0),
        max_charge_minor INTEGER NOT NULL CHECK (typeof(max_charge_minor) = 'integer'
                                                 AND max_charge_minor >= 0),
        opened_at_us     INTEGER NOT NULL,
        state            TEXT    NOT NULL DEFAULT 'open'
                                 CHECK (state IN ('open', 'settled', 'voided')),
        poured_ml        INTEGER CHECK (poured_ml IS NULL OR typeof(poured_ml) = 'integer'),
        billed_ml        INTEGER CHECK (billed_ml IS NULL OR typeof(billed_ml) = 'integer'),
        charge_minor     INTEGER CHECK (charge_minor IS NULL
                                        OR typeof(charge_minor) = 'integer'),
        ledger_seq       INTEGER,
        closed_at_us     INTEGER,
        PRIMARY KEY (dispenser_id, session_id)
    )""",
    "CREATE INDEX vend_sessions_open ON vend_sessions (account_id) WHERE state = 'open'",
    """CREATE TRIGGER vend_sessions_closed_stay BEFORE UPDATE ON vend_sessions
       WHEN OLD.state != 'open'
       BEGIN SELECT RAISE(ABORT, 'a closed vending session never changes'); END""",
    """CREATE TRIGGER vend_sessions_no_delete BEFORE DELETE ON vend_sessions
       BEGIN SELECT RAISE(ABORT, 'vending sessions are kept'); END""",
)

# Version 8: invoice requests (`gateway.store.invoices`); a top-up is invoiced at most once.
_V8 = (
    """CREATE TABLE invoices (
        invoice_id     TEXT    PRIMARY KEY,
        account_id     TEXT    NOT NULL,
        topup_ids_json TEXT    NOT NULL,
        amount_minor   INTEGER NOT NULL CHECK (typeof(amount_minor) = 'integer'),
        currency       TEXT    NOT NULL,
        title          TEXT    NOT NULL,
        tax_id         TEXT,
        email          TEXT,
        status         TEXT    NOT NULL CHECK (status IN ('requested', 'issued', 'failed')),
        number         TEXT,
        reason         TEXT,
        requests       INTEGER NOT NULL CHECK (typeof(requests) = 'integer' AND requests >= 1),
        created_at_us  INTEGER NOT NULL,
        updated_at_us  INTEGER NOT NULL
    )""",
    "CREATE INDEX invoices_account ON invoices (account_id, created_at_us)",
    """CREATE TABLE invoice_topups (
        topup_id   TEXT PRIMARY KEY,
        invoice_id TEXT NOT NULL REFERENCES invoices (invoice_id)
    )""",
    """CREATE TRIGGER invoice_topups_no_delete BEFORE DELETE ON invoice_topups
       BEGIN SELECT RAISE(ABORT, 'a top-up stays invoiced'); END""",
)

# Version 9: receipts of every kind (`gateway.northbound.receipts`): a top-up, a settled
# vending session, a ticket sold at the box. Each names what it is for by ``(kind, subject)``
# (the top-up id; ``{dispenser}:{session_id}``; the ticket code), one receipt per subject; a
# ticket sale has no account. SQLite cannot change a constraint in place: the table is copied.
_V9 = (
    """CREATE TABLE receipts_v9 (
        seq         INTEGER PRIMARY KEY,
        kind        TEXT    NOT NULL CHECK (kind IN ('topup', 'vending', 'ticket_sale')),
        subject     TEXT    NOT NULL,
        account_id  TEXT,
        payload     BLOB    NOT NULL,
        signature   BLOB    NOT NULL,
        UNIQUE (kind, subject)
    )""",
    """INSERT INTO receipts_v9 (seq, kind, subject, account_id, payload, signature)
       SELECT seq, 'topup', topup_id, account_id, payload, signature FROM receipts""",
    "DROP TABLE receipts",
    "ALTER TABLE receipts_v9 RENAME TO receipts",
)

# Version 10: the billing engine counts UTC milliseconds, no longer whole seconds (issue 12: two
# polls of a meter in one second are two readings, each billed as itself). A saved account
# state's ``billing.last_ts`` (seconds of the last billed reading) becomes ``billing.last_ms``
# (x 1000; null stays null), so billing continues from the same instant. The record is rebuilt
# in key order, no spaces, as `account_records` writes it (canonical JSON; the subquery's ORDER
# BY holds: SQLite does not flatten an ordered subquery into an aggregate). Records without the
# key (cursors, the overlay) are left alone.
_V10 = (
    """UPDATE account_state SET state_json = (
           SELECT json_group_object(name, value) FROM (
               SELECT CASE key WHEN 'billing.last_ts' THEN 'billing.last_ms' ELSE key END
                          AS name,
                      CASE key WHEN 'billing.last_ts' THEN value * 1000 ELSE value END
                          AS value
               FROM json_each(account_state.state_json)
               ORDER BY name
           )
       )
       WHERE json_type(state_json, '$."billing.last_ts"') IS NOT NULL""",
)

# Version 11: the journal's rows per state (and held rows per reason) are counted as rows
# change, by triggers, so that reading them costs one small table. Counting the journal itself
# (``GROUP BY state``) scanned every row: 0.55 s of CPU, holding the store, for 2 million rows
# (100 meters polled every second for 5.5 hours), and the metrics read it every 2 s. Triggers,
# not the Python writers, so that every path (billing, holds, the operator's accept, retention)
# keeps the counts true; they cost about 9 us per reading journalled and billed. A row's key is
# its state and, when held, its hold reason ('' otherwise, and for a held row without one).
_V11 = (
    """CREATE TABLE journal_counts (
        state       TEXT    NOT NULL CHECK (state IN ('unbilled', 'billed', 'held')),
        hold_reason TEXT    NOT NULL,
        row_count   INTEGER NOT NULL CHECK (row_count >= 0),
        PRIMARY KEY (state, hold_reason)
    ) WITHOUT ROWID""",
    """INSERT INTO journal_counts (state, hold_reason, row_count)
       SELECT state, CASE state WHEN 'held' THEN coalesce(hold_reason, '') ELSE '' END, COUNT(*)
       FROM readings GROUP BY 1, 2""",
    """CREATE TRIGGER readings_counted_in AFTER INSERT ON readings BEGIN
         INSERT INTO journal_counts (state, hold_reason, row_count)
         VALUES (NEW.state,
                 CASE NEW.state WHEN 'held' THEN coalesce(NEW.hold_reason, '') ELSE '' END, 1)
         ON CONFLICT (state, hold_reason) DO UPDATE SET row_count = row_count + 1;
       END""",
    """CREATE TRIGGER readings_counted_move AFTER UPDATE OF state, hold_reason ON readings
       WHEN OLD.state IS NOT NEW.state
            OR (CASE OLD.state WHEN 'held' THEN coalesce(OLD.hold_reason, '') ELSE '' END)
               IS NOT (CASE NEW.state WHEN 'held' THEN coalesce(NEW.hold_reason, '') ELSE '' END)
       BEGIN
         UPDATE journal_counts SET row_count = row_count - 1
         WHERE state = OLD.state
           AND hold_reason
               = CASE OLD.state WHEN 'held' THEN coalesce(OLD.hold_reason, '') ELSE '' END;
         INSERT INTO journal_counts (state, hold_reason, row_count)
         VALUES (NEW.state,
                 CASE NEW.state WHEN 'held' THEN coalesce(NEW.hold_reason, '') ELSE '' END, 1)
         ON CONFLICT (state, hold_reason) DO UPDATE SET row_count = row_count + 1;
       END""",
    """CREATE TRIGGER readings_counted_out AFTER DELETE ON readings BEGIN
         UPDATE journal_counts SET row_count = row_count - 1
         WHERE state = OLD.state
           AND hold_reason
               = CASE OLD.state WHEN 'held' THEN coalesce(OLD.hold_reason, '') ELSE '' END;
       END""",
)

#: Forward migrations, in order: ``MIGRATIONS[n - 1]`` brings the file to version ``n``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9, _V10, _V11,
)  # fmt: skip
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` with the gateway's settings.

    The connection is in autocommit mode: transactions are explicit ``BEGIN IMMEDIATE``.

    Raises:
        StoreError: the file cannot be opened, or WAL mode cannot be enabled on it.
    """
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open database: {exc}") from exc
    if str(mode).lower() != "wal":
        conn.close()
        raise StoreError(f"{path}: cannot enable WAL mode (got {mode!r}); is it a local disk?")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The version the file is at; 0 for a new, empty file."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0]) if row[0] is not None else 0


def migrate(
    conn: sqlite3.Connection,
    now_us: int,
    migrations: tuple[tuple[str, ...], ...] = MIGRATIONS,
) -> int:
    """Bring the file forward to the newest version, one transaction per migration.

    Safe against a second process migrating at the same time: the version is re-read after
    ``BEGIN IMMEDIATE`` takes the write lock.

    Returns:
        The version the file is at afterwards.

    Raises:
        SchemaError: the file is newer than ``migrations``.
        StoreError: a migration failed (the file stays at the previous version).
    """
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                done = _step(conn, now_us, migrations)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"schema migration failed: {exc}") from exc
        if done is not None:
            return done


def _step(
    conn: sqlite3.Connection, now_us: int, migrations: tuple[tuple[str, ...], ...]
) -> int | None:
    """Apply the next migration; return the version when there is nothing left to apply."""
    target = len(migrations)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, applied_at_us INTEGER NOT NULL)"
    )
    current = schema_version(conn)
    if current > target:
        raise SchemaError(current, target)
    if current == target:
        _seed_outbox_counters(conn)
        return current
    for statement in migrations[current]:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO schema_version (version, applied_at_us) VALUES (?, ?)",
        (current + 1, now_us),
    )
    logger.info("store schema migrated from version %d to %d", current, current + 1)
    return None


def incarnation(conn: sqlite3.Connection) -> str | None:
    """The store's incarnation (see `_V5`); None for a file older than version 5."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (INCARNATION_META,)).fetchone()
    except sqlite3.OperationalError:  # no meta table: not a store
        return None
    return None if row is None else str(row[0])


def _seed_outbox_counters(conn: sqlite3.Connection) -> None:
    # A MessageClass added in code later gets its counter row without a migration.
    conn.executemany(
        "INSERT OR IGNORE INTO outbox_counters (message_class) VALUES (?)",
        [(c.value,) for c in MessageClass],
    )
