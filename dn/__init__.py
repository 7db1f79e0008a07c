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
    FutureSnapshot,
    Internal,
    InvalidArgument,
    NotFound,
    StaleTable,
    Unavailable,
)
from dn.read.change import Change
from dn.read.plan import Plan
from dn.read.view import ReadView
from dn.settings import Settings, ShellSettings

__all__ = [
    "AlreadyExists",
    "Change",
    "Clock",
    "Closed",
    "Corruption",
    "DNError",
    "Engine",
    "Fenced",
    "FutureSnapshot",
    "HybridClock",
    "Internal",
    "InvalidArgument",
    "ManualClock",
    "NotFound",
    "Plan",
    "ReadView",
    "Settings",
    "ShellSettings",
    "StaleTable",
    "SystemClock",
    "Unavailable",
]

__version__ = "0.1.0"
