"""DN engine: the storage engine of one shard (no Ray).

Start with :class:`dn.Engine` (``Engine.open(url, shard_id, settings)``), :class:`dn.Settings`
and :mod:`dn.errors`. The architecture is in ``docs/architecture.md``; byte formats in
``docs/formats.md``.
"""

from dn.clock import Clock, HybridClock, ManualClock, SystemClock
from dn.engine import Engine
from dn.errors import (
    AlreadyExists,
    Closed,
    Corruption,
    DNError,
    Fenced,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from dn.plan import Plan
from dn.reader import Change
from dn.reads import ReadView
from dn.settings import Settings

__all__ = [
    "AlreadyExists",
    "Change",
    "Clock",
    "Closed",
    "Corruption",
    "DNError",
    "Engine",
    "Fenced",
    "HybridClock",
    "Internal",
    "InvalidArgument",
    "ManualClock",
    "NotFound",
    "Plan",
    "ReadView",
    "Settings",
    "SystemClock",
    "Unavailable",
]

__version__ = "0.1.0"
