"""Column values: what one value of each column type may be, and the message when it is not.

Column types: ``int64``, ``float64``, ``string``, ``bytes``, ``bool``. A float64 column accepts
ints within the int64 range (stored as floats); an int64 column does not accept bools or
floats. A string must encode as UTF-8; a string or bytes value may be at most the caller's
``max_value_bytes`` long (a string's length counted in UTF-8 bytes). A ``bytearray`` or
``memoryview`` in a bytes column is stored as ``bytes``. Primary-key values may not be null,
and primary-key floats may not be NaN; a primary-key ``-0.0`` is the key ``0.0`` (they compare
equal, so one engine holds them as one key, but they pack to different bytes, and the slot
hash, :mod:`dn.slots`, would send them to different shards).

Invariant: ``CHECKERS[typ](v, limit)`` returns ``(ok, normalized)`` and ``normalized is v``
unless the value changes form (an int in a float64 column, a bytearray in a bytes column); it
never raises for any ``v``.

Callers: :mod:`dn.schema` and :mod:`dn.batch`, which check the values of keys and batches
before anything is logged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dn.errors import InvalidArgument

if TYPE_CHECKING:
    from dn.schema import TableDef

COLUMN_TYPES = ("int64", "float64", "string", "bytes", "bool")
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def check_pk_value(t: TableDef, col: str, typ: str, v: object) -> Any:
    """A primary-key value of column ``col`` (of type ``typ``) of ``t``, normalized; else
    InvalidArgument."""
    if v is None:
        raise InvalidArgument(f"primary-key column {col!r} of {t.db}.{t.name} may not be null")
    ok, v2 = CHECKERS[typ](v, 1 << 62)
    if not ok:
        raise InvalidArgument(type_message(t, col, typ, v, None))
    if typ == "float64" and math.isnan(v2):
        raise InvalidArgument(f"primary-key column {col!r} may not be NaN")
    return 0.0 if typ == "float64" and v2 == 0.0 else v2  # -0.0 is the key 0.0


def type_message(t: TableDef, col: str, typ: str, v: object, limit: int | None) -> str:
    """Why ``v`` is no value of column ``col`` (of type ``typ``) of ``t``; ``limit`` is the
    size limit it was checked against (None: none)."""
    if limit is not None and isinstance(v, str | bytes | bytearray | memoryview):
        size = len(v.encode("utf-8", "surrogatepass")) if isinstance(v, str) else len(v)
        if size > limit and CHECKERS[typ](v, 1 << 62)[0]:
            return (
                f"value of column {col!r} in {t.db}.{t.name} is {size} bytes, over "
                f"max_value_bytes={limit}"
            )
    shown = repr(v)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if typ == "string" and type(v) is str:
        return f"column {col!r} of {t.db}.{t.name} is a string that is not valid UTF-8: {shown}"
    return f"column {col!r} of {t.db}.{t.name} is {typ}, got {type(v).__name__} {shown}" + (
        " (out of int64 range)" if typ == "int64" and type(v) is int else ""
    )


def _chk_int(v, _limit):
    return (type(v) is int and INT64_MIN <= v <= INT64_MAX), v


def _chk_float(v, _limit):
    t = type(v)
    if t is float:
        return True, v
    if t is int and INT64_MIN <= v <= INT64_MAX:
        return True, float(v)
    return False, v


def _chk_str(v, limit):
    if type(v) is not str:
        return False, v
    if len(v) * 4 > limit and len(v.encode("utf-8", "surrogatepass")) > limit:
        return False, v
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False, v
    return True, v


def _chk_bytes(v, limit):
    t = type(v)
    if t is not bytes:
        if t is bytearray or t is memoryview:
            v = bytes(v)
        else:
            return False, v
    return len(v) <= limit, v


def _chk_bool(v, _limit):
    return type(v) is bool, v


#: Column type -> its check: ``(value, size limit) -> (ok, normalized value)``.
CHECKERS: dict[str, Callable[[Any, int], tuple[bool, Any]]] = {
    "int64": _chk_int,
    "float64": _chk_float,
    "string": _chk_str,
    "bytes": _chk_bytes,
    "bool": _chk_bool,
}
