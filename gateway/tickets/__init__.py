"""Water tickets (one ticket buys one bucket of a stated product): pure rules, no I/O.

- `codes`: the 16-digit ticket code (plant code, serial, Damm check digit).
- `electronic`: the signed electronic ticket carried in a QR code, encoded and verified offline.
- `batches`: the signed ``ticket_batch`` that issues paper code ranges to a depot.
- `validity`: validity periods, the one-month extension, the local day.
- `reasons`: why a ticket is refused (one enum for the CLI, the store's callers and the events).
- `decisions`: may this ticket be redeemed here, now? (the judge over the facts the store holds).
- `settings`: the ``tickets`` section of the site file.

Nothing here touches a file, the store, the clock or the network: the store (`gateway.store.
tickets`) keeps what happened, the operator's commands (`gateway.ops.tickets`) bring both together.
"""
