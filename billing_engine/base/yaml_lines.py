"""Load a YAML document into a pydantic model, mapping every validation error to a file line.

YAML is composed first (``yaml.compose``) so every node keeps its start mark; a pydantic ``loc``
tuple is then walked down the node tree to find the line. Loading is all-or-nothing: any error
raises `InvalidConfigError` and nothing is returned.

Whatever a file holds, loading it ends in a value or in ``FILE:LINE: field: message`` lines,
never in a traceback: a file larger than `MAX_FILE_BYTES`, bytes that are not UTF-8, nesting
deeper than `MAX_DEPTH`, a key given twice in one mapping (PyYAML would keep the last one
silently) and a scalar its constructor cannot build (an integer of 5,000 digits, 2024-13-45)
are each refused at their line.
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

#: The largest file read. A 10,000-account site file is about 1.5 MB; anything far beyond that
#: is not a configuration, and PyYAML's pure-Python loader would take minutes over it.
MAX_FILE_BYTES = 16 * 1024 * 1024
#: The deepest nesting of mappings and sequences. The site file and the tariffs nest fewer than
#: ten levels; PyYAML's composer recurses per level, and 20,000 levels exhaust Python's stack.
MAX_DEPTH = 64

_MERGE_TAG = "tag:yaml.org,2002:merge"


class UnreadableFileError(InvalidConfigError):
    """The file could not be read at all (missing, a directory, no permission).

    A file that names it (the site file naming a tariff) reports it at its own naming line.

    Attributes:
        path: the file that could not be read.
        reason: why, as the operating system says it (``No such file or directory``).
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__([ConfigError(str(path), 0, "<file>", f"cannot read: {reason}")])


class DecimalLoader(yaml.SafeLoader):
    """SafeLoader that reads YAML floats as `Decimal`, so ``0.538`` never becomes a float.

    It also bounds the nesting depth (`MAX_DEPTH`) and turns a scalar its constructor cannot
    build into a `yaml.constructor.ConstructorError` at the scalar's line.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_DEPTH} levels; no prepay file nests that deep",
                    event.start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            # int("9" * 5000) and date(2024, 13, 45) raise these from PyYAML's constructors.
            # Their advice to the programmer (after a ';') is no help to an operator.
            reason = str(exc).split(";", 1)[0]
            raise yaml.constructor.ConstructorError(
                None, None, f"not a usable value: {reason}", node.start_mark
            ) from exc


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


def key_line_of(root: yaml.Node | None, loc: Sequence[int | str]) -> int:
    """1-based line of the key that names the node at ``loc`` (the value's line when ``loc``
    ends in a sequence index): where a missing file or an unknown id is named."""
    if root is None or not loc:
        return line_of(root, loc)
    parent = _node_for(root, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for key, _ in parent.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(loc[-1]):
                return int(key.start_mark.line) + 1
    return line_of(root, loc)


def _field_name(loc: Sequence[int | str]) -> str:
    # pydantic adds the validator's tag (e.g. "function-after[...]") for some errors; drop it.
    parts = [str(p) for p in loc if not (isinstance(p, str) and "[" in p)]
    return ".".join(parts) or "<document>"


def _read_text(path: Path) -> str:
    """The file as text: at most `MAX_FILE_BYTES`, UTF-8.

    Raises:
        InvalidConfigError: unreadable (`UnreadableFileError`), too large, or not UTF-8.
    """
    name = str(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise UnreadableFileError(path, exc.strerror or str(exc)) from exc
    if len(raw) > MAX_FILE_BYTES:
        error = ConfigError(
            name,
            1,
            "<file>",
            f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB: not a configuration file",
        )
        raise InvalidConfigError([error])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        error = ConfigError(
            name,
            line,
            "<file>",
            f"byte 0x{raw[exc.start]:02x} at column {column} is not UTF-8; save the file as UTF-8",
        )
        raise InvalidConfigError([error]) from exc


def _duplicate_keys(name: str, root: yaml.Node) -> list[ConfigError]:
    """Every key given twice in one mapping, at the second one's line (PyYAML keeps the last
    silently, so ``site:`` twice would run the second site). Keys that a merge (``<<: *x``)
    brings in may be overridden: that is what a merge is for."""
    errors: list[ConfigError] = []
    walked: set[int] = set()  # an alias shares its node: walk each once
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    while stack:
        node, where = stack.pop()
        if id(node) in walked:
            continue
        walked.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*where, str(i))) for i, item in enumerate(node.value))
            continue
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[tuple[str, str], yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            stack.append((value, (*where, key.value)))
            if key.tag == _MERGE_TAG:
                continue
            earlier = first.setdefault((key.tag, key.value), key)
            if earlier is not key:
                errors.append(
                    ConfigError(
                        name,
                        key.start_mark.line + 1,
                        ".".join((*where, key.value)),
                        f"given twice (first at line {earlier.start_mark.line + 1}); the later"
                        " one would silently win: keep one",
                    )
                )
    return sorted(errors, key=lambda error: error.line)


def parse_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """Parse ``path`` and return (plain data, node tree).

    Raises:
        InvalidConfigError: the file cannot be read (`UnreadableFileError`), is too large, is
            not UTF-8 or not valid YAML, nests too deep, or gives a key twice in one mapping.
    """
    name = str(path)
    text = _read_text(path)
    loader: DecimalLoader | None = None
    try:
        loader = DecimalLoader(text)  # checks the characters first: may raise ReaderError
        node = loader.get_single_node()
        if node is not None:
            duplicates = _duplicate_keys(name, node)
            if duplicates:
                raise InvalidConfigError(duplicates)
        # Built from the node tree just composed: one parse, so data and lines agree.
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or str(exc)
        message = f"{exc.context}: {problem}" if exc.context and exc.problem else problem
        raise InvalidConfigError([ConfigError(name, line, "<syntax>", message.strip())]) from exc
    except yaml.reader.ReaderError as exc:
        # A character YAML forbids (a control character): its position is in characters.
        line = text[: exc.position].count("\n") + 1
        message = f"character U+{exc.character:04X} is not allowed in YAML ({exc.reason})"
        raise InvalidConfigError([ConfigError(name, line, "<syntax>", message)]) from exc
    except yaml.YAMLError as exc:
        raise InvalidConfigError([ConfigError(name, 1, "<syntax>", str(exc))]) from exc
    finally:
        if loader is not None:
            loader.dispose()
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
