"""JSON Schemas of the MQTT contract, generated from the models, for docs/mqtt-api.md.

The doc holds each schema in a fenced block after a ``<!-- schema:ModelName -->`` marker; a test
fails when a block differs from the model. Regenerate with::

    python -m gateway.northbound.schemas docs/mqtt-api.md
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Final

from pydantic import BaseModel

from gateway.northbound.commands import COMMAND_MODELS
from gateway.northbound.payloads import PAYLOAD_MODELS

# Outgoing payloads are documented as serialised; incoming commands as validated.
SCHEMA_MODELS: Final[dict[str, tuple[type[BaseModel], str]]] = {
    **{m.__name__: (m, "serialization") for m in PAYLOAD_MODELS},
    **{m.__name__: (m, "validation") for m in COMMAND_MODELS.values()},
}
# The block's body runs up to the first line that is exactly ``` (it may be empty).
_BLOCK: Final = re.compile(
    r"(<!-- schema:(\w+) -->\n```json\n)(.*?)(^```$)", re.DOTALL | re.MULTILINE
)


def schema_text(name: str) -> str:
    """The JSON Schema of model ``name`` as the doc prints it.

    Raises:
        KeyError: no such model.
    """
    model, mode = SCHEMA_MODELS[name]
    schema = model.model_json_schema(mode=mode)  # type: ignore[arg-type]
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False)


def render(doc: str) -> str:
    """``doc`` with every schema block replaced by the current schema of its model."""
    return _BLOCK.sub(lambda m: m.group(1) + schema_text(m.group(2)) + "\n" + m.group(4), doc)


def main(argv: list[str]) -> int:
    """Rewrite the schema blocks of the markdown file ``argv[1]`` in place."""
    path = Path(argv[1])
    path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
