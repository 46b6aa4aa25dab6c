"""Byte counts for people: `812 B`, `40.0 KiB`, `2.3 MiB`, `1.1 GiB` (powers of 1024)."""

from __future__ import annotations


def human_bytes(octets: float) -> str:
    """A byte count in the largest unit that keeps it at 1 or more."""
    for unit, size in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if abs(octets) >= size:
            return f"{octets / size:.1f} {unit}"
    return f"{int(octets)} B"
