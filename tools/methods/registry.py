"""The methods `--method NAME` can name: one line per method, ``name -> "module:attribute"``.

Adding a method is one folder in tools/methods/ (its `__init__.py` exposing a `Method` object) and one
line here. Entries are imported only when asked for, so fitting one method never imports the others
(and a method whose libraries are missing does not stop the rest).
"""

from __future__ import annotations

import importlib

from tools.methods.base import Method

METHODS: dict[str, str] = {
    "patchcore": "tools.methods.patchcore:METHOD",
    "featae": "tools.methods.featae:METHOD",
    "cae": "tools.methods.cae:METHOD",
    "cae-reference": "tools.methods.cae:REFERENCE_METHOD",
    "classic": "tools.methods.classic:METHOD",
}

_REGISTERED: dict[str, Method] = {}


class UnknownMethodError(ValueError):
    """A --method name that no registry entry or registered object has."""


def register_method(method: Method, name: str | None = None) -> None:
    """Make a method object available by name without an entry in `METHODS` (plugins, tests)."""
    _REGISTERED[name or method.name] = method


def _load(name: str) -> Method:
    module, _, attribute = METHODS[name].partition(":")
    method: Method = getattr(importlib.import_module(module), attribute)
    return method


def get_method(name: str) -> Method:
    """The method registered as `name` (imports its module only); `UnknownMethodError` naming the known ones."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in METHODS:
        known = sorted({*METHODS, *_REGISTERED})
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(known)}")
    return _load(name)

