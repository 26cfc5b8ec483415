"""What the fence needs from aiohttp's internals, and the check that it is there.

Each fenced module lists the private names it uses as `Need`s. `missing` reports the
first one that an installed aiohttp does not have in the expected shape, so that the
feature built on it is switched off at start-up instead of failing under traffic.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def _assigned_in_init(cls: type) -> set[str]:
    """Attribute names a class's `__init__` methods assign (instance attributes of
    classes without `__slots__` are not visible on the class itself)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        code = getattr(init, "__code__", None)
        if code is not None:
            names.update(code.co_names)
    return names


@dataclass(frozen=True, slots=True)
class Need:
    """`owner.name` must exist; a method (`call`) must be callable, and take `param`."""

    owner: Any  # a class or a module
    name: str
    call: bool = False
    param: str | None = None

    @property
    def label(self) -> str:
        owner = self.owner
        where = getattr(owner, "__qualname__", None) or owner.__name__
        module = getattr(owner, "__module__", None)
        return f"{module}.{where}.{self.name}" if module else f"{where}.{self.name}"

    def problem(self) -> str | None:
        owner, name = self.owner, self.name
        present = hasattr(owner, name) or (
            isinstance(owner, type) and name in _assigned_in_init(owner))
        if not present:
            return f"{self.label} is missing"
        if self.call and not callable(getattr(owner, name, None)):
            return f"{self.label} is not callable"
        if self.param is not None:
            try:
                parameters = inspect.signature(getattr(owner, name)).parameters
            except (TypeError, ValueError):
                return f"{self.label} has no readable signature"
            if self.param not in parameters:
                return f"{self.label} takes no parameter {self.param!r}"
        return None


def missing(needs: Iterable[Need]) -> str | None:
    """The first need that is not met, described; None when all are."""
    for need in needs:
        problem = need.problem()
        if problem is not None:
            return problem
    return None
