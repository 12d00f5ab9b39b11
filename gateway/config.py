"""The site configuration: one YAML file per gateway, validated as a whole.

``prepay check-config -c SITE.yaml`` and the daemon both call `load_site`; any problem is a
``FILE:LINE: field: message`` line and nothing is loaded. Paths inside the file (tariffs, keys,
the state directory, profiles, codecs) are relative to the site file's directory.

The file names the site, how to reach the utility's broker, the keys, the tariffs, the policies
per account class, the devices (grouped by driver), and the accounts: which meter bills which
account, which device cuts it, under which tariff, class and policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from billing_engine.base.errors import ConfigError, InvalidConfigError
from billing_engine.base.yaml_lines import errors_from_validation, line_of, parse_yaml
from billing_engine.kernels import KernelMode
from billing_engine.tariff import Tariff, load_tariff
from drivers.ble.config import BleDispenserConfig
from drivers.lorawan.config import LnsConfig
from drivers.modbus.config import ModbusBusConfig
from drivers.modbus.profiles import load_profiles  # YAML and pydantic only, never pymodbus
from gateway.northbound.settings import CommandLimits, MqttSettings
from gateway.policy.config import PolicyConfig
from gateway.policy.quality import MeterConfig, Rating

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


class AccountConfig(_Model):
    """One prepaid account."""

    id: Ident
    meter: Ident
    actuator: Ident | None = None  # device id of the relay / valve / dispenser lock
    tariff: Ident
    class_name: Annotated[str, Field(alias="class")]
    policy: Ident
    opening_usage: Annotated[int, Field(ge=0)] = 0  # milli-units already used this cycle
    currency: str | None = None  # defaults to the tariff's

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SiteConfig(_Model):
    """A whole site file."""

    site: Ident
    state_dir: Path
    mqtt: MqttSettings
    commands: CommandLimits = CommandLimits()
    keys: KeysConfig
    tariffs: tuple[Path, ...]
    policies: dict[Ident, PolicyConfig]
    accounts: tuple[AccountConfig, ...] = ()
    meters: tuple[MeterConfig, ...] = ()  # optional data-quality settings per meter
    devices: DevicesConfig = DevicesConfig()
    outbox: OutboxConfig = OutboxConfig()
    actuation: ActuationConfig = ActuationConfig()
    billing: BillingConfig = BillingConfig()
    reading_queue: Annotated[int, Field(ge=10)] = 10_000
    # An account's retained state message follows its balance at most this often (mode and
    # debt changes go out at once); dirty balances are flushed when the interval has passed.
    state_publish_interval_s: Annotated[float, Field(ge=0)] = 10.0
    batch_max: Annotated[int, Field(ge=1)] = 500
    # Billed readings are deleted from the journal this many days after they were received
    # (null: never). The ledger, events and account state are kept whatever this says.
    journal_retention_days: Annotated[int, Field(ge=1)] | None = 400

    @model_validator(mode="after")
    def accounts_unique(self) -> Self:
        seen_ids: set[str] = set()
        seen_meters: dict[str, str] = {}
        for acc in self.accounts:
            if acc.id in seen_ids:
                raise ValueError(f"account {acc.id} is defined twice")
            seen_ids.add(acc.id)
            if acc.meter in seen_meters:
                raise ValueError(
                    f"meter {acc.meter} bills both {seen_meters[acc.meter]} and {acc.id}; "
                    "a meter bills one account"
                )
            seen_meters[acc.meter] = acc.id
            if acc.policy not in self.policies:
                raise ValueError(
                    f"account {acc.id}: unknown policy {acc.policy!r}; "
                    f"the site defines {sorted(self.policies)}"
                )
        return self


@dataclass(frozen=True)
class Site:
    """A loaded site: the validated config, its tariffs by id, and where it came from."""

    config: SiteConfig
    path: Path
    tariffs: dict[str, Tariff]

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.path.parent / path).resolve()

    @property
    def state_dir(self) -> Path:
        return self.resolve(self.config.state_dir)

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


def load_site(path: Path) -> Site:
    """Load and validate a site file and the tariffs it names, all or nothing.

    Raises:
        InvalidConfigError: one ``FILE:LINE: field: message`` per problem, across the site file
            and its tariff files.
    """
    data, node = parse_yaml(path)
    name = str(path)
    if not isinstance(data, dict):
        raise InvalidConfigError([ConfigError(name, 1, "<document>", "expected a mapping")])
    try:
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise errors_from_validation(name, node, exc) from exc
    errors: list[ConfigError] = []
    tariffs: dict[str, Tariff] = {}
    for i, tariff_path in enumerate(config.tariffs):
        full = tariff_path if tariff_path.is_absolute() else path.parent / tariff_path
        try:
            tariff = load_tariff(full)
        except InvalidConfigError as exc:
            errors.extend(exc.errors)
            continue
        if tariff.id in tariffs:
            errors.append(
                ConfigError(
                    name,
                    line_of(node, ("tariffs", i)),
                    f"tariffs.{i}",
                    f"two tariff files have the id {tariff.id}",
                )
            )
        tariffs[tariff.id] = tariff
    if not errors:
        for i, acc in enumerate(config.accounts):
            tariff_found = tariffs.get(acc.tariff)
            if tariff_found is None:
                errors.append(
                    ConfigError(
                        name,
                        line_of(node, ("accounts", i, "tariff")),
                        f"accounts.{i}.tariff",
                        f"unknown tariff {acc.tariff!r}; the site loads {sorted(tariffs)}",
                    )
                )
            elif acc.class_name not in tariff_found.class_names:
                errors.append(
                    ConfigError(
                        name,
                        line_of(node, ("accounts", i, "class")),
                        f"accounts.{i}.class",
                        f"tariff {acc.tariff} has no class {acc.class_name!r}; "
                        f"it has {list(tariff_found.class_names)}",
                    )
                )
    site = Site(config=config, path=path.resolve(), tariffs=tariffs)
    if not errors:
        try:
            site.meter_ratings  # noqa: B018 - loads the Modbus profiles: a bad one is an error here
        except InvalidConfigError as exc:
            errors.extend(exc.errors)
    if errors:
        raise InvalidConfigError(errors)
    return site
