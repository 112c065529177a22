"""The personalization methods: one registry that feeds ``--method``, its help, the docs
table and the benchmarks. Adding a method is one file in this folder (a `Method` subclass),
its import and its entry below, and its row in the docs tables (`fedrema methods --markdown`).
"""

from __future__ import annotations

from typing import Any

from fedrema_cli.methods.base import Method, Outcome, RoundInputs
from fedrema_cli.methods.fedavg import FedAvg, FedAvgFineTune
from fedrema_cli.methods.fedper import FedPer
from fedrema_cli.methods.fedrema import FedReMa, FedReMaModel, FedReMaPaper
from fedrema_cli.methods.local import Local, LocalLogistic, Majority
from fedrema_cli.methods.mrmtl import MRMTL
from fedrema_cli.methods.pfednet import PFedNet, PFedNetPaper

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (
        FedReMa,
        FedReMaPaper,
        FedReMaModel,
        PFedNet,
        PFedNetPaper,
        MRMTL,
        FedAvg,
        FedAvgFineTune,
        FedPer,
        Local,
        LocalLogistic,
        Majority,
    )
}

__all__ = [
    "METHODS",
    "Method",
    "Outcome",
    "RoundInputs",
    "markdown_table",
    "method_help",
    "option_ranges",
    "parse_method_options",
]


def option_ranges(method: str) -> dict[str, str]:
    """Each option's accepted values in words ("≥ 0", "> 0 and ≤ 1", "softmax or centered",
    "or none"), read from the method's Options model, so `fedrema methods` shows the range a
    value is checked against before anyone is refused by it."""
    import typing

    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}  # pydantic's Field(ge=...) metadata
    out: dict[str, str] = {}
    for name, field in METHODS[method].Options.model_fields.items():
        bounds = [
            f"{sign} {getattr(m, attr):g}"
            for m in field.metadata
            for attr, sign in signs.items()
            if getattr(m, attr, None) is not None
        ]
        ann = field.annotation
        args = typing.get_args(ann)
        literals = [ann] if typing.get_origin(ann) is typing.Literal else list(args)
        choices = [
            str(c)
            for a in literals
            if typing.get_origin(a) is typing.Literal
            for c in typing.get_args(a)
        ]
        text = " and ".join(bounds) if bounds else " or ".join(choices)
        if type(None) in args:
            text = f"{text}, or null" if text else "or null"
        if field.description:
            text = f"{text}: {field.description}" if text else field.description
        out[name] = text
    return out


def method_help() -> str:
    """The methods for ``--method``'s help, from the registry."""
    return ", ".join(METHODS) + " (see `fedrema methods`; docs/architecture.md)"


_PARTS = {"all": "whole model (weighted) + weight", "extractor": "extractor (weighted) + weight"}


def markdown_table() -> str:
    """The method table of docs/architecture.md, generated from the registry."""
    lines = [
        "| method | through SecAgg (summed) | to the coordinator, sealed to it alone "
        "| next round's head at the site | deployed model |",
        "|---|---|---|---|---|",
    ]
    for name, m in METHODS.items():
        shared = _PARTS[m.shared] if m.shared else "nothing"
        sealed = {"head": "classifier head", "all": "whole model"}.get(m.personal or "", "nothing")
        lines.append(f"| `{name}` | {shared} | {sealed} | {m.next_head} | {m.deployed} |")
    return "\n".join(lines) + "\n"


def parse_method_options(method: str, pairs: list[str] | None) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs as the method's options (values read as JSON when they
    parse, else as text); each problem named in one UsageError."""
    import json

    from fedrema_cli.errors import OptionError

    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"bad --option {pair!r}; use KEY=VALUE, e.g. --option lam=0.1")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out[key.strip()] = value
    fields = METHODS[method].Options.model_fields
    unknown = sorted(set(out) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise OptionError(f"{method} has no option {', '.join(unknown)} (its options: {known})")
    from pydantic import ValidationError

    try:  # the values too, here, before a command writes anything
        METHODS[method].parse_options(out)
    except ValidationError as e:
        problems = "; ".join(
            f"--option {'.'.join(map(str, err['loc']))}: {err['msg'][:1].lower()}{err['msg'][1:]}"
            f" (got {err['input']!r})"
            for err in e.errors()
        )
        raise OptionError(f"{method}: {problems}") from None
    return out
