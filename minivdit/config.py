"""Config (de)serialisation: frozen dataclasses <-> JSON-able dicts, for ``config.json`` and checkpoints.

Union-typed fields (``objective: DDPMConfig | FlowConfig``) are written with a ``"_type"`` tag holding the
class name, so a run directory alone rebuilds the model and objective (``python -m minivdit.sample``).

``check_types(cfg)`` (the first line of every config's ``__post_init__``) holds each field to its annotation,
so a bad value built in Python or read from a JSON file fails at once with a ``ValueError`` naming the field,
rather than as a ``TypeError`` deep inside a model (tyro checks the command line itself).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return f"one of {get_args(tp)}"
    if get_origin(tp) is None and isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("minivdit.", "")


def _matches(tp: Any, v: Any) -> bool:
    """Whether ``v`` is a value of annotation ``tp`` (the subset of typing the configs use)."""
    origin = get_origin(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return v is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(a, v) for a in get_args(tp))
    if origin is Literal:  # 1 == True, so the types must match too
        return any(v == a and type(v) is type(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(v, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(args[0], x) for x in v)
        return len(v) == len(args) and all(_matches(a, x) for a, x in zip(args, v, strict=True))
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if isinstance(tp, type):
        return isinstance(v, tp)
    return True  # an annotation this checker does not know: left to the config's own checks


def check_types(cfg: Any) -> None:
    """``ValueError`` naming the first field of dataclass ``cfg`` whose value does not fit its annotation
    (booleans are not integers; floats must be finite; tuples must have the annotated length)."""
    for name, tp in _hints(type(cfg)).items():
        v = getattr(cfg, name)
        if not _matches(tp, v):
            raise ValueError(f"{type(cfg).__name__}.{name}={v!r}: expected {_type_name(tp)}")


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        out = {"_type": type(cfg).__name__}
        out.update({f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)})
        return out
    if isinstance(cfg, tuple | list):
        return [to_dict(v) for v in cfg]
    return cfg


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if isinstance(value, dict):
            for a in options:
                if dataclasses.is_dataclass(a) and value.get("_type", a.__name__) == a.__name__:
                    return from_dict(a, value)
            raise ValueError(f"config value tagged {value.get('_type')!r} matches none of {options}")
        return _convert(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value, strict=True))
    return value


def from_dict(cls: type, d: dict) -> Any:
    """Rebuild dataclass ``cls`` from :func:`to_dict` output; unknown keys raise ``ValueError``."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names - {"_type"}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields in config: {sorted(unknown)}")
    return cls(**{k: _convert(hints[k], v) for k, v in d.items() if k != "_type"})


def pop_choice(flag: str, choices: tuple[str, ...], default: str, argv: list[str] | None = None) -> str:
    """Take ``flag VALUE`` (or ``flag=VALUE``) out of ``argv`` (default ``sys.argv``) and return VALUE.

    For the one structural choice a recipe exposes on the command line (``--objective ddpm|flow``): tyro
    changes values of the class the recipe chose, so a different class is picked here, before tyro parses
    the rest."""
    import sys

    argv = sys.argv if argv is None else argv
    value = default
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i : i + 2]
            break
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
            del argv[i]
            break
    if value not in choices:
        raise ValueError(f"{flag} must be one of {choices}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------- command line


def _optional_config(tp: Any) -> type | None:
    """The dataclass ``X`` of an ``X | None`` annotation, else None."""
    if get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    options = [a for a in get_args(tp) if a is not type(None)]
    if len(options) == 1 and type(None) in get_args(tp) and dataclasses.is_dataclass(options[0]):
        return options[0]
    return None


def cli(
    cls: type,
    default: Any,
    args: list[str],
    *,
    description: str | None = None,
    hide: tuple[str, ...] = (),
    overrides: dict[str, Any] | None = None,
) -> Any:
    """Parse ``args`` with ``tyro`` over ``cls``, starting from the recipe's ``default``.

    Two things tyro does not do by itself, done here on a CLI-only subclass of ``cls`` (the result is a plain
    ``cls``):
    - ``hide``: fields left out of ``--help`` and the parser (the CogVideoX-only ``--lora.*`` / ``--text.*`` /
      ``--i2v.*`` of a V-DiT recipe), keeping the recipe's values;
    - an optional section the recipe leaves off (``eval: EvalConfig | None = None``) still shows its flags,
      and any ``--<section>.*`` flag turns it on, from the section's defaults (``--eval.protocol synthetic``);
      without one it stays None. tyro alone offers no flags for a None default.

    ``overrides`` replace fields of ``default`` before the flags apply, unchecked until the flags have been
    applied (``--pretrained``'s architecture may not fit the recipe's ``--align.block-index`` until the
    command line changes it)."""
    import tyro

    hints = _hints(cls)
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    # The parser's class skips ``cls``'s cross-field checks: its defaults turn optional sections on for --help
    # (an AlignConfig on a recipe without teachers); the returned ``cls`` is checked in full.
    ns: dict[str, Any] = {"__annotations__": {}, "__doc__": cls.__doc__, "__post_init__": lambda self: None}
    values = {f.name: getattr(default, f.name) for f in dataclasses.fields(cls)} | (overrides or {})
    switched_off: list[str] = []
    for f in dataclasses.fields(cls):
        tp, value = hints[f.name], values[f.name]
        if f.name in hide:
            ns["__annotations__"][f.name] = tyro.conf.Suppress[tp]
            ns[f.name] = dataclasses.field(default_factory=lambda v=value: v)
        elif value is None and (section := _optional_config(tp)) is not None:
            if not any(g.startswith(f"--{f.name}.") for g in given):
                switched_off.append(f.name)  # parsed from the defaults for --help, then set back to None
            doc = f"Off in this recipe: any --{f.name}.* flag turns it on, from these defaults."
            ns["__annotations__"][f.name] = typing.Annotated[section, tyro.conf.arg(help=doc)]
            ns[f.name] = dataclasses.field(default_factory=section)
            values[f.name] = section()
    parser_cls = dataclasses.dataclass(frozen=True, kw_only=True)(type(cls.__name__, (cls,), ns))
    parsed = tyro.cli(
        parser_cls,
        default=parser_cls(**values),
        args=args,
        config=(tyro.conf.AvoidSubcommands,),
        description=description,
    )
    out = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(cls)}
    try:
        return cls(**(out | {name: None for name in switched_off}))
    except ValueError as e:  # the cross-field checks: a usage error, as tyro reports a field's own checks
        import sys

        print(f"error: {e}\nFor the flags: {sys.argv[0]} --help", file=sys.stderr)
        raise SystemExit(2) from e
