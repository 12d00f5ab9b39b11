"""The base every package of prepay-gateway stands on: the error root and the YAML loader.

- `errors`: `PrepayError`, the one root of every error raised on purpose, and `ConfigError`
  (``FILE:LINE: field: message``) with `InvalidConfigError`, the all-or-nothing bundle of them.
- `yaml_lines`: YAML parsed with node marks, so that a pydantic error location maps to a line.

Why here: the top-level packages are fixed (``billing_engine``, ``drivers``, ``gateway``,
``firmware_sim``), and ``billing_engine`` is the floor the others stand on, so the shared base is
a sub-package of it rather than a module of the tariff code. It imports nothing else of the
project (an import contract holds this), so ``drivers`` and ``firmware_sim`` that import it do
not reach the billing engine itself.
"""
