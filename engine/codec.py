"""The orjson codec, registered with Faust as ``"orjson"``: table state and any JSON payload go through it.

Typed records are turned into builtins by ``schemas.wire`` first, so Faust only ever sees plain JSON
types (or msgspec structs, which the codec converts on the way out).
"""

from __future__ import annotations

from typing import Any

import faust
import msgspec
import orjson
from faust.serializers import codecs

CODEC_NAME = "orjson"


def _default(obj: Any) -> Any:
    if isinstance(obj, msgspec.Struct):
        return msgspec.to_builtins(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


class OrjsonCodec(faust.Codec):
    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj, default=_default)

    def _loads(self, s: bytes) -> Any:
        # A deleted table key arrives as a tombstone (no value) during changelog recovery.
        return None if not s else orjson.loads(s)


def register() -> None:
    """Idempotent: safe to call from every app factory."""
    if CODEC_NAME not in codecs.codecs:
        codecs.register(CODEC_NAME, OrjsonCodec())
