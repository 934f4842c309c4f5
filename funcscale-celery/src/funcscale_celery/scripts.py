"""The Lua scripts this package runs: copies of funcscale's own (``protocol/lua``), shipped as
package data. The tests check that each copy is byte-identical to the repository's file."""

from __future__ import annotations

from functools import lru_cache

from importlib.resources import files as _files

#: The scripts shipped, by file name (without ``.lua``).
SHIPPED = (
    "record_duration",
    "record_lib",
    "forget",
    "lease_acquire",
    "lease_renew",
    "lease_release",
    "celery_beat_send",
)


@lru_cache(maxsize=None)
def lua(name: str) -> str:
    """The text of the shipped script ``name``."""
    if name not in SHIPPED:
        raise KeyError(name)
    return (_files(__package__) / "lua" / (name + ".lua")).read_text(encoding="utf-8")


def with_record_lib(name: str) -> str:
    """A script that uses the record library, joined as ``scripts.rs`` joins it."""
    return lua("record_lib") + "\n" + lua(name)
