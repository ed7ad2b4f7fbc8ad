"""`fast_init`: the same `__init__` for a frozen, slotted dataclass, without its cost.

`@dataclass(frozen=True)` generates an `__init__` that stores each field through
`object.__setattr__` (frozen blocks plain assignment): ~0.1 µs a field, and a request builds
~75 such fields (its parameters, the prepared request, its route constraints, one snapshot
and estimate per candidate, the decision) before its provider request is sent.
`fast_init` replaces that `__init__` by one with the same parameters that, for an instance of
the class itself, stores the fields while the instance is of a plain twin class with the
same slots (assignment there is a plain slot store) and then gives it its class back
(`__class__` assignment between classes of one layout, as Python allows). An instance of a
subclass is set through the slots' own descriptors instead. Assignment after construction
still raises `FrozenInstanceError`; equality, hashing, `repr`, `dataclasses.replace` and
`dataclasses.fields` stay the dataclass's own.
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
    # The twin: the same slots (so the same layout), no base but `object`, nothing else.
    plain = cls.__bases__ == (object,)
    twin = type(f"{cls.__name__}Fields", (), {"__slots__": vars(cls)["__slots__"],
                                               "__module__": cls.__module__})
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY, "_cls": cls, "_twin": twin,
                                 "_set_class": object.__setattr__}
    args, stores, sets = [], [], []
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
        stores.append(f"        self.{f.name} = {value}\n")
        sets.append(f"        _set{i}(self, {value})\n")
    if clash := {"self", *namespace} & {f.name for f in dataclasses.fields(cast(Any, cls))}:
        raise TypeError(f"{cls.__name__}: fast_init cannot take a field named {clash.pop()}")
    # Generated source, as `dataclasses` itself builds `__init__`.
    body = "".join(sets) or "        pass\n"
    if plain and stores:
        body = (f"    if type(self) is _cls:\n        _set_class(self, '__class__', _twin)\n"
                f"{''.join(stores)}        self.__class__ = _cls\n    else:\n{body}")
    else:
        body = body.replace("\n    ", "\n").removeprefix("    ")
    source = f"def __init__({', '.join(['self', *args])}):\n{body}"
    exec(source, namespace)  # built above from the dataclass's own field names only
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = vars(cls)["__init__"].__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
