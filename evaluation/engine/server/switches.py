"""The engine's on/off/auto settings (`ENGINE_PIPELINE`, `ENGINE_PACE`, `ENGINE_PACKED_GRAPHS`, ...)."""

from __future__ import annotations

import os


def switch(name: str, default: str = "auto", setting: str | None = None) -> bool | None:
    """The environment's `name` (or `setting`, where a caller or test passes one): True for 1, on or
    true; False for 0, off or false; None for auto or anything else, which the caller decides."""
    value = (os.environ.get(name, default) if setting is None else setting).strip().lower()
    if value in ("1", "on", "true"):
        return True
    if value in ("0", "off", "false"):
        return False
    return None
