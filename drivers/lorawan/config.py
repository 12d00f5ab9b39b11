"""Config models for one network-server connection (`LnsConfig`) and its devices.

Loaded from YAML with `billing_engine.base.yaml_lines.load_model(path, LnsConfig)`, so every
error names file, line and field. Frozen and closed (``extra="forbid"``); runtime state lives
in the adapter, not here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from drivers.lorawan.envelope import NbiotMapping, TtsPriority

DevEui = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{16}$")]
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^/#+\s]+$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerConfig(_Model):
    """The network server's MQTT broker.

    For TTS: ``username`` is ``{application id}@{tenant id}`` (TTN: ``app@ttn``), ``password``
    an API key. For ChirpStack: whatever the broker (mosquitto) requires.
    """

    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    client_id: str | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 60


class LnsDeviceConfig(_Model):
    """One device behind the network server: a meter, a valve, or both (UC511 + pulse input).

    Attributes:
        dev_eui: the DevEUI (ChirpStack keys devices by it).
        device_id: the TTS device id, or the NB-IoT platform's device id.
        codec: a codec name from ``configs/codecs`` (LoRaWAN only).
        meter_id: the meter this device's register bills, if any.
        valve_device_id: the supply device id the core switches, if this is a valve.
        register_multiply, register_divide: override the codec's register scaling (K-factor).
        uplink_interval_s: how often the device sends an uplink (its reporting period). A
            class A valve hears a downlink only after an uplink and reports the new state
            with the next one, so a valve command is re-sent no sooner than this.
        confirm_window_s: how long a valve command may stay unconfirmed before the
            ``supply_unconfirmed`` alarm; default two uplink intervals and a minute (the
            downlink waits for one uplink, the report comes with the next).
    """

    dev_eui: DevEui | None = None
    device_id: Identifier | None = None
    codec: str | None = None
    meter_id: Identifier | None = None
    valve_device_id: Identifier | None = None
    register_multiply: Annotated[int, Field(ge=1)] | None = None
    register_divide: Annotated[int, Field(ge=1)] | None = None
    uplink_interval_s: Annotated[int, Field(ge=1, le=7 * 86_400)] = 900
    confirm_window_s: Annotated[float, Field(gt=0, le=30 * 86_400)] | None = None

    @property
    def valve_alarm_after_s(self) -> float:
        """`confirm_window_s`, or its default: two uplink intervals and a minute."""
        if self.confirm_window_s is not None:
            return self.confirm_window_s
        return 2.0 * self.uplink_interval_s + 60.0

    @model_validator(mode="after")
    def meter_or_valve(self) -> LnsDeviceConfig:
        """A device that bills nothing and switches nothing is a mistake."""
        if self.meter_id is None and self.valve_device_id is None:
            raise ValueError("give meter_id, valve_device_id or both")
        if self.dev_eui is None and self.device_id is None:
            raise ValueError("give dev_eui (ChirpStack) or device_id (TTS, NB-IoT)")
        return self


class LnsConfig(_Model):
    """One MQTT integration of one network server (or NB-IoT platform).

    Attributes:
        name: the adapter's name in logs and events (``lns[name]``).
        kind: ``chirpstack`` (v4), ``tts`` (The Things Stack v3) or ``nbiot`` (generic JSON).
        application_id: ChirpStack application UUID, or TTS application id.
        tenant_id: TTS tenant (``ttn`` on The Things Network; none on TTS Open Source).
        topic_prefix: ``application`` (ChirpStack) or ``v3`` (TTS) unless the server was
            configured otherwise.
        qos: MQTT QoS; TTS supports QoS 0 only.
        nbiot: the JSON mapping (``kind: nbiot`` only).
        tts_priority: downlink priority on TTS.
        io_timeout_s: bound on connect, subscribe and publish.
        reconnect_s: wait before reconnecting after the broker went away.
    """

    name: Identifier
    kind: Literal["chirpstack", "tts", "nbiot"]
    broker: BrokerConfig
    application_id: Identifier | None = None
    tenant_id: Identifier | None = None
    topic_prefix: str | None = None
    qos: Literal[0, 1] = 0
    nbiot: NbiotMapping | None = None
    tts_priority: TtsPriority = "NORMAL"
    io_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    reconnect_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    devices: list[LnsDeviceConfig]

    @property
    def prefix(self) -> str:
        """The topic prefix in effect."""
        if self.topic_prefix is not None:
            return self.topic_prefix
        return "application" if self.kind == "chirpstack" else "v3"

    @model_validator(mode="after")
    def kind_needs_its_settings(self) -> LnsConfig:
        """Each kind has its own required settings."""
        if self.kind in {"chirpstack", "tts"} and self.application_id is None:
            raise ValueError(f"kind {self.kind} needs application_id")
        if self.kind == "nbiot" and self.nbiot is None:
            raise ValueError("kind nbiot needs an nbiot: mapping (device_id, register, ...)")
        if self.kind != "nbiot" and self.nbiot is not None:
            raise ValueError("nbiot: mapping is only for kind nbiot")
        if self.kind == "tts" and self.qos != 0:
            raise ValueError("The Things Stack supports MQTT QoS 0 only; set qos: 0")
        if self.kind != "tts" and self.tenant_id is not None:
            raise ValueError("tenant_id is only for kind tts")
        return self

    @model_validator(mode="after")
    def devices_match_kind(self) -> LnsConfig:
        """ChirpStack keys devices by DevEUI, TTS and NB-IoT by device id; LoRaWAN needs codecs."""
        for index, device in enumerate(self.devices):
            where = f"devices[{index}]"
            if self.kind == "chirpstack" and device.dev_eui is None:
                raise ValueError(f"{where}: ChirpStack devices need dev_eui")
            if self.kind in {"tts", "nbiot"} and device.device_id is None:
                raise ValueError(f"{where}: {self.kind} devices need device_id")
            if self.kind != "nbiot" and device.codec is None:
                raise ValueError(f"{where}: LoRaWAN devices need a codec")
            if self.kind == "nbiot" and device.valve_device_id is not None:
                raise ValueError(f"{where}: NB-IoT valves are not supported yet")
        return self

    @model_validator(mode="after")
    def ids_unique(self) -> LnsConfig:
        """Each DevEUI, device id, meter id and valve id appears once."""
        for label, values in (
            ("dev_eui", [d.dev_eui.lower() for d in self.devices if d.dev_eui]),
            ("device_id", [d.device_id for d in self.devices if d.device_id]),
            ("meter_id", [d.meter_id for d in self.devices if d.meter_id]),
            ("valve_device_id", [d.valve_device_id for d in self.devices if d.valve_device_id]),
        ):
            seen: set[str] = set()
            for value in values:
                if value in seen:
                    raise ValueError(f"{label} {value} appears twice")
                seen.add(value)
        return self

    def device_key(self, device: LnsDeviceConfig) -> str:
        """The network server's id for ``device`` (what topics and events carry)."""
        if self.kind == "chirpstack":
            assert device.dev_eui is not None  # noqa: S101 - devices_match_kind guarantees it
            return device.dev_eui.lower()
        assert device.device_id is not None  # noqa: S101 - devices_match_kind guarantees it
        return device.device_id
