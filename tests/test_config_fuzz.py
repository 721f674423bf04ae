"""Bad config values (issue 13): every field of every config dataclass of minivdit, given a value of the wrong
type (a string for an int, a bool for an int, NaN or inf for a float, a non-member of a ``Literal``, a
tuple of the wrong length, None where None is not allowed), raises a ``ValueError`` naming
``Class.field``, never a ``TypeError`` deep inside. Values of the right type but out of range are accepted
or refused by each config's own checks, and still only ever with a ``ValueError``.

The configs are found by walking the package, so a new config is covered without touching this file.
Hypothesis draws the values; ~2 s on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pkgutil
import types
import typing
from typing import Literal, get_args, get_origin

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import minivdit
from minivdit.config import _hints, _matches
from minivdit.models.dit import DiTConfig


def _configs() -> list[type]:
    found = {}
    for info in pkgutil.walk_packages(minivdit.__path__, "minivdit."):
        if info.name.endswith("__main__"):
            continue
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if (
                isinstance(obj, type)
                and dataclasses.is_dataclass(obj)
                and name.endswith("Config")
                and obj.__module__ == mod.__name__
            ):
                found[f"{obj.__module__}.{name}"] = obj
    return [found[k] for k in sorted(found)]


CONFIGS = _configs()
FIELDS = [(cls, name) for cls in CONFIGS for name in _hints(cls)]
# Configs whose defaults alone are not a valid config: a minimal valid one.
VALID = {
    "CogVideoXVAEConfig": dict(scaling_factor=0.7),
    "SampleConfig": dict(ckpt="runs/x"),
    "TrainConfig": dict(model=DiTConfig(in_channels=3, num_frames=8, input_size=(32, 32), learn_sigma=False)),
}


# Fields that take a list on purpose and store it as the tuple (config.json writes tuples as lists).
LISTS_TAKEN = {("DataConfig", "image_size"), ("BucketConfig", "sizes")}  # config.json gives lists


def valid(cls: type):
    return cls(**VALID.get(cls.__name__, {}))


def test_every_config_is_found_and_builds_with_its_defaults():
    names = {c.__name__ for c in CONFIGS}
    assert {"TrainConfig", "DiTConfig", "CogVideoXConfig", "DataConfig", "CkptConfig", "EvalConfig"} <= names
    assert len(CONFIGS) >= 25 and len(FIELDS) >= 300
    for cls in CONFIGS:
        valid(cls)


ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=3),
    st.tuples(st.text(max_size=3)),
    st.tuples(st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, 3)),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


def _wrong(tp) -> st.SearchStrategy:
    """Values that do not fit annotation ``tp``."""
    return ANY.filter(lambda v: not _matches(tp, v))


@pytest.mark.parametrize(("cls", "field"), FIELDS, ids=[f"{c.__name__}.{f}" for c, f in FIELDS])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_wrong_type_names_the_field(cls, field, data):
    hint = _hints(cls)[field]
    value = data.draw(_wrong(hint), label=field)
    if (cls.__name__, field) in LISTS_TAKEN:  # a list that is a right tuple is a right value there
        assume(not (isinstance(value, list) and _matches(hint, tuple(value))))
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}="):
        dataclasses.replace(valid(cls), **{field: value})


def _right(tp) -> st.SearchStrategy | None:
    """Values of annotation ``tp``, including the nonsensical ones (negative sizes, zero rates)."""
    origin = get_origin(tp)
    if tp is type(None):
        return st.none()
    if origin in (typing.Union, types.UnionType):
        parts = [s for s in (_right(a) for a in get_args(tp)) if s is not None]
        return st.one_of(parts) if parts else None
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            inner = _right(args[0])
            return None if inner is None else st.lists(inner, max_size=3).map(tuple)
        parts = [_right(a) for a in args]
        return None if None in parts else st.tuples(*parts)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-4, 10_000)
    if tp is float:
        return st.floats(-10.0, 10.0)
    if tp is str:
        return st.text(max_size=6)
    return None  # a nested config: covered as its own class


RIGHT_TYPED = [(c, f) for c, f in FIELDS if _right(_hints(c)[f]) is not None]


@pytest.mark.parametrize(("cls", "field"), RIGHT_TYPED, ids=[f"{c.__name__}.{f}" for c, f in RIGHT_TYPED])
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_out_of_range_is_a_value_error_or_accepted(cls, field, data):
    value = data.draw(_right(_hints(cls)[field]), label=field)
    with contextlib.suppress(ValueError):  # refused by the config's own checks; anything else fails
        dataclasses.replace(valid(cls), **{field: value})
