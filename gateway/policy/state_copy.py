"""`changed`: a copy of a `PolicyState` with some fields changed, fast.

An optimisation behind the contract of `dataclasses.replace`, kept in its own module with its
own differential test (``tests/policy/test_state_copy.py`` holds it to `replace`): the state
machine runs several steps per reading, and most steps change nothing or one field.
"""

from __future__ import annotations

from dataclasses import fields

from gateway.policy.state import PolicyState


def changed(s: PolicyState, **changes: object) -> PolicyState:
    """`replace` for the hot path, which runs several steps per reading.

    ``s`` itself when no field would change (most steps of a reading that moves only the
    balance); identity, not equality, so the result is the very value `replace` gives. Else a
    copy with the changes, made without `replace`, which reads every field and runs
    ``__init__`` again: PolicyState has no ``__post_init__`` to run, and the decisions tests
    hold `_with` to `replace`.

    Raises:
        TypeError: a name is not a field of `PolicyState`.
    """
    if not _STATE_FIELDS.issuperset(changes):
        unknown = sorted(set(changes) - _STATE_FIELDS)
        raise TypeError(f"PolicyState has no field {', '.join(unknown)}")
    for name, value in changes.items():
        if getattr(s, name) is not value:
            break
    else:
        return s
    copy = object.__new__(PolicyState)
    copy.__dict__.update(s.__dict__, **changes)  # the dict itself: frozen __setattr__ refuses
    return copy


_STATE_FIELDS = frozenset(f.name for f in fields(PolicyState))
