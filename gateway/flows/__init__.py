"""The stateful flows of the gateway, under the state lock (see `gateway.flows.context`).

- `context`: the shared collaborators (store, topics, clock, lock, supply wishes, account book)
  and the one reload.
- `accounts` (+ `overlay`): the accounts as the gateway runs them.
- `pipeline`: readings in: journal, bill, decide, persist, publish.
- `command_handler` (+ `spool`, `overlay_commands`): backend and operator commands in: verify,
  apply once, answer.
- `effects`: what a decision writes (ledger, events, state messages); `supply_wishes`: the
  supply changes it asks for, handed to actuation once its transaction has committed.
- `actuation` (+ `device_journal`): supply wishes out to relays and valves, confirmed.
- `probe`: a read-only view for tests and tools.

The flows see the drivers only through `drivers.ports`, and never a protocol library.
"""
