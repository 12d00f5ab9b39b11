"""The simulated meter itself: its registers, its consumption, its supply and its faults.

A `SimMeter` answers at one unit id with the register map of a `DeviceProfile`:

* its billed register advances with a consumption curve (milli-units per hour as a function of
  seconds since start) while the supply is on, in exact integer arithmetic;
* its relay/valve follows writes to the profile's supply register or coil, and the state is
  observable from the device side (`SimMeter.supply_on`, `SimMeter.supply_writes`);
* faults can be switched on per meter: no answer (the master times out), a corrupted reply
  (bad CRC on RTU, a short MBAP frame on TCP), a Modbus exception reply, or ignoring supply
  writes while acknowledging them; each fault may be limited to the next N replies.

Both servers serve it: pymodbus's (`firmware_sim.modbus_meter`, through `SimMeter.sim_device`)
and our own lighter TCP server (`firmware_sim.modbus_tcp_server`); `ServedMeters` is their
common face. Register values come from the same pure tables the gateway decodes with
(`drivers.modbus.registers`), so a profile is tested against itself only through the wire.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simutils import SimUtils

from drivers.modbus.config import DeviceProfile, RegisterSpec
from drivers.modbus.profiles import profile_registers
from drivers.modbus.registers import (
    Table,
    encode_value,
    from_milli,
    register_count,
)

logger = logging.getLogger(__name__)

_TABLE_OF_FC: dict[int, Table] = {
    1: Table.COIL,
    5: Table.COIL,
    15: Table.COIL,
    2: Table.DISCRETE_INPUT,
    3: Table.HOLDING,
    6: Table.HOLDING,
    16: Table.HOLDING,
    4: Table.INPUT,
}
_NS_PER_HOUR = 3_600 * 1_000_000_000


class Fault(enum.StrEnum):
    """What a faulty meter does instead of answering normally."""

    NO_ANSWER = "no_answer"
    BAD_CRC = "bad_crc"
    EXCEPTION = "exception"


@dataclass
class SimMeter:
    """One simulated meter at one unit id.

    Attributes:
        unit_id: Modbus unit (slave) id, 1..247.
        profile: the device profile whose register map is served.
        energy_milli: the billed register in milli-units (Wh or L).
        rate_milli_per_h: constant consumption when ``curve`` is None.
        curve: consumption in milli-units per hour at t seconds after start.
        supply_on: the relay/valve state as the device sees it.
        extras: raw values of the profile's other registers (volts, amps, ...), default 0.
        clock_ns: monotonic clock in nanoseconds (inject a fake one in tests).
    """

    unit_id: int
    profile: DeviceProfile
    energy_milli: int = 0
    rate_milli_per_h: int = 0
    curve: Callable[[float], int] | None = None
    supply_on: bool = True
    extras: dict[str, int | float] = field(default_factory=dict)
    clock_ns: Callable[[], int] = time.monotonic_ns
    fault: Fault | None = None
    fault_budget: int | None = None  # None: until cleared; N: the next N replies only
    exception_code: int = ExcCodes.DEVICE_FAILURE
    ignore_writes: bool = False
    requests: int = 0
    supply_writes: list[bool] = field(default_factory=list)
    _start_ns: int = 0
    _last_ns: int = 0
    _carry: int = 0  # milli-unit nanoseconds per hour not yet a whole milli-unit

    def __post_init__(self) -> None:
        self._start_ns = self._last_ns = self.clock_ns()

    # -------------------------------------------------------------- faults

    def set_fault(self, fault: Fault | None, *, count: int | None = None, code: int = 4) -> None:
        """Start (or with None, stop) a fault, for ``count`` replies or until cleared."""
        self.fault, self.fault_budget, self.exception_code = fault, count, code

    def take_fault(self, kinds: set[Fault]) -> Fault | None:
        if self.fault is None or self.fault not in kinds:
            return None
        fault = self.fault
        if self.fault_budget is not None:
            self.fault_budget -= 1
            if self.fault_budget <= 0:
                self.fault, self.fault_budget = None, None
        return fault

    # -------------------------------------------------------------- model

    def advance(self) -> None:
        """Bring the billed register up to the clock (only while the supply is on)."""
        now = self.clock_ns()
        elapsed = now - self._last_ns
        self._last_ns = now
        if elapsed <= 0 or not self.supply_on:
            return
        t_s = (now - self._start_ns) / 1e9
        rate = self.curve(t_s) if self.curve is not None else self.rate_milli_per_h
        self._carry += max(rate, 0) * elapsed
        whole, self._carry = divmod(self._carry, _NS_PER_HOUR)
        self.energy_milli += whole

    def register_words(self, name: str, spec: RegisterSpec) -> list[int]:
        """The words the meter serves for one profile register."""
        if name == "energy":
            value = from_milli(self.energy_milli, spec.scale, spec.type)
        else:
            value = self.extras.get(name, 0)
        return encode_value(value, spec.type, spec.word_order, spec.byte_order)

    def supply_readback(self) -> int:
        """The raw read-back value of the relay/valve (bit as 0/1, or register value)."""
        spec = self.profile.supply
        if spec is None:
            return 0
        if spec.read_table in (Table.COIL, Table.DISCRETE_INPUT):
            on_bit = spec.on_value
            return on_bit if self.supply_on else 1 - on_bit
        if spec.on_mask is not None and spec.off_mask is not None:
            return spec.on_mask if self.supply_on else spec.off_mask
        return spec.on_value if self.supply_on else spec.off_value

    def table_sizes(self) -> dict[Table, int]:
        """Per table, the highest address the profile uses + 1 (0: the table is unused)."""
        tables: dict[Table, int] = dict.fromkeys(Table, 0)
        for spec in profile_registers(self.profile).values():
            end = spec.address + register_count(spec.type)
            tables[spec.table] = max(tables[spec.table], end)
        if (supply := self.profile.supply) is not None:
            tables[supply.write_table] = max(tables[supply.write_table], supply.write_address + 1)
            tables[supply.read_table] = max(tables[supply.read_table], supply.read_address + 1)
        return tables

    def apply_write(self, table: Table, address: int, value: int) -> bool:
        """A write the master sent (a coil as 1 or 0): moves the supply when it is to the
        profile's supply register or coil.

        Returns:
            False when the meter acknowledges the write but keeps its state (`ignore_writes`),
            so the value written must not be stored either.
        """
        spec = self.profile.supply
        if spec is None or table is not spec.write_table or address != spec.write_address:
            return True
        requested_on = value == spec.on_value
        self.supply_writes.append(requested_on)
        if self.ignore_writes:
            return False
        self.supply_on = requested_on
        logger.info("sim unit %d: supply %s", self.unit_id, "on" if requested_on else "off")
        return True

    # -------------------------------------------------------------- pymodbus hook

    def sim_device(self) -> SimDevice:
        """A pymodbus `SimDevice` (4 separate tables) serving this meter."""
        tables = self.table_sizes()

        def block(table: Table) -> list[SimData]:
            size = max(tables[table], 1)
            if table in (Table.COIL, Table.DISCRETE_INPUT):
                return [SimData(0, count=size, values=False, datatype=DataType.BITS)]
            return [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)]

        return SimDevice(
            self.unit_id,
            simdata=(
                block(Table.COIL),
                block(Table.DISCRETE_INPUT),
                block(Table.HOLDING),
                block(Table.INPUT),
            ),
            action=self._action,
        )

    def sync_registers(self, table: Table, start: int, registers: list[int]) -> None:
        """Write the model into a register image of ``table`` that begins at address ``start``
        (bit tables: 16 bits a word, LSB first, as pymodbus keeps them)."""
        if table in (Table.HOLDING, Table.INPUT):
            for name, spec in profile_registers(self.profile).items():
                if spec.table is table:
                    words = self.register_words(name, spec)
                    offset = spec.address - start
                    registers[offset : offset + len(words)] = words
        spec_s = self.profile.supply
        if spec_s is None or spec_s.read_table is not table:
            return
        raw = self.supply_readback()
        if table in (Table.COIL, Table.DISCRETE_INPUT):
            index, bit = spec_s.read_address // 16 - start, spec_s.read_address % 16
            registers[index] = (registers[index] & ~(1 << bit)) | (raw << bit)
        else:
            registers[spec_s.read_address - start] = raw

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        _count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.requests += 1
        if self.take_fault({Fault.EXCEPTION}) is not None:
            return ExcCodes(self.exception_code)
        table = _TABLE_OF_FC.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        self.advance()
        self.sync_registers(table, start_address, registers)
        if set_values is None or self.apply_write(table, address, int(set_values[0])):
            return None
        # acknowledged, but the state is kept: put it back into the values to store
        if table is Table.COIL:
            bits = SimUtils.registersToBits([registers[address // 16 - start_address]])
            set_values[0] = bits[address % 16]
        else:
            set_values[0] = registers[address - start_address]  # type: ignore[call-overload]
        return None


class ServedMeters:
    """`SimMeter`s behind a server: started on entering, stopped on leaving (both servers)."""

    meters: dict[int, SimMeter]
    port: int  # a TCP server's port once started; 0 on a serial line

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
