"""Lightning's string enums: `LightningEnum` compares equal to its value case-insensitively
(`GradClipAlgorithmType("norm") == "NORM"`), so string and enum arguments are interchangeable."""

from __future__ import annotations

from enum import Enum
from typing import Any

__all__ = ["GradClipAlgorithmType", "LightningEnum"]


class LightningEnum(str, Enum):
    @classmethod
    def from_str(cls, value: str, source: str = "key") -> "LightningEnum":
        """The member whose name (`source="key"`) or value (`"value"`) matches `value`, any case."""
        if source not in ("key", "value", "any"):
            raise ValueError(f"source must be 'key', 'value' or 'any', got {source!r}")
        for member in cls:
            if source in ("key", "any") and member.name.lower() == value.lower():
                return member
            if source in ("value", "any") and member.value.lower() == value.lower():
                return member
        allowed = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{value!r} is not a {cls.__name__}; allowed: {allowed}")

    def __eq__(self, other: Any) -> bool:
        other = other.value if isinstance(other, Enum) else str(other)
        return self.value.lower() == other.lower()

    def __hash__(self) -> int:
        return hash(self.value.lower())


class GradClipAlgorithmType(LightningEnum):
    """`Trainer(gradient_clip_algorithm=...)`'s values."""

    VALUE = "value"
    NORM = "norm"
