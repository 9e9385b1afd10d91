"""The names in the model and dataset registries, read without importing torch: for `--help` texts.

Why by hand (ast) rather than from the registries: the registries fill when their modules are imported, and those
import torch (seconds; `--help` must answer in under one). So this reads the same source the registries are filled
from: a model is a function decorated with `@register_model` (registered under its function name,
ncood.models.registry), a dataset is a `register_dataset(DatasetInfo(name="..."))` call (ncood.data.registry).
tests/test_cli.py checks both lists equal `ncood.models.list_models()` and `ncood.data.list_datasets()`, so a
registration this reader cannot see (a computed name) fails a test instead of going missing from the help.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _decorator_name(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    return target.id if isinstance(target, ast.Name) else target.attr if isinstance(target, ast.Attribute) else ""


@lru_cache(maxsize=None)
def model_names() -> tuple[str, ...]:
    """Sorted names of the functions decorated with @register_model in ncood/models/*.py."""
    names = set()
    for path in sorted((_PACKAGE / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(_decorator_name(d) == "register_model"
                                                         for d in node.decorator_list):
                names.add(node.name)
    return tuple(sorted(names))


@lru_cache(maxsize=None)
def dataset_names(id_only: bool = False) -> tuple[str, ...]:
    """Sorted `name=` of every `register_dataset(DatasetInfo(name=...))` in ncood/data/*.py (id_only: those with
    `can_be_id=True`, as list_datasets(id_only=True))."""
    names = set()
    for path in sorted((_PACKAGE / "data").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and _decorator_name(node) == "register_dataset" and node.args):
                continue
            info = node.args[0]
            if isinstance(info, ast.Call):
                kw = {k.arg: k.value.value for k in info.keywords if isinstance(k.value, ast.Constant)}
                if "name" in kw and (kw.get("can_be_id") is True or not id_only):
                    names.add(kw["name"])
    return tuple(sorted(names))
