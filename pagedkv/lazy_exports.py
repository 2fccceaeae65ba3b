"""Names a package exports but imports on first use (PEP 562), so importing the package stays
cheap: ``pagedkv`` and ``pagedkv.engine`` import without torch, and the model side loads when
one of its names is first read. One helper for both packages."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def lazy_exports(
    package: str, table: Mapping[str, str], namespace: MutableMapping[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: a name of ``table`` (name -> module)
    is imported from its module when first read and kept in ``namespace`` (the package's
    ``globals()``), so later reads skip ``__getattr__``; ``dir()`` lists the public names,
    loaded or not."""

    def getattr_(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({n for n in namespace if not n.startswith("_")} | set(table))

    return getattr_, dir_
