"""errors.py's tree names every deliberate error class, with the module that defines it."""

from __future__ import annotations

import importlib
import pkgutil
import re

import kubespiffe
from kubespiffe import errors
from kubespiffe.errors import InvalidInput, KubespiffeError

# Modules that need root, a kubelet or optional tooling at import time are still plain Python to import.
_SKIP = ("kubespiffe.proto.",)


def _all_subclasses(root: type) -> set[type]:
    found: set[type] = set()
    stack: list[type] = [root]
    while stack:
        subclasses: list[type] = stack.pop().__subclasses__()
        for sub in subclasses:
            if sub not in found:
                found.add(sub)
                stack.append(sub)
    return found


def test_every_error_class_is_in_the_tree_with_its_module() -> None:
    for module in pkgutil.walk_packages(kubespiffe.__path__, "kubespiffe."):
        if not module.name.startswith(_SKIP):
            importlib.import_module(module.name)
    doc = errors.__doc__ or ""
    classes = _all_subclasses(KubespiffeError) - {InvalidInput}
    assert classes, "no error classes found"
    for cls in sorted(classes, key=lambda c: c.__name__):
        row = re.search(rf"── {cls.__name__}\s+(\S+)", doc)
        assert row, f"{cls.__module__}.{cls.__name__} is missing from errors.py's tree"
        where = row.group(1)
        if not where.startswith("("):  # rows under IssuerError name exit codes instead of a module
            assert cls.__module__ == f"kubespiffe.{where}", f"{cls.__name__}: tree says {where}"
    names = {c.__name__ for c in classes}
    assert len(names) == len(classes), "two error classes share a name"
