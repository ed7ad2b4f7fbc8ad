"""`fast_init` keeps a frozen dataclass's constructor contract while setting slots directly."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import pytest

from router.records import fast_init


@dataclasses.dataclass(frozen=True, slots=True)
class _Plain:
    a: int
    b: str = "b"
    c: list[int] = dataclasses.field(default_factory=list)


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class _Fast:
    a: int
    b: str = "b"
    c: list[int] = dataclasses.field(default_factory=list)


def _as_plain(obj: _Fast) -> _Plain:
    return _Plain(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})


@pytest.mark.parametrize(("args", "kwargs"), [
    ((1,), {}), ((1, "x"), {}), ((1, "x", [2]), {}), ((), {"a": 1, "c": [3]}),
    ((1,), {"b": "y"}),
])
def test_the_same_instances_as_the_generated_init(args: tuple[object, ...],
                                                  kwargs: dict[str, object]) -> None:
    assert _as_plain(_Fast(*args, **kwargs)) == _Plain(*args, **kwargs)  # type: ignore[arg-type]


def test_the_same_signature_and_errors_as_the_generated_init() -> None:
    def params(cls: type) -> list[tuple[str, object]]:
        return [(p.name, p.default if p.default is inspect.Parameter.empty else repr(p.default))
                for p in inspect.signature(cls).parameters.values()]

    assert params(_Fast) == params(_Plain)
    with pytest.raises(TypeError):
        _Fast()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Fast(1, d=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Fast(1, a=2)  # type: ignore[misc]


def test_a_factory_default_is_new_per_instance() -> None:
    first, second = _Fast(1), _Fast(2)
    assert first.c == [] and first.c is not second.c


def test_still_frozen_comparable_and_replaceable() -> None:
    fast = _Fast(1, "x", [])
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.a = 2  # type: ignore[misc]
    assert dataclasses.replace(fast, b="y") == _Fast(1, "y", [])
    assert repr(fast) == "_Fast(a=1, b='x', c=[])"


def test_still_hashable() -> None:
    @fast_init
    @dataclasses.dataclass(frozen=True, slots=True)
    class Key:
        a: int
        b: tuple[str, ...] = ()

    assert hash(Key(1, ("x",))) == hash(Key(1, ("x",)))
    assert {Key(1): 1}[Key(1)] == 1


def test_refuses_what_it_cannot_copy() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True, slots=True)
    class Clash:  # a parameter named as a name the generated `__init__` uses
        _twin: int

    for cls in (Mutable, NoSlots, PostInit, Clash):
        with pytest.raises(TypeError):
            fast_init(cls)


def test_copies_pickles_and_subclasses_like_the_dataclass() -> None:
    fast = _Fast(1, "x", [2])
    assert type(fast) is _Fast
    assert copy.copy(fast) == fast and copy.deepcopy(fast) == fast
    assert pickle.loads(pickle.dumps(fast)) == fast

    class Sub(_Fast):  # set through the slots' descriptors: not of the class itself
        pass

    sub = Sub(1, "y")
    assert type(sub) is Sub and (sub.a, sub.b, sub.c) == (1, "y", [])
    with pytest.raises(dataclasses.FrozenInstanceError):
        sub.a = 2  # type: ignore[misc]
