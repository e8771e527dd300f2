"""A problem found with the data: which clip (or "" for a whole archive or split), where, and why."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Problem:
    clip: str
    split: str
    reason: str
