"""`fast_init`: the same `__init__` for a frozen, slotted dataclass, without its cost.

`@dataclass(frozen=True)` generates an `__init__` that stores each field through
`object.__setattr__` (frozen blocks plain assignment): about 0.1 µs a field, and a request
builds ~70 such fields (its parameters, the prepared request, its route constraints, one
snapshot and estimate per candidate) before its provider request is sent. `fast_init`
replaces that `__init__` by one with the same signature that stores each field through its
slot's own descriptor, which skips the frozen check without weakening it: assignment after
construction still raises `FrozenInstanceError`. Equality, hashing, `repr`,
`dataclasses.replace` and `dataclasses.fields` stay the dataclass's own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, cast

T = TypeVar("T")


class _Factory:
    """The default of a field with a `default_factory`: the factory is called per instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def fast_init(cls: type[T]) -> type[T]:
    """Give the frozen, slotted dataclass `cls` an `__init__` that sets its slots directly
    (as the generated one would: same parameters, defaults and factories)."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in vars(cls):
        raise TypeError(f"{cls.__name__}: fast_init is for frozen, slotted dataclasses")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: fast_init does not call __post_init__")
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY}
    args, lines = [], []
    for i, f in enumerate(dataclasses.fields(cast(Any, cls))):
        if not f.init or f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: fast_init takes plain fields only")
        namespace[f"_set{i}"] = vars(cls)[f.name].__set__
        value = f.name
        if f.default is not dataclasses.MISSING:
            namespace[f"_default{i}"] = f.default
            args.append(f"{f.name}=_default{i}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory{i}"] = f.default_factory
            args.append(f"{f.name}=_FACTORY")
            value = f"_factory{i}() if {f.name} is _FACTORY else {f.name}"
        else:
            args.append(f.name)
        lines.append(f"    _set{i}(self, {value})\n")
    # Generated source, as `dataclasses` itself builds `__init__`: one plain call per field.
    source = f"def __init__(self, {', '.join(args)}):\n{''.join(lines) or '    pass'}\n"
    exec(source, namespace)  # built above from the dataclass's own field names only
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = vars(cls)["__init__"].__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
