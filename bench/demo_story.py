"""The story of one `make demo` run, told from the messages the backend received
(`bench/demo.py`): the steps of the story account, the gateway's answer to each fault, and the
water kiosk's customers (a card, a paper ticket, an electronic ticket) with the receipt.

Pure: messages in, lines out. A step or answer that is not among the messages is told as
``NOT SEEN``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from billing_engine.money import format_minor
from firmware_sim.scenario import FaultAction, Scenario
from gateway.config import SiteConfig

CURRENCY = "CNY"
TOPUP_MINOR = 5_000  # 50.00 yuan to every account
#: The story's account, its relay, and its first top-up. 6.00 yuan arms the resident policy's
#: 5.00 alert (a top-up re-arms the alerts at or below the new balance) and lasts about 15 s:
#: flat-101-elec uses a flat 24 kWh a simulated day at 2880x (a day per 30 s), 0.8 kWh a second,
#: which is 0.8 x 0.538 = 0.43 yuan a second at the tier-1 price of the Zhejiang tariff.
STORY_ACCOUNT = "A-101-E"
STORY_DEVICE = "flat-101-elec"
STORY_TOPUP_MINOR = 600

#: The water kiosk (demo-site.yaml's kiosk-1 with its ``vending`` section): flat 201's card
#: draws on its water account at 0.35 CNY a litre; the customer holds the tap for 2.5 L, which
#: costs 2.5 x 0.35 = 0.875 CNY, 88 fen rounded half-up (docs/vending.md).
KIOSK = "kiosk-1"
KIOSK_CARD = "CARD-0001"
KIOSK_ACCOUNT = "A-201-W"
CARD_POUR_ML = 2_500
#: The tickets (docs/tickets.md): the run's site gets a ``tickets`` section for this plant,
#: depot and region (`bench.demo_files.run_site_doc`), with a plant key made for the run.
TICKET_PLANT = "330102"
TICKET_PRODUCT = "18.9L"
TICKET_DEPOT = "hz-xihu-03"
TICKET_REGION = "hz"
#: A batch of 500 paper tickets, serials 10000-10499, 20.00 CNY each, for the region.
TICKET_BATCH = "B-DEMO-1"
TICKET_BATCH_RANGE = (10_000, 500)
TICKET_FACE_MINOR = 2_000
#: Serial 10000 of the batch, with its Damm check digit: docs/tickets.md's worked example.
PAPER_CODE = "3301020000100008"
#: An electronic ticket's code: serial 500000, check digit 4 (Damm over 330102000500000, as
#: `prepay ticket make code --plant 330102 --serial 500000` prints it). Outside the batch: an
#: electronic ticket is good by the plant's signature, not by an issued range.
ELECTRONIC_CODE = "3301020005000004"
#: The customer holds the tap for a whole bucket: the valve closes at the ticket's 18.9 L.
TICKET_POUR_ML = 18_900

#: What the gateway publishes when a fault of the scenario takes effect: the alarm codes, in
#: order, on the account of the faulted device (its meter's or its actuator's account). A
#: fault the gateway does not answer on MQTT (lost or repeated LoRa uplinks: it bills across
#: the gap and drops the repeats) has no entry, and the demo's scenario does not schedule it.
FAULT_EFFECTS: dict[str, tuple[str, ...]] = {
    # A Modbus fault with a count of offline_after x (1 + retries) replies fails that many polls
    # in a row (each poll tries 1 + retries times): offline, and online at the next good poll.
    # Only a device that is an account's actuator: the gateway journals the offline of a device
    # that is only a meter without an account, and publishes nothing.
    "timeout": ("device_offline", "device_online"),
    "crc": ("device_offline", "device_online"),
    "exception": ("device_offline", "device_online"),
    # The register falls to the new meter's reading: held as register_backwards; the next one
    # continues from there, so the gateway asks the operator (meter_reset_or_swap).
    "meter_swap": ("register_backwards", "meter_reset_or_swap"),
    # A LoRaWAN device that joins again starts its frame counter at 0.
    "counter_reset": ("device_counter_reset",),
    # The BLE link drops; the gateway reconnects after its reconnect_delay_s.
    "drop_links": ("device_offline", "device_online"),
}


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Seen:
    """One message on the site's topics, in the order the backend received them."""

    topic: str
    doc: dict[str, Any]

    @property
    def at(self) -> datetime:
        # A ticket redemption between boxes carries its instant as ``at``, every other as ``ts``.
        return parse_ts(str(self.doc["ts"] if "ts" in self.doc else self.doc["at"]))

    def is_event(self, account: str, *kinds: str) -> bool:
        return (
            self.topic.endswith("/event")
            and self.doc.get("account") == account
            and self.doc.get("event") in kinds
        )

    def is_alarm(self, account: str, code: str) -> bool:
        return self.is_event(account, "alarm") and self.doc.get("alarm") == code

    def is_session(self, dispenser: str, status: str, identity_kind: str) -> bool:
        return (
            self.topic.endswith(f"/dispenser/{dispenser}/session")
            and self.doc.get("status") == status
            and self.doc.get("identity_kind") == identity_kind
        )

    def is_redeemed(self, code: str) -> bool:
        """The box's redemption of ``code``, as published to the plant's other boxes."""
        return self.topic.startswith(f"prepay/tickets/{code[:6]}/{code}/redeemed/")

    def is_confirmed(self, device: str, supply: str) -> bool:
        return (
            self.topic.endswith(f"/device/{device}/state")
            and self.doc.get("confirmation") == "confirmed"
            and self.doc.get("supply") == supply
        )


@dataclass(frozen=True)
class StoryStep:
    """One step the demo shows: what to find, after which earlier step."""

    label: str
    matches: Callable[[Seen], bool]
    after: int | None  # index of the step it must follow (in arrival order); None: any time


def story_steps(account: str, device: str) -> list[StoryStep]:
    """Top-up, low balance, cutoff, the relay confirming it, top-up, restore, confirmed.

    The gateway journals a top-up and the restore it causes in one transaction and may publish
    the restore first, so both only need to follow the cutoff's confirmation.
    """
    return [
        StoryStep(
            "top-up applied",
            lambda s: (
                s.is_event(account, "topup_applied")
                and s.doc.get("amount_minor") == STORY_TOPUP_MINOR
            ),
            None,
        ),
        StoryStep("low balance", lambda s: s.is_event(account, "low_balance"), 0),
        StoryStep("cutoff", lambda s: s.is_event(account, "cutoff"), 1),
        StoryStep("cutoff confirmed on the device", lambda s: s.is_confirmed(device, "off"), 2),
        StoryStep(
            "top-up applied",
            lambda s: (
                s.is_event(account, "topup_applied") and s.doc.get("amount_minor") == TOPUP_MINOR
            ),
            3,
        ),
        StoryStep("restored", lambda s: s.is_event(account, "restored"), 3),
        StoryStep("restore confirmed on the device", lambda s: s.is_confirmed(device, "on"), 5),
    ]


def find_steps(seen: Sequence[Seen], steps: Sequence[StoryStep]) -> list[int | None]:
    """For each step, the index in ``seen`` of the first message that matches it after the step
    it follows; None when it is not there (nor then is any step that follows it)."""
    found: list[int | None] = []
    for story_step in steps:
        start = 0
        if story_step.after is not None:
            before = found[story_step.after]
            if before is None:
                found.append(None)
                continue
            start = before + 1
        found.append(
            next((i for i in range(start, len(seen)) if story_step.matches(seen[i])), None)
        )
    return found


@dataclass
class FaultWatch:
    """A scheduled fault and the alarms it should bring, in order, on its device's account."""

    fault: FaultAction
    at_s: float
    account: str
    codes: tuple[str, ...]
    found: list[Seen] = field(default_factory=list)

    def look(self, seen: Sequence[Seen], after: datetime) -> bool:
        """Find each code after the previous one (the first after ``after``); True when all are."""
        self.found = []
        for code in self.codes:
            since = self.found[-1].at if self.found else after
            hit = next((s for s in seen if s.is_alarm(self.account, code) and s.at >= since), None)
            if hit is None:
                return False
            self.found.append(hit)
        return True


def account_of_device(site: SiteConfig, scenario: Scenario, device: str) -> str:
    """The account a scenario device bills or switches, found through the site file.

    Raises:
        ValueError: no account has it.
    """
    meters: dict[str, str] = {}
    for bus in site.devices.modbus_buses:
        meters |= {d.device_id: d.meter_id for d in bus.devices}
    euis = {d.device_id: d.dev_eui.lower() for n in scenario.lora for d in n.devices}
    for network in site.devices.lns:
        for lns_device in network.devices:
            for sim_device, eui in euis.items():
                if eui == (lns_device.dev_eui or "").lower():
                    meters[sim_device] = lns_device.meter_id or ""
    meters |= {d.device_id: d.meter_id for d in site.devices.ble_dispensers}
    for account in site.accounts:
        if device == account.actuator or meters.get(device) == account.meter:
            return account.id
    raise ValueError(f"no account of the demo site bills or switches {device}")


def fault_watches(site: SiteConfig, scenario: Scenario) -> list[FaultWatch]:
    """A watch per scheduled fault.

    Raises:
        ValueError: a fault with no entry in `FAULT_EFFECTS` (the demo could not show it), or
            on a device of no account.
    """
    watches = []
    for fault in sorted(scenario.faults, key=lambda f: f.at_s):
        if fault.fault not in FAULT_EFFECTS:
            raise ValueError(f"the demo cannot show a {fault.fault} fault (FAULT_EFFECTS)")
        account = account_of_device(site, scenario, fault.device)
        watches.append(FaultWatch(fault, fault.at_s, account, FAULT_EFFECTS[fault.fault]))
    return watches


def _since(at: datetime, started: datetime) -> str:
    return f"+{(at - started).total_seconds():6.2f} s"


def money(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    return format_minor(value, CURRENCY) if isinstance(value, int) else "?"


def _describe(label: str, seen: Seen) -> str:
    doc = seen.doc
    detail = doc.get("detail")
    detail = detail if isinstance(detail, dict) else {}
    balance = money(doc, "balance_minor")
    if label == "top-up applied":
        receipt = doc.get("receipt") or {}
        return (
            f"top-up of {money(doc, 'amount_minor')} applied (receipt "
            f"#{receipt.get('receipt_seq')}), balance {balance}"
        )
    if label == "low balance":
        return f"low balance: {balance}, below the {money(detail, 'threshold_minor')} alert"
    if label in ("cutoff", "restored"):
        return f"{label} ({detail.get('reason', '?')}), balance {balance}"
    return f"{label}: {doc['device']} reads back {doc['supply']}"


def tell_story(seen: Sequence[Seen], watches: Sequence[FaultWatch], started: datetime) -> list[str]:
    """The closing story, one line per step and per fault; 'NOT SEEN' marks what is missing."""
    lines = [
        f"{STORY_ACCOUNT} ({STORY_DEVICE}'s relay), from the messages the backend received; "
        "times from the start of the site:"
    ]
    steps = story_steps(STORY_ACCOUNT, STORY_DEVICE)
    for story_step, index in zip(steps, find_steps(seen, steps), strict=True):
        if index is None:
            lines.append(f"  NOT SEEN  {story_step.label}")
        else:
            lines.append(
                f"  {_since(seen[index].at, started)}  {_describe(story_step.label, seen[index])}"
            )
    lines.append("the scenario's faults (at_s after the start) and the gateway's answers:")
    for watch in watches:
        fault = watch.fault
        what = f"{fault.device} {fault.fault}" + (f" x{fault.count}" if fault.count else "")
        answers = [
            f"{seen_alarm.doc['alarm']} on {watch.account} {_since(seen_alarm.at, started)}"
            for seen_alarm in watch.found
        ]
        answers += [f"NOT SEEN {code}" for code in watch.codes[len(watch.found) :]]
        lines.append(f"  +{watch.at_s:6.2f} s  {what}: {'; '.join(answers)}")
    return lines


def kiosk_steps() -> list[StoryStep]:
    """The kiosk's customers: the backend's batch of paper tickets, a card's session from
    authorised to settled, a paper ticket's session with its redemption, an electronic ticket
    redeemed at the counter. Each session settles before the next customer comes (the demo
    waits), so the first settled session after an authorised one is its end. The gateway
    redeems a ticket before it authorises its session, and publishes the two apart (the
    redemption through the ticket feed, within a second), in either order: the redemption
    only needs to follow the batch."""
    return [
        StoryStep(
            "ticket batch applied",
            lambda s: (
                s.topic.endswith("/cmd/ticket_batch/result") and s.doc.get("status") == "applied"
            ),
            None,
        ),
        StoryStep(
            "card session authorised",
            lambda s: (
                s.is_session(KIOSK, "authorised", "card") and s.doc.get("account") == KIOSK_ACCOUNT
            ),
            None,
        ),
        StoryStep("card session settled", lambda s: s.is_session(KIOSK, "settled", "card"), 1),
        StoryStep(
            "paper ticket session authorised",
            lambda s: s.is_session(KIOSK, "authorised", "ticket"),
            0,
        ),
        StoryStep(
            "paper ticket redeemed at the dispenser",
            lambda s: (
                s.is_redeemed(PAPER_CODE)
                and str(s.doc.get("where", "")).startswith(f"dispenser {KIOSK} ")
            ),
            0,
        ),
        StoryStep(
            "paper ticket session settled", lambda s: s.is_session(KIOSK, "settled", "ticket"), 3
        ),
        StoryStep(
            "electronic ticket redeemed at the counter",
            lambda s: s.is_redeemed(ELECTRONIC_CODE) and s.doc.get("kind") == "electronic",
            None,
        ),
    ]


@dataclass(frozen=True)
class ReceiptCheck:
    """The newest receipt written as a PDF and checked offline (`prepay receipt verify`).

    Attributes:
        path: the PDF; None when none could be written (``problem`` says why).
        seq: its receipt number.
        verified: `prepay receipt verify` took it with the gateway's public key.
        problem: why there is no PDF, or it did not verify.
    """

    path: Path | None
    seq: int | None = None
    verified: bool = False
    problem: str = ""


def litres(ml: object) -> str:
    """mL as litres, exactly (``2500`` -> ``2.500 L``)."""
    return f"{ml // 1000}.{ml % 1000:03d} L" if isinstance(ml, int) else "? L"


def _describe_kiosk(label: str, seen: Seen) -> str:
    doc = seen.doc
    session = f"session {doc.get('session_id')}"
    if label == "ticket batch applied":
        first, count = TICKET_BATCH_RANGE
        return (
            f"ticket batch {TICKET_BATCH} applied (cmd/ticket_batch, the plant's signature "
            f"inside the backend's): {count} paper tickets, serials {first}-{first + count - 1}"
        )
    if label == "card session authorised":
        return (
            f"{KIOSK_CARD} at {KIOSK}: {session} authorised for {doc.get('account')}, up to "
            f"{litres(doc.get('authorised_ml'))} (balance {money(doc, 'balance_minor')})"
        )
    if label == "card session settled":
        return (
            f"{session} settled: {litres(doc.get('poured_ml'))} poured, "
            f"{money(doc, 'charge_minor')} charged to {doc.get('account')}, "
            f"balance {money(doc, 'balance_minor')}"
        )
    if label == "paper ticket session authorised":
        return (
            f"paper ticket {PAPER_CODE} at {KIOSK}: {session} authorised, "
            f"{litres(doc.get('authorised_ml'))}"
        )
    if label == "paper ticket session settled":
        paid = (
            "no money (the ticket paid)"
            if doc.get("charge_minor") is None
            else f"{money(doc, 'charge_minor')} charged"
        )
        return f"{session} settled: {litres(doc.get('poured_ml'))} poured, {paid}"
    return (
        f"{doc.get('kind')} ticket {doc.get('code')} redeemed at box {doc.get('box')} "
        f"({doc.get('where')}), published to the plant's boxes"
    )


def tell_kiosk_story(
    seen: Sequence[Seen], started: datetime, receipt: ReceiptCheck | None
) -> list[str]:
    """The kiosk's part of the closing story, and the receipt; 'NOT SEEN' marks what is
    missing (a receipt that was not written or did not verify too)."""
    lines = [f"the water kiosk {KIOSK} and the tickets of plant {TICKET_PLANT}:"]
    steps = kiosk_steps()
    for story_step, index in zip(steps, find_steps(seen, steps), strict=True):
        if index is None:
            lines.append(f"  NOT SEEN  {story_step.label}")
        else:
            at = _since(seen[index].at, started)
            lines.append(f"  {at}  {_describe_kiosk(story_step.label, seen[index])}")
    if receipt is None or receipt.path is None or not receipt.verified:
        why = receipt.problem if receipt is not None else "the site did not run"
        lines.append(f"  NOT SEEN  receipt PDF written and verified ({why})")
        return lines
    topup = next(
        (
            s
            for s in seen
            if s.topic.endswith("/event")
            and s.doc.get("event") == "topup_applied"
            and (s.doc.get("receipt") or {}).get("receipt_seq") == receipt.seq
        ),
        None,
    )
    what = (
        f" (the top-up of {money(topup.doc, 'amount_minor')} to {topup.doc['account']})"
        if topup is not None
        else ""
    )
    lines.append(
        f"  receipt #{receipt.seq}{what} written to {receipt.path}; "
        "prepay receipt verify: good, with the gateway's public key"
    )
    return lines


def story_complete(lines: Sequence[str]) -> bool:
    return not any("NOT SEEN" in line for line in lines)
