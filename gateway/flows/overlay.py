"""Changes the utility made by command on top of the operator's site file.

Backend ``tariff`` and ``account`` commands do not edit the operator's YAML: they are kept as an
overlay, stored in the same SQLite transaction as the command's recorded result (so a command
is applied exactly once, crash or not), and merged over the site file at every start and reload:

- ``tariffs``: tariff documents by id. A site-wide tariff change replaces the tariff of that id;
  a change for a class or an account installs a derived tariff (``<id>__<version>``) and
  assigns it to the targeted accounts.
- ``accounts``: account settings created or changed by command, by id (they win over the site
  file's entry of the same id).
- ``policies``: per-account policy changes (low-balance threshold, exemption), applied on top of
  the account's class policy.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from billing_engine.tariff import Tariff
from gateway.config import AccountConfig, Site
from gateway.policy.config import PolicyConfig

OVERLAY_KEY = "__overlay__"


@dataclass
class Overlay:
    """What backend commands changed; JSON-serialisable."""

    tariffs: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_record(self) -> dict[str, int | str | None]:
        doc = {"tariffs": self.tariffs, "accounts": self.accounts, "policies": self.policies}
        return {"json": json.dumps(doc, sort_keys=True)}

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> Overlay:
        if not record or not isinstance(record.get("json"), str):
            return cls()
        doc = json.loads(record["json"])
        return cls(doc.get("tariffs", {}), doc.get("accounts", {}), doc.get("policies", {}))

    def copy(self) -> Overlay:
        return Overlay.from_record(self.to_record())


def derived_tariff_id(base_id: str, version: str) -> str:
    """A tariff id for a class- or account-specific version (ids are ``[a-z][a-z0-9_]*``)."""
    slug = re.sub(r"[^a-z0-9]+", "_", version.lower()).strip("_") or "v"
    return f"{base_id}__{slug}"


def policy_name_for(account_id: str, base: str) -> str:
    return f"{base}@{account_id}"


def apply_overlay(site: Site, overlay: Overlay) -> Site:
    """The site as the gateway runs it: the operator's file with the overlay merged in."""
    tariffs = dict(site.tariffs)
    for tariff_id, doc in overlay.tariffs.items():
        tariffs[tariff_id] = Tariff.model_validate(doc)
    accounts: dict[str, AccountConfig] = {a.id: a for a in site.config.accounts}
    for account_id, doc in overlay.accounts.items():
        accounts[account_id] = AccountConfig.model_validate(doc)
    policies: dict[str, PolicyConfig] = dict(site.config.policies)
    for account_id, changes in overlay.policies.items():
        account = accounts.get(account_id)
        if account is None:
            continue
        base = site.config.policies.get(account.policy.split("@")[0])
        if base is None:
            continue
        name = policy_name_for(account_id, account.policy.split("@")[0])
        policies[name] = PolicyConfig.model_validate({**base.model_dump(), **changes})
        accounts[account_id] = account.model_copy(update={"policy": name})
    config = site.config.model_copy(
        update={"accounts": tuple(accounts.values()), "policies": policies}
    )
    return Site(config=config, path=site.path, tariffs=tariffs)
