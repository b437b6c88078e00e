"""Fixed sets of values whose members each carry the sentence the docs show for them (tools/gendocs.py)."""

from __future__ import annotations

import enum
from typing import Self


class Described(enum.StrEnum):
    """A string enum whose members are written `NAME = (value, description)`: one place for a value and its words."""

    description: str

    def __new__(cls, value: str, description: str) -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member
