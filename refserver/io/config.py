"""A connector's config: HStreamDB keys plus the connector program's own config.

CreateConnector's `config` is one JSON object (HStreamDB's SQL form `WITH ("k" = "v", ...)`
becomes the same object). The runtime takes out the keys that say how the connector meets
HStreamDB and passes the rest to the connector program unchanged:

- `stream` (required): the HStream stream a source writes to or a sink reads from;
- `airbyte_stream`: which of a source's Airbyte streams to read (needed when it has
  several), or the stream name a sink gives its destination (default: `stream`);
- `primary_key` (sink): field names the destination deduplicates by; without it the
  destination appends every record it gets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

RESERVED = ("stream", "airbyte_stream", "primary_key")


class BadConfig(ValueError):
    pass


@dataclass(frozen=True)
class TaskConfig:
    stream: str
    airbyte_stream: str
    primary_key: tuple[str, ...]
    connector: dict[str, Any]


def parse_config(text: str) -> TaskConfig:
    try:
        doc = json.loads(text or "{}")
    except json.JSONDecodeError as error:
        raise BadConfig(f"connector config is not a JSON object: {error}") from None
    if not isinstance(doc, dict):
        raise BadConfig("connector config must be a JSON object, e.g. "
                        '{"stream": "s1", "count": 100}')
    stream = doc.get("stream")
    if not isinstance(stream, str) or not stream:
        raise BadConfig('connector config needs "stream": the name of the HStream stream '
                        "the connector writes to or reads from")
    airbyte_stream = doc.get("airbyte_stream", "")
    if not isinstance(airbyte_stream, str):
        raise BadConfig('"airbyte_stream" must be a string naming an Airbyte stream')
    key = doc.get("primary_key", [])
    if isinstance(key, str):
        key = [part.strip() for part in key.split(",") if part.strip()]
    if not isinstance(key, list) or not all(isinstance(k, str) for k in key):
        raise BadConfig('"primary_key" must be a list of field names (or "a,b")')
    return TaskConfig(
        stream=stream,
        airbyte_stream=airbyte_stream,
        primary_key=tuple(key),
        connector={k: v for k, v in doc.items() if k not in RESERVED},
    )
