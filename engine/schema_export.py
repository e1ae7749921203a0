"""Export a JSON Schema (draft 2020-12) per record on a public topic, for downstream consumers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from engine.topics import SPECS


def schema_for(spec: Any) -> dict[str, Any]:
    schema = msgspec.json.schema(spec.record)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:oms-stream:schema:{spec.schema_name}",
        "title": spec.schema_name,
        "description": f"{spec.doc} Topic: <prefix>.{spec.suffix}; key: {spec.key}. "
        "Unknown fields may be added in later minor versions; consumers should ignore them.",
        **schema,
    }


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in SPECS:
        if not spec.public:
            continue
        path = directory / f"{spec.schema_name}.schema.json"
        path.write_text(json.dumps(schema_for(spec), indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written
