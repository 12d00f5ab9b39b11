"""Load a YAML document into a pydantic model, mapping every validation error to a file line.

YAML is composed first (``yaml.compose``) so every node keeps its start mark; a pydantic ``loc``
tuple is then walked down the node tree to find the line. Loading is all-or-nothing: any error
raises `InvalidConfigError` and nothing is returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from billing_engine.base.errors import ConfigError, InvalidConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


class DecimalLoader(yaml.SafeLoader):
    """SafeLoader that reads YAML floats as `Decimal`, so ``0.538`` never becomes a float."""


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal:
    text = str(loader.construct_scalar(node)).replace("_", "")  # type: ignore[arg-type]
    if text.lower() in {".inf", "+.inf", "-.inf", ".nan"}:
        raise yaml.constructor.ConstructorError(
            None, None, f"{text} is not a usable number", node.start_mark
        )
    return Decimal(text)


DecimalLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


def _node_for(root: yaml.Node, loc: Sequence[int | str]) -> yaml.Node:
    """Return the deepest node reachable along ``loc`` (pydantic's error location)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    node = value
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                node = node.value[part]
            else:
                return node
        else:
            return node
    return node


def line_of(root: yaml.Node | None, loc: Sequence[int | str]) -> int:
    """1-based line of the node at ``loc`` (or of its deepest existing ancestor); 0 if unknown."""
    return _node_for(root, loc).start_mark.line + 1 if root is not None else 0


def _field_name(loc: Sequence[int | str]) -> str:
    # pydantic adds the validator's tag (e.g. "function-after[...]") for some errors; drop it.
    parts = [str(p) for p in loc if not (isinstance(p, str) and "[" in p)]
    return ".".join(parts) or "<document>"


def parse_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """Parse ``path`` and return (plain data, node tree).

    Raises:
        InvalidConfigError: the file cannot be read or is not valid YAML.
    """
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        error = ConfigError(name, 0, "<file>", f"cannot read: {exc.strerror}")
        raise InvalidConfigError([error]) from exc
    try:
        node = yaml.compose(text, Loader=DecimalLoader)
        data = yaml.load(text, Loader=DecimalLoader)  # noqa: S506 - DecimalLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 0
        raise InvalidConfigError(
            [ConfigError(name, line, "<syntax>", str(exc.problem or exc).strip())]
        ) from exc
    except yaml.YAMLError as exc:
        raise InvalidConfigError([ConfigError(name, 0, "<syntax>", str(exc))]) from exc
    return data, node


def errors_from_validation(
    name: str, node: yaml.Node | None, exc: ValidationError
) -> InvalidConfigError:
    """Turn a pydantic `ValidationError` into `InvalidConfigError` with line numbers."""
    found: list[ConfigError] = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        line = line_of(node, loc)
        message = err["msg"].removeprefix("Value error, ")
        found.append(ConfigError(name, line, _field_name(loc), message))
    return InvalidConfigError(found)


def load_model(path: Path, model: type[ModelT], context: dict[str, Any] | None = None) -> ModelT:
    """Load ``path`` as ``model``; every error names file, line and field.

    Raises:
        InvalidConfigError: unreadable file, bad YAML, or a model validation failure.
    """
    data, node = parse_yaml(path)
    if data is None:
        raise InvalidConfigError([ConfigError(str(path), 1, "<document>", "the file is empty")])
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise errors_from_validation(str(path), node, exc) from exc
