"""The prepaid policy: pure functions and values, no I/O (no asyncio, SQLite, store or MQTT).

- `config`: the operator's policy settings per account class, validated.
- `state`: the vocabulary (account modes, events, supply) and an account's policy state.
- `machine`: the state machine (`on_balance`, `on_topup`, `on_tick`, overrides, emergency credit).
- `windows`: the friendly-window calendar that defers a cutoff.
- `quality`: reading plausibility (rollover, meter replaced, implausible jumps, stale meters).
"""
