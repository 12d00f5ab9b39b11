"""The site configuration: one YAML file per gateway, validated as a whole.

`load_site` reads the file and what it names (the tariffs, the device profiles); any problem is
a ``FILE:LINE: field: message`` line at the line that names the thing, and nothing is loaded.
``prepay check-config`` and ``prepay run`` add the checks of a site that is to run (its
devices, keys and state directory: `gateway.startup.preflight`). Paths inside the file
(tariffs, keys, the state directory, profiles, codecs) are relative to the site file's
directory.

The file names the site, how to reach the utility's broker, the keys, the tariffs, the policies
per account class, the devices (grouped by driver), the accounts (which meter bills which
account, which device cuts it, under which tariff, class and policy), and the meters that are
published only, never billed (``publish_only:``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from billing_engine.base.errors import ConfigError, InvalidConfigError
from billing_engine.base.yaml_lines import (
    UnreadableFileError,
    errors_from_validation,
    key_line_of,
    parse_yaml,
)
from billing_engine.kernels import KernelMode
from billing_engine.tariff import REGISTER_UNIT, RegisterUnit, Tariff, Unit, load_tariff
from drivers.ble.config import BleDispenserConfig
from drivers.lorawan.config import LnsConfig
from drivers.modbus.config import ModbusBusConfig
from drivers.modbus.profiles import load_profiles  # YAML and pydantic only, never pymodbus
from gateway.northbound.settings import CommandLimits, MqttSettings
from gateway.northbound.sink_settings import (
    HomeAssistantSettings,
    InfluxSettings,
    MetricsSettings,
)
from gateway.policy.config import PolicyConfig
from gateway.policy.quality import MeterConfig, Rating
from gateway.tickets.settings import TicketSettings

Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeysConfig(_Model):
    """Key files. Generate a set with ``prepay keys init DIR``."""

    ledger_key_file: Path  # HMAC key of the ledger chain, hex, >= 32 bytes
    gateway_private_key: Path  # Ed25519 PEM: signs receipts
    backend_public_key: Path  # Ed25519 PEM: verifies backend commands
    operator_public_key: Path | None = None  # Ed25519 PEM: verifies local `prepay topup`


class OutboxConfig(_Model):
    """How much the outbox may hold while the broker is away (ledger and state never drop)."""

    max_messages: Annotated[int, Field(ge=100)] = 200_000


class ActuationConfig(_Model):
    """How supply commands are confirmed."""

    confirm_tries: Annotated[int, Field(ge=1, le=100)] = 5
    backoff_initial_s: Annotated[float, Field(gt=0)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 60.0
    io_timeout_s: Annotated[float, Field(gt=0)] = 5.0


class BillingConfig(_Model):
    """Which build of the billing kernel bills (see `billing_engine.kernels`)."""

    # auto: the ahead-of-time build, made on first start when a C compiler is there, else the
    # JIT (about 140 MB more resident); aot: refuse to start without it; jit: never build.
    kernel: KernelMode = KernelMode.AUTO
    kernel_cache_dir: Path | None = None  # default: $XDG_CACHE_HOME/prepay-gateway/kernels


class DevicesConfig(_Model):
    """Southbound devices, grouped by driver."""

    modbus_buses: tuple[ModbusBusConfig, ...] = ()
    lns: tuple[LnsConfig, ...] = ()
    ble_dispensers: tuple[BleDispenserConfig, ...] = ()
    profiles_dir: Path = Path("../devices")
    codecs_dir: Path = Path("../codecs")


# --- the operator console (docs/operator-guide.md, "The console"; served by gateway/console/)
class ConsoleConfig(_Model):
    """The web console on the box: off unless the site file has a ``console:`` section.

    ``operator_key`` is the operator's Ed25519 private key (PEM, mode 0600): the console signs
    its actions with it, as ``prepay topup --operator-key`` does, and the daemon verifies them
    against ``keys.operator_public_key``. Without it the console only reads.
    """

    bind: str = "127.0.0.1"  # loopback by default: reach it over SSH unless told otherwise
    port: Annotated[int, Field(ge=0, le=65535)] = 8080  # 0: any free port (tests, the demo)
    users_file: Path = Path("console-users.json")  # written by `prepay console user add`
    operator_key: Path | None = None
    tls_cert: Path | None = None  # both or neither: HTTPS instead of HTTP
    tls_key: Path | None = None
    login_failures: Annotated[int, Field(ge=1, le=100)] = 5  # per user and address, then a pause
    login_pause_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    session_idle_s: Annotated[float, Field(ge=60)] = 8 * 3600.0

    @model_validator(mode="after")
    def tls_cert_with_key(self) -> ConsoleConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both for HTTPS, or neither")
        return self


# --- end console


class AccountConfig(_Model):
    """One prepaid account."""

    id: Ident
    meter: Ident
    actuator: Ident | None = None  # device id of the relay / valve / dispenser lock
    tariff: Ident
    class_name: Annotated[str, Field(alias="class")]
    policy: Ident
    opening_usage: Annotated[int, Field(ge=0)] = 0  # milli-units already used this cycle
    # Credited (negative: owed) once, when the gateway first sees the account; see
    # `gateway.flows.accounts.credit_opening_balances`.
    opening_balance_minor: Annotated[int, Field(ge=-(2**53), le=2**53)] = 0
    currency: str | None = None  # defaults to the tariff's

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PublishOnlyMeter(_Model):
    """A meter whose readings are journalled and published, never billed: telemetry for a
    utility that bills elsewhere, or a meter not assigned to an account yet.

    Listed by the operator, never assumed: a meter that no account bills and that is not listed
    here is held as ``unknown_meter`` (a forgotten assignment shows, rather than being published
    as if that were meant). ``unit`` is what no tariff gives such a meter: its register is
    published in the unit's milli-unit (kWh -> Wh, m3 -> L, L -> mL), as a billed meter's.
    """

    meter: Ident
    unit: Unit


class SiteConfig(_Model):
    """A whole site file.

    The rules across its parts (an account id once, a meter billing one account, a publish-only
    meter billing none, the account's policy, tariff and class defined) are checked by
    `load_site` after validation, so that each is reported at the line that names the thing
    rather than at the document.
    """

    site: Ident
    state_dir: Path
    mqtt: MqttSettings
    commands: CommandLimits = CommandLimits()
    keys: KeysConfig
    tariffs: tuple[Path, ...]
    policies: dict[Ident, PolicyConfig]
    accounts: tuple[AccountConfig, ...] = ()
    # Meters journalled and published with ``"billing": "none"``, never billed (no account).
    publish_only: tuple[PublishOnlyMeter, ...] = ()
    meters: tuple[MeterConfig, ...] = ()  # optional data-quality settings per meter
    devices: DevicesConfig = DevicesConfig()
    outbox: OutboxConfig = OutboxConfig()
    actuation: ActuationConfig = ActuationConfig()
    billing: BillingConfig = BillingConfig()
    tickets: TicketSettings | None = None  # water tickets (docs/tickets.md)
    console: ConsoleConfig | None = None  # the operator console (gateway/console/)
    reading_queue: Annotated[int, Field(ge=10)] = 10_000
    # An account's retained state message follows its balance at most this often (mode and
    # debt changes go out at once); dirty balances are flushed when the interval has passed.
    state_publish_interval_s: Annotated[float, Field(ge=0)] = 10.0
    batch_max: Annotated[int, Field(ge=1)] = 500
    # Group commit: at most one journal commit per window. A reading that finds the journal
    # committed less than this long ago waits for the rest of the window, so that one fsync
    # carries every reading of the window; an idle gateway commits at once. Bounded so that
    # the shutoff stays prompt (docs/operator-guide.md).
    commit_window_ms: Annotated[int, Field(ge=0, le=200)] = 20
    # Billed readings are deleted from the journal this many days after they were received
    # (null: never). The ledger, events and account state are kept whatever this says.
    journal_retention_days: Annotated[int, Field(ge=1)] | None = 400
    # The signed ledger head (the rollback check's reference) is published once the head has
    # moved by this many entries; top-ups and a shutdown publish one anyway.
    ledger_checkpoint_every: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    # Optional sinks (docs/operator-guide.md: Metrics, InfluxDB).
    metrics: MetricsSettings | None = None
    influx: InfluxSettings | None = None
    home_assistant: HomeAssistantSettings | None = None  # MQTT discovery of the accounts


@dataclass(frozen=True)
class SiteLines:
    """Where each part of a site file is, so that a check made after loading (an unknown
    meter, a missing key file) points at the line that names the thing."""

    name: str  # the file as the operator gave it
    root: yaml.Node | None

    def error(self, loc: Sequence[int | str], message: str) -> ConfigError:
        """``FILE:LINE: field: message`` at the node of ``loc`` (its key's line for a
        mapping value)."""
        return ConfigError(
            self.name, key_line_of(self.root, loc), ".".join(str(p) for p in loc), message
        )


@dataclass(frozen=True)
class Site:
    """A loaded site: the validated config, its tariffs by id, and where it came from."""

    config: SiteConfig
    path: Path
    tariffs: dict[str, Tariff]
    # None for a site built in memory (the overlay's): its errors then carry line 0.
    lines: SiteLines | None = field(default=None, compare=False, repr=False)

    def error(self, loc: Sequence[int | str], message: str) -> ConfigError:
        """A `ConfigError` at the site file's line for ``loc``."""
        return (self.lines or SiteLines(str(self.path), None)).error(loc, message)

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.path.parent / path).resolve()

    @property
    def state_dir(self) -> Path:
        return self.resolve(self.config.state_dir)

    @cached_property
    def device_meters(self) -> dict[str, str]:
        """The meter each device reads, by the device's own id (a driver's events name the
        device: a Modbus meter's device id is not its meter id)."""
        devices = self.config.devices
        found = {d.device_id: d.meter_id for bus in devices.modbus_buses for d in bus.devices}
        found |= {d.device_id: d.meter_id for d in devices.ble_dispensers}
        for lns in devices.lns:
            for d in lns.devices:
                if d.meter_id is not None:
                    for key in (d.dev_eui, d.device_id):
                        if key is not None:
                            found[key] = d.meter_id
        return found

    @cached_property
    def publish_only_units(self) -> dict[str, RegisterUnit]:
        """The register unit of each publish-only meter (``publish_only:``), by meter id."""
        return {m.meter: REGISTER_UNIT[m.unit] for m in self.config.publish_only}

    @cached_property
    def meter_ratings(self) -> dict[str, Rating]:
        """The rated maximum of each meter read over Modbus whose device profile gives one, by
        meter id (the default ``max_rate_per_h`` of `gateway.policy.quality.with_defaults`).

        Raises:
            InvalidConfigError: a profile is missing or invalid (`load_site` checks this).
        """
        devices = self.config.devices
        named = [(d.meter_id, d.profile) for bus in devices.modbus_buses for d in bus.devices]
        if not named:
            return {}
        profiles = load_profiles(self.resolve(devices.profiles_dir), {p for _, p in named})
        return {
            meter_id: Rating(rate, profiles[name].energy.unit, name)
            for meter_id, name in named
            if (rate := profiles[name].max_rate_per_h) is not None
        }


#: The settings a reload (SIGHUP) applies; every other one waits for a restart (the devices,
#: the broker, the state directory, the keys, the queues and the kernel are built at start).
RELOADABLE = (
    "tariffs",
    "policies",
    "accounts",
    "publish_only",
    "meters",
    "journal_retention_days",
)


@dataclass(frozen=True)
class SiteChanges:
    """What a reload finds changed in the site file.

    Attributes:
        applied: the reloadable settings that changed, each with what changed in it
            (``accounts: added A2; changed A1``).
        need_restart: the other settings that changed (``devices``, ``mqtt``): the running
            gateway ignores them until its next start.
    """

    applied: tuple[str, ...]
    need_restart: tuple[str, ...]


def _by_id_changes(name: str, old: Mapping[str, object], new: Mapping[str, object]) -> str | None:
    parts = [
        f"{verb} {', '.join(ids)}"
        for verb, ids in (
            ("added", sorted(new.keys() - old.keys())),
            ("removed", sorted(old.keys() - new.keys())),
            ("changed", sorted(k for k in old.keys() & new.keys() if old[k] != new[k])),
        )
        if ids
    ]
    return f"{name}: {'; '.join(parts)}" if parts else None


def site_changes(old: Site, new: Site) -> SiteChanges:
    """Compare the running site with a newly loaded one (SIGHUP)."""
    was, now = old.config, new.config
    applied = [
        _by_id_changes("tariffs", old.tariffs, new.tariffs),
        _by_id_changes("policies", was.policies, now.policies),
        _by_id_changes(
            "accounts", {a.id: a for a in was.accounts}, {a.id: a for a in now.accounts}
        ),
        _by_id_changes(
            "publish_only",
            {m.meter: m for m in was.publish_only},
            {m.meter: m for m in now.publish_only},
        ),
        _by_id_changes("meters", {m.id: m for m in was.meters}, {m.id: m for m in now.meters}),
    ]
    if was.journal_retention_days != now.journal_retention_days:
        applied.append(
            f"journal_retention_days: {was.journal_retention_days} -> {now.journal_retention_days}"
        )
    need_restart = tuple(
        name
        for name in SiteConfig.model_fields
        if name not in RELOADABLE and getattr(was, name) != getattr(now, name)
    )
    return SiteChanges(tuple(a for a in applied if a is not None), need_restart)


def load_site(path: Path) -> Site:
    """Load and validate a site file and the tariffs and device profiles it names, all or
    nothing.

    Raises:
        InvalidConfigError: one ``FILE:LINE: field: message`` per problem, across the site file,
            its tariff files and its profiles; a file that cannot be read is reported at the
            site file's line that names it.
    """
    data, node = parse_yaml(path)
    lines = SiteLines(str(path), node)
    if not isinstance(data, dict):
        found = "the file is empty" if node is None else "expected a mapping of site settings"
        raise InvalidConfigError([ConfigError(lines.name, 1, "<document>", found)])
    try:
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise errors_from_validation(lines.name, node, exc) from exc
    errors = _account_errors(config, lines) + _publish_only_errors(config, lines)
    tariff_errors: list[ConfigError] = []
    tariffs: dict[str, Tariff] = {}
    for i, tariff_path in enumerate(config.tariffs):
        full = tariff_path if tariff_path.is_absolute() else path.parent / tariff_path
        try:
            tariff = load_tariff(full)
        except UnreadableFileError as exc:
            tariff_errors.append(lines.error(("tariffs", i), f"cannot read {full}: {exc.reason}"))
            continue
        except InvalidConfigError as exc:
            tariff_errors.extend(exc.errors)
            continue
        if tariff.id in tariffs:
            tariff_errors.append(
                lines.error(("tariffs", i), f"two tariff files have the id {tariff.id}")
            )
        tariffs[tariff.id] = tariff
    # An account's tariff is looked up only once every tariff file loaded: a broken file would
    # otherwise make its accounts' tariffs "unknown" as well.
    errors += tariff_errors or _tariff_errors(config, tariffs, lines)
    site = Site(config=config, path=path.resolve(), tariffs=tariffs, lines=lines)
    errors += _profile_errors(site)
    if not errors:
        try:
            site.meter_ratings  # noqa: B018 - loads the Modbus profiles: a bad one is an error here
        except InvalidConfigError as exc:
            errors.extend(exc.errors)
    if errors:
        raise InvalidConfigError(errors)
    return site


def _account_errors(config: SiteConfig, lines: SiteLines) -> list[ConfigError]:
    """Each account id once, each meter billing one account, each policy defined."""
    errors: list[ConfigError] = []
    seen_ids: set[str] = set()
    seen_meters: dict[str, str] = {}
    for i, acc in enumerate(config.accounts):
        if acc.id in seen_ids:
            errors.append(lines.error(("accounts", i, "id"), f"account {acc.id} is defined twice"))
        seen_ids.add(acc.id)
        if acc.meter in seen_meters:
            errors.append(
                lines.error(
                    ("accounts", i, "meter"),
                    f"meter {acc.meter} bills both {seen_meters[acc.meter]} and {acc.id}; "
                    "a meter bills one account",
                )
            )
        seen_meters.setdefault(acc.meter, acc.id)
        if acc.policy not in config.policies:
            errors.append(
                lines.error(
                    ("accounts", i, "policy"),
                    f"unknown policy {acc.policy!r}; the site defines {sorted(config.policies)}",
                )
            )
    return errors


def _publish_only_errors(config: SiteConfig, lines: SiteLines) -> list[ConfigError]:
    """Each publish-only meter listed once, and billed by no account: a meter is either
    billed or published only, and the operator says which."""
    errors: list[ConfigError] = []
    billed_by = {acc.meter: acc.id for acc in config.accounts}
    seen: set[str] = set()
    for i, entry in enumerate(config.publish_only):
        loc = ("publish_only", i, "meter")
        if entry.meter in seen:
            errors.append(lines.error(loc, f"meter {entry.meter} is listed twice; list it once"))
        seen.add(entry.meter)
        if (account := billed_by.get(entry.meter)) is not None:
            errors.append(
                lines.error(
                    loc,
                    f"meter {entry.meter} bills account {account}, so it cannot be publish-only"
                    " (never billed); remove it here, or give the account another meter",
                )
            )
    return errors


def _tariff_errors(
    config: SiteConfig, tariffs: dict[str, Tariff], lines: SiteLines
) -> list[ConfigError]:
    """Each account's tariff loaded, and its class one of the tariff's."""
    errors: list[ConfigError] = []
    for i, acc in enumerate(config.accounts):
        tariff_found = tariffs.get(acc.tariff)
        if tariff_found is None:
            errors.append(
                lines.error(
                    ("accounts", i, "tariff"),
                    f"unknown tariff {acc.tariff!r}; the site loads {sorted(tariffs)}",
                )
            )
        elif acc.class_name not in tariff_found.class_names:
            errors.append(
                lines.error(
                    ("accounts", i, "class"),
                    f"tariff {acc.tariff} has no class {acc.class_name!r}; "
                    f"it has {list(tariff_found.class_names)}",
                )
            )
    return errors


def _profile_errors(site: Site) -> list[ConfigError]:
    """Each Modbus device's profile file present, reported at the device's ``profile:`` line
    (what is wrong inside a profile is reported in the profile's own file)."""
    devices = site.config.devices
    profiles_dir = site.resolve(devices.profiles_dir)
    errors: list[ConfigError] = []
    for b, bus in enumerate(devices.modbus_buses):
        for d, device in enumerate(bus.devices):
            if not (profiles_dir / f"{device.profile}.yaml").is_file():
                known = sorted(p.stem for p in profiles_dir.glob("*.yaml"))
                errors.append(
                    site.error(
                        ("devices", "modbus_buses", b, "devices", d, "profile"),
                        f"no profile {device.profile!r} in {profiles_dir}"
                        f" (it has {', '.join(known) or 'none'})",
                    )
                )
    return errors
