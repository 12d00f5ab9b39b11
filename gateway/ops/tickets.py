"""``prepay ticket ...``: water tickets at a pickup point, offline.

Brings the pure rules (`gateway.tickets`) and the store's ticket tables (`gateway.store.tickets`)
together. Every command opens the store file directly: the daemon need not run, and may
(SQLite in WAL mode: a reader never blocks the writer, writers take turns). The daemon's
instance lock is not taken.

The box's ticket settings are the site file's ``tickets`` section (`TicketSettings`), read with
the site's YAML loader (so errors are ``FILE:LINE: field: message``) together with the few site
fields the commands need (the site id, which names the box in redemption events, the state
directory, and the gateway's key, which signs converted tickets).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, ValidationError

from billing_engine.base.errors import ConfigError, InvalidConfigError, PrepayError
from billing_engine.base.yaml_lines import errors_from_validation, line_of, parse_yaml
from drivers.ports import Clock, utc_now
from gateway.flows import ticket_stats
from gateway.flows.ticket_feed import import_batch_document
from gateway.flows.ticket_redemption import facts_of as pure_facts
from gateway.flows.ticket_redemption import present as present_ticket
from gateway.flows.ticket_redemption import redeem_presented
from gateway.northbound.receipts import make_ticket_sale_receipt
from gateway.northbound.signing import canonical_json, key_id, load_private_key, load_public_key
from gateway.startup import STATE_FILE, read_private_key_file
from gateway.store.tickets import (
    CodeFacts,
    CodeKey,
    EmergencyTicket,
    Extension,
    Redemption,
    TicketStore,
)
from gateway.tickets import batches, electronic
from gateway.tickets.codes import CodeError, TicketCode, emergency_code
from gateway.tickets.decisions import (
    Box,
    Presented,
    Terms,
    TicketKind,
    code_of,
    judge,
    judge_conversion,
    judge_extension,
    kind_of,
)
from gateway.tickets.electronic import ElectronicTicket, Origin
from gateway.tickets.reasons import Refusal
from gateway.tickets.scope import Scope
from gateway.tickets.settings import TicketSettings
from gateway.tickets.validity import add_one_month, local_day

#: Bounds of what a redemption event carries (`RedemptionEvent`).
MAX_WHERE = 200
MAX_REDEMPTION_ID = 128


class TicketUsageError(PrepayError):
    """A ticket command that cannot be carried out as asked (no store, no such product, no
    emergency tickets at this box, a conversion key the boxes do not trust)."""


# --- the site ---------------------------------------------------------------------------------
class _KeysView(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    gateway_private_key: Path


class _SiteView(BaseModel):
    """The part of the site file the ticket commands read (the rest is the daemon's)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    site: str
    state_dir: Path
    keys: _KeysView
    tickets: TicketSettings | None = None


@dataclass(frozen=True)
class TicketSite:
    """A box's ticket settings, with the plant keys it trusts loaded (by key id)."""

    site_id: str
    path: Path
    settings: TicketSettings
    keys: dict[str, Ed25519PublicKey]
    state_dir: Path
    gateway_key_file: Path

    @property
    def box(self) -> Box:
        return Box.from_settings(self.settings)

    @property
    def store_path(self) -> Path:
        return self.state_dir / STATE_FILE


def load_ticket_site(path: Path) -> TicketSite:
    """Read the site file's ``tickets`` section and the plant keys it names.

    Raises:
        InvalidConfigError: ``FILE:LINE: field: message`` for a bad or missing section, or a key
            file that cannot be read or is not an Ed25519 public key.
    """
    data, node = parse_yaml(path)
    name = str(path)
    if not isinstance(data, dict):
        raise InvalidConfigError([ConfigError(name, 1, "<document>", "expected a mapping")])
    try:
        view = _SiteView.model_validate(data)
    except ValidationError as exc:
        raise errors_from_validation(name, node, exc) from exc
    if view.tickets is None:
        raise InvalidConfigError(
            [ConfigError(name, 1, "tickets", "the site has no tickets section (docs/tickets.md)")]
        )
    base = path.resolve().parent

    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    keys: dict[str, Ed25519PublicKey] = {}
    errors: list[ConfigError] = []
    for i, key_path in enumerate(view.tickets.issuer_public_keys):
        try:
            key = load_public_key(resolve(key_path).read_bytes())
        except (OSError, ValueError) as exc:
            where = ("tickets", "issuer_public_keys", i)
            errors.append(
                ConfigError(name, line_of(node, where), f"tickets.issuer_public_keys.{i}", str(exc))
            )
            continue
        keys[key_id(key)] = key
    if errors:
        raise InvalidConfigError(errors)
    return TicketSite(
        site_id=view.site,
        path=path.resolve(),
        settings=view.tickets,
        keys=keys,
        state_dir=resolve(view.state_dir),
        gateway_key_file=resolve(view.keys.gateway_private_key),
    )


def open_ticket_store(site: TicketSite, clock: Clock = utc_now) -> TicketStore:
    """Open the site's store for tickets; never creates one.

    Raises:
        TicketUsageError: there is no store yet.
        StoreError: the file cannot be opened.
    """
    if not site.store_path.is_file():
        raise TicketUsageError(
            f"no store at {site.store_path}: start the gateway once with this site"
            " (or prepay init --new-store) before taking tickets"
        )
    return TicketStore(site.store_path, box_id=site.site_id, clock=clock)


# --- reading what was presented ---------------------------------------------------------------
def present(site: TicketSite, text: str) -> Presented | Refusal:
    """A typed or scanned code, or a scanned electronic ticket (verified against the plant
    keys); or why it is not a ticket at all (`gateway.flows.ticket_redemption.present`)."""
    return present_ticket(text, site.keys)


def _key(code: TicketCode) -> CodeKey:
    return CodeKey(code.text, code.plant, code.serial)


def _scope(stored: dict[str, str]) -> Scope:
    return Scope.model_validate(stored)


def _refusal_only(outcome: Terms | Refusal) -> Refusal | None:
    return outcome if isinstance(outcome, Refusal) else None


# --- check and redeem -------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """``prepay ticket check``: would this ticket be taken here now? (nothing is recorded)"""

    code: str | None
    kind: TicketKind | None
    terms: Terms | None
    refusal: Refusal | None

    @property
    def accepted(self) -> bool:
        return self.refusal is None


def check(
    site: TicketSite, store: TicketStore, text: str, *, now: datetime, product: str | None = None
) -> Verdict:
    presented = present(site, text)
    if isinstance(presented, Refusal):
        return Verdict(None, None, None, presented)
    code = code_of(presented)
    today = local_day(now, site.settings.timezone)
    outcome = judge(presented, pure_facts(store.facts(_key(code))), site.box, today, product)
    if isinstance(outcome, Refusal):
        return Verdict(code.text, kind_of(presented), None, outcome)
    return Verdict(code.text, kind_of(presented), outcome, None)


@dataclass(frozen=True)
class RedeemResult:
    """``prepay ticket redeem``: exactly one of ``redeemed``, ``replayed`` and ``refusal``."""

    code: str | None
    redeemed: Redemption | None = None
    replayed: Redemption | None = None
    refusal: Refusal | None = None


def redeem(
    site: TicketSite,
    store: TicketStore,
    text: str,
    *,
    now: datetime,
    where: str = "",
    redemption_id: str | None = None,
    product: str | None = None,
) -> RedeemResult:
    """Redeem a ticket in one journalled, idempotent transaction keyed by its code.

    ``redemption_id`` names the request: the same id again answers with the first redemption
    and changes nothing (a scanner that retries after a lost answer).

    Raises:
        IdempotencyConflictError: ``redemption_id`` was used for another ticket.
        StoreError: the database failed (nothing was recorded).
    """
    if len(where) > MAX_WHERE:
        raise TicketUsageError(f"--where: at most {MAX_WHERE} characters")
    if redemption_id is not None and not 0 < len(redemption_id) <= MAX_REDEMPTION_ID:
        raise TicketUsageError(f"--id: 1 to {MAX_REDEMPTION_ID} characters")
    presented = present(site, text)
    if isinstance(presented, Refusal):
        return RedeemResult(None, refusal=presented)
    result = redeem_presented(
        store,
        site.settings,
        presented,
        redemption_id=redemption_id or f"r-{uuid.uuid4()}",
        where=where,
        now=now,
        product=product,
    )
    return RedeemResult(
        code_of(presented).text,
        redeemed=result.redeemed,
        replayed=result.replayed,
        refusal=result.refused,
    )


# --- conversion, extension, emergency tickets -----------------------------------------------
def _load_signing_key(path: Path) -> Ed25519PrivateKey:
    """A private key file (refused when its group or others may read it), as Ed25519.

    Raises:
        KeyPermissionError: the file is too open.
        TicketUsageError: it cannot be read or is not an Ed25519 private key.
    """
    try:
        return load_private_key(read_private_key_file(path))
    except (OSError, ValueError) as exc:
        raise TicketUsageError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class Conversion:
    """A paper ticket exchanged 1:1: the same code, now an electronic ticket."""

    code: str
    ticket: str  # the QR string
    voided_at: datetime


def convert(
    site: TicketSite, store: TicketStore, text: str, *, now: datetime
) -> Conversion | Refusal:
    """Exchange a paper ticket for an electronic one with the same code, and void the paper one,
    in one transaction: the code can still be used once, and only as the electronic ticket.

    The electronic ticket is signed with the gateway's key, which the boxes of the plant trust
    like a plant key (it must be among ``tickets.issuer_public_keys``).

    Raises:
        TicketUsageError: the gateway's key cannot be read or is not one the boxes trust.
        KeyPermissionError: the gateway's key file is too open.
    """
    presented = present(site, text)
    if isinstance(presented, Refusal):
        return presented
    signer = _load_signing_key(site.gateway_key_file)
    kid = key_id(signer.public_key())
    if kid not in site.keys:
        raise TicketUsageError(
            f"the gateway's key ({kid}) is not among tickets.issuer_public_keys: a converted"
            " ticket it signs would be refused; add the gateway's public key to that list"
        )
    today = local_day(now, site.settings.timezone)

    def decide(stored: CodeFacts) -> Refusal | None:
        return _refusal_only(judge_conversion(presented, pure_facts(stored), site.box, today))

    def replacement(stored: CodeFacts) -> str:
        terms = judge_conversion(presented, pure_facts(stored), site.box, today)
        if isinstance(terms, Refusal) or terms.scope is None:  # decide() let it through
            raise TicketUsageError(f"{terms}")
        ticket = ElectronicTicket(
            code=terms.code.text,
            product=terms.product,
            qty=terms.quantity,
            valid_from=terms.valid_from,
            valid_until=terms.valid_until,
            scope=terms.scope,
            kid=kid,
            origin=Origin.CONVERTED,
        )
        return electronic.encode(ticket, signer)

    outcome = store.void_converted(_key(code_of(presented)), decide, replacement)
    if isinstance(outcome, Refusal):
        return outcome
    return Conversion(outcome.code, outcome.replacement, outcome.voided_at)


def extend(
    site: TicketSite, store: TicketStore, text: str, *, now: datetime
) -> Extension | Refusal:
    """Extend an expired paper ticket once, to one month after today."""
    presented = present(site, text)
    if isinstance(presented, Refusal):
        return presented
    today = local_day(now, site.settings.timezone)

    def decide(stored: CodeFacts) -> Refusal | None:
        return _refusal_only(judge_extension(presented, pure_facts(stored), site.box, today))

    return store.extend(_key(code_of(presented)), decide, add_one_month(today))


def issue_emergency(
    site: TicketSite, store: TicketStore, product: str, *, now: datetime, note: str = ""
) -> EmergencyTicket:
    """Sell a temporary ticket at the box while the network is down (flagged, capped per day,
    valid one month, reported upstream when the link returns), with its signed receipt
    (``receipt_seq`` of the ticket returned; the price is ``tickets.prices_minor``).

    Raises:
        TicketUsageError: no emergency tickets at this box, a product not handed out here, or
            the gateway's key (which signs the receipt) cannot be read.
        KeyPermissionError: the gateway's key file is readable by its group or others.
        EmergencyCapError: the day's cap is reached.
    """
    settings = site.settings
    if settings.emergency_cap_per_day == 0 or settings.emergency_box_number is None:
        raise TicketUsageError(
            "this box issues no emergency tickets (tickets.emergency_cap_per_day is 0)"
        )
    if product not in settings.products:
        raise TicketUsageError(
            f"product {product!r} is not handed out here; this box has {list(settings.products)}"
        )
    box_number = settings.emergency_box_number
    today = local_day(now, settings.timezone)
    gateway_key = _load_signing_key(site.gateway_key_file)
    price = settings.prices_minor.get(product)

    def sign(ticket: EmergencyTicket, receipt_seq: int, incarnation: str) -> tuple[bytes, bytes]:
        signed = make_ticket_sale_receipt(
            receipt_seq,
            site=site.site_id,
            code=ticket.code,
            product=ticket.product,
            valid_until=ticket.valid_until,
            sold_at=ticket.issued_at,
            gateway_key=gateway_key,
            amount_minor=price,
            currency=settings.currency if price is not None else None,
            store=incarnation,
        )
        return canonical_json(signed), str(signed["signature"]).encode()

    try:
        return store.issue_emergency(
            product=product,
            issued_on=today,
            valid_until=add_one_month(today),
            cap_per_day=settings.emergency_cap_per_day,
            code_for=lambda seq: emergency_code(settings.plant_code, box_number, seq).text,
            note=note,
            receipt=sign,
        )
    except CodeError as exc:  # the box's 99,999 emergency numbers are used up
        raise TicketUsageError(f"cannot number another emergency ticket: {exc}") from exc


# --- batches ----------------------------------------------------------------------------------
def import_batch(
    site: TicketSite, store: TicketStore, raw: bytes
) -> tuple[batches.TicketBatch, bool]:
    """Verify a signed ``ticket_batch`` and store it (`ticket_feed.import_batch_document`,
    which the daemon's ``cmd/ticket_batch`` uses too). Returns the batch and whether it is new.

    Raises:
        BatchError: unreadable, untrusted, forged or altered, inconsistent, or of another plant.
        BatchConflictError: the id holds other content, or a range overlaps another batch's.
    """
    return import_batch_document(site.settings.plant_code, site.keys, store, raw)


# --- across boxes -----------------------------------------------------------------------------
# --- statistics -------------------------------------------------------------------------------
def stats(
    site: TicketSite, store: TicketStore, *, now: datetime, period: str = "month"
) -> dict[str, Any]:
    """`ticket_stats.stats` of this box (also what the daemon publishes on MQTT)."""
    return ticket_stats.stats(site.site_id, site.settings, store, now=now, period=period)


# --- the plant's side (demos and tests) -------------------------------------------------------
def make_electronic(
    key_file: Path,
    *,
    code: str,
    product: str,
    valid_from: date,
    valid_until: date,
    scope: Scope,
    qty: int = 1,
    origin: Origin = Origin.SOLD,
) -> str:
    """Sign an electronic ticket with a plant key (the plant's tool, not the box's).

    Raises:
        TicketUsageError: the key cannot be read.
        KeyPermissionError: the key file is too open.
        ValueError: a field is invalid (pydantic's `ValidationError` is one).
    """
    key = _load_signing_key(key_file)
    ticket = ElectronicTicket(
        code=code,
        product=product,
        qty=qty,
        valid_from=valid_from,
        valid_until=valid_until,
        scope=scope,
        kid=key_id(key.public_key()),
        origin=origin,
    )
    return electronic.encode(ticket, key)


def make_batch(
    key_file: Path,
    *,
    batch_id: str,
    plant: str,
    product: str,
    face_minor: int,
    currency: str,
    valid_from: date,
    valid_until: date,
    scope: Scope,
    ranges: list[tuple[int, int]],
) -> dict[str, Any]:
    """Sign a ``ticket_batch`` with a plant key; ``ranges`` as ``(first_serial, count)``.

    Raises:
        TicketUsageError: the key cannot be read.
        KeyPermissionError: the key file is too open.
        ValueError: a field is invalid (pydantic's `ValidationError` is one).
    """
    key = _load_signing_key(key_file)
    batch = batches.TicketBatch(
        batch=batch_id,
        plant=plant,
        product=product,
        face_minor=face_minor,
        currency=currency,
        valid_from=valid_from,
        valid_until=valid_until,
        scope=scope,
        ranges=tuple(batches.CodeRange(first_serial=f, count=n) for f, n in ranges),
        kid=key_id(key.public_key()),
    )
    return batches.sign_batch(batch, key)


def describe_refusal(refusal: Refusal) -> dict[str, str]:
    return {"reason": refusal.reason.value, "detail": refusal.detail}
