"""Ticket benchmark: offline verification and redemption against the raw Ed25519 rate.

Run: ``prepay bench tickets [--quick]``. In one process, on one store file (WAL,
``synchronous=FULL``, as the gateway opens it), it measures

- **raw Ed25519**: `cryptography`'s ``Ed25519PublicKey.verify`` over the same payload bytes and
  signatures the tickets carry: the floor every offline check stands on;
- **electronic verification**: the QR string decoded, its key picked by id, its signature
  verified, its fields validated and judged (scope, product, validity), no store;
- **checks through the store**: ``prepay ticket check``'s path for electronic tickets and for
  paper codes (check digit, the range lookup among all issued ranges, void, extension and use);
- **redemptions**: ``prepay ticket redeem``'s path, one durable transaction each (the decision
  and the insert in one ``BEGIN IMMEDIATE``), paper and electronic.

Each rate is also given as a ratio of the raw Ed25519 rate measured in the same run, so runs on
different machines compare. Load: 1,000 issued ranges of 100 paper codes each, 5,000
electronic tickets and 3,000 redemptions (``--quick``: 100 ranges, 500 tickets, 300
redemptions). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from gateway.northbound.signing import generate_private_key, key_id
from gateway.ops import tickets
from gateway.store.tickets import NewBatch, TicketStore
from gateway.tickets import electronic
from gateway.tickets.codes import TicketCode
from gateway.tickets.decisions import Box, Facts, judge
from gateway.tickets.electronic import ElectronicTicket
from gateway.tickets.scope import Scope
from gateway.tickets.settings import TicketSettings

PLANT = "330102"
PRODUCT = "18.9L"
DEPOT, REGION = "bench-depot", "bench"
NOW = datetime(2027, 1, 15, 2, 0, tzinfo=UTC)
FROM, UNTIL = date(2026, 12, 1), date(2027, 6, 30)
RANGE_SIZE = 100


def _rate(n: int, work: Callable[[int], object]) -> float:
    """``n`` calls of ``work(i)`` per second (best of two runs over the same inputs)."""
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for i in range(n):
            work(i)
        best = min(best, time.perf_counter() - start)
    return n / best


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def main() -> None:
    parser = argparse.ArgumentParser(prog="prepay bench tickets", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the load")
    parser.add_argument("--tickets", type=int, help="electronic tickets (default 5,000)")
    parser.add_argument("--ranges", type=int, help="issued ranges of 100 codes (default 1,000)")
    parser.add_argument("--redemptions", type=int, help="redemptions of each kind (default 3,000)")
    args = parser.parse_args()
    n_tickets = args.tickets or (500 if args.quick else 5_000)
    n_ranges = args.ranges or (100 if args.quick else 1_000)
    n_redeem = args.redemptions or (300 if args.quick else 3_000)
    n_redeem = min(n_redeem, n_tickets, 4 * n_ranges)  # 4 paper codes of each range are used

    key = generate_private_key()
    public = key.public_key()
    kid = key_id(public)
    keys = {kid: public}
    settings = TicketSettings(
        plant_code=PLANT,
        depot=DEPOT,
        region=REGION,
        products=(PRODUCT,),
        issuer_public_keys=(Path("plant.pub.pem"),),
    )
    box = Box.from_settings(settings)

    # Serial layout: every other block of 100 is issued, so a lookup lands between ranges too.
    first_serials = [2 * RANGE_SIZE * i for i in range(n_ranges)]
    paper = [TicketCode(PLANT, first + j).text for first in first_serials for j in (0, 37, 74, 99)]
    scope = Scope(depot=DEPOT)
    made = [
        electronic.encode(
            ElectronicTicket(
                code=TicketCode(PLANT, 800_000_000 + i).text,
                product=PRODUCT,
                valid_from=FROM,
                valid_until=UNTIL,
                scope=scope,
                kid=kid,
            ),
            key,
        )
        for i in range(n_tickets)
    ]
    # The bytes the raw verify checks: each ticket's payload and signature, decoded once.
    raw = [
        (_unb64(signature), _unb64(payload))
        for _, payload, signature in (text.split(".") for text in made)
    ]

    with tempfile.TemporaryDirectory(prefix="bench-tickets-") as tmp:
        site = tickets.TicketSite(
            site_id="bench-box",
            path=Path(tmp) / "site.yaml",
            settings=settings,
            keys=keys,
            state_dir=Path(tmp),
            gateway_key_file=Path(tmp) / "gateway.pem",
        )
        with TicketStore(
            Path(tmp) / "prepay.sqlite", box_id="bench-box", clock=lambda: NOW
        ) as store:
            store.import_batch(
                NewBatch(
                    batch_id="B1",
                    plant=PLANT,
                    product=PRODUCT,
                    face_minor=2000,
                    currency="CNY",
                    valid_from=FROM,
                    valid_until=UNTIL,
                    scope={"region": REGION},
                    ranges=tuple((f, f + RANGE_SIZE - 1) for f in first_serials),
                    document="{}",
                    content_hash="bench",
                )
            )

            # Measured before and after the others (best of both): a machine busy with other
            # work at one moment must not make the ratios look better than they are.
            raw_rate = _rate(n_tickets, lambda i: public.verify(*raw[i]))

            def verify_and_judge(i: int) -> None:
                ticket = electronic.verify(made[i], keys)
                assert isinstance(ticket, ElectronicTicket)  # noqa: S101 - a bench that lies is worse
                judge(ticket, Facts(), box, NOW.date())

            verify_rate = _rate(n_tickets, verify_and_judge)
            n_checks = min(n_tickets, 2_000 if not args.quick else 300)

            def check(text: str) -> None:
                verdict = tickets.check(site, store, text, now=NOW)
                assert verdict.accepted, verdict.refusal  # noqa: S101

            e_check_rate = _rate(n_checks, lambda i: check(made[i]))
            p_check_rate = _rate(n_checks, lambda i: check(paper[i % len(paper)]))
            raw_rate = max(raw_rate, _rate(n_tickets, lambda i: public.verify(*raw[i])))

            def redeem(text: str) -> None:
                result = tickets.redeem(site, store, text, now=NOW)
                assert result.redeemed is not None, result.refusal  # noqa: S101

            start = time.perf_counter()
            for i in range(n_redeem):
                redeem(paper[i])
            p_redeem_rate = n_redeem / (time.perf_counter() - start)
            start = time.perf_counter()
            for i in range(n_redeem):
                redeem(made[i])
            e_redeem_rate = n_redeem / (time.perf_counter() - start)
            refused = tickets.redeem(site, store, paper[0], now=NOW + timedelta(seconds=1))
            used = len(store.all_redemptions())

    print(f"raw Ed25519 verify:       {raw_rate:10.0f} /s")
    print(
        f"electronic verify+judge:  {verify_rate:10.0f} /s  ({verify_rate / raw_rate:.2f} of raw)"
    )
    print(f"check, electronic+store:  {e_check_rate:10.0f} /s  ({e_check_rate / raw_rate:.2f})")
    print(f"check, paper+ranges:      {p_check_rate:10.0f} /s  ({p_check_rate / raw_rate:.2f})")
    print(f"redeem, paper:            {p_redeem_rate:10.0f} /s  (one durable transaction each)")
    print(f"redeem, electronic:       {e_redeem_rate:10.0f} /s")
    result = {
        "tickets": n_tickets,
        "ranges": n_ranges,
        "redemptions": 2 * n_redeem,
        "stored_redemptions": used,
        "second_redemption_refused": refused.refusal is not None,
        "raw_verify_per_s": round(raw_rate),
        "electronic_verify_per_s": round(verify_rate),
        "electronic_check_per_s": round(e_check_rate),
        "paper_check_per_s": round(p_check_rate),
        "paper_redeem_per_s": round(p_redeem_rate),
        "electronic_redeem_per_s": round(e_redeem_rate),
        "verify_ratio": round(verify_rate / raw_rate, 3),
        "electronic_check_ratio": round(e_check_rate / raw_rate, 3),
        "paper_check_ratio": round(p_check_rate / raw_rate, 3),
        "redeem_ratio": round(min(p_redeem_rate, e_redeem_rate) / raw_rate, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
