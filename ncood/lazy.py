"""Lazy package exports (PEP 562), shared by ncood.tune, ncood.aggregate and ncood.serve: a name loads its
submodule on first use, so `--help` and `--dry-run` build their parsers without importing Ray, MLflow, torch,
pandas or matplotlib (seconds on 2 cores)."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_getattr(package: str, exports: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """The module `__getattr__` of `package`: exports maps a name to the submodule (relative to the package) that
    defines it; the value is cached in the package's `namespace` (its globals()), so later lookups are direct."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        namespace[name] = value
        return value

    return __getattr__
