"""What crosses between gradlint's processes and into its cache: plain data as JSON.

A worker's events (reports and notes), the cache's entries and the parent's requests to a
worker (the run's settings, the file to check) are JSON documents. Decoding rebuilds plain
values and the frozen dataclasses named in ``_types()``, from their fields, and refuses
anything else, so reading a worker's reply or a cache entry can never run code (unpickling a
crafted pickle runs whatever it names). Tuples, dicts with any keys, paths, TOML's dates and
non-finite floats come back as they went.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class WireError(ValueError):
    """A document that does not decode to what gradlint writes."""


@functools.cache
def _types() -> dict[str, type]:
    from gradlint.base.findings import Finding, Note
    from gradlint.base.report import (
        Agreement,
        Argument,
        LayerReport,
        ParamReport,
        RecurrentReport,
        Report,
        Summary,
        TrunkPoint,
    )
    from gradlint.base.targets import Tokens
    from gradlint.run.check_file import Settings
    from gradlint.run.config import Config, TargetSpec

    return {cls.__name__: cls for cls in (Report, Argument, ParamReport, LayerReport, RecurrentReport, Agreement,
                                          Summary, TrunkPoint, Finding, Note, Settings, Config, TargetSpec, Tokens)}


_TIMES = {"@datetime": datetime.datetime, "@date": datetime.date, "@time": datetime.time}


def encode(value: Any) -> Any:
    """``value`` as a JSON-ready structure that ``decode`` turns back into an equal value.

    Raises:
        TypeError: For a value that is not plain data or one of gradlint's record types.
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, enum.Enum):
        return encode(value.value)
    if isinstance(value, (bool, int, float, str)):  # subclasses: NumPy scalars, str enums
        return encode(next(base(value) for base in (bool, int, float, str) if isinstance(value, base)))
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):  # named tuples and torch.Size too
        return {"@tuple": [encode(v) for v in value]}
    if isinstance(value, Mapping):
        return {"@dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, Path):
        return {"@path": str(value)}
    for tag, cls in _TIMES.items():
        if type(value) is cls:
            return {tag: value.isoformat()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _types().get(name) is not type(value):
            raise TypeError(f"{type(value).__module__}.{name} cannot cross processes")
        return {"@type": name, "fields": {f.name: encode(getattr(value, f.name))
                                          for f in dataclasses.fields(value) if f.init}}
    if hasattr(value, "tolist"):  # a tensor or an array that slipped into a finding's evidence
        return encode(value.tolist())
    raise TypeError(f"{type(value).__module__}.{type(value).__name__} cannot cross processes")


def decode(data: Any) -> Any:
    """The value ``encode`` made ``data`` from.

    Raises:
        WireError: For anything ``encode`` does not write, a type gradlint does not know among it.
    """
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode(v) for v in data]
    if type(data) is not dict or len(data) not in (1, 2):
        raise WireError(f"unexpected {type(data).__name__}")
    if len(data) == 2:
        if set(data) != {"@type", "fields"} or type(data["fields"]) is not dict:
            raise WireError("unexpected object")
        cls = _types().get(data["@type"]) if isinstance(data["@type"], str) else None
        if cls is None:
            raise WireError(f"unknown type {data['@type']!r}")
        try:
            return cls(**{k: decode(v) for k, v in data["fields"].items()})
        except (TypeError, ValueError) as e:
            raise WireError(f"{cls.__name__}: {e}") from None
    (tag, body), = data.items()
    if tag == "@tuple" and type(body) is list:
        return tuple(decode(v) for v in body)
    if tag == "@dict" and type(body) is list and all(type(kv) is list and len(kv) == 2 for kv in body):
        out = {}
        for k, v in body:
            key = decode(k)
            try:
                out[key] = decode(v)
            except TypeError:  # an unhashable key
                raise WireError("unexpected key") from None
        return out
    if tag == "@path" and type(body) is str:
        return Path(body)
    if tag in _TIMES and type(body) is str:
        try:
            return _TIMES[tag].fromisoformat(body)
        except ValueError:
            raise WireError(f"bad {tag[1:]}") from None
    raise WireError(f"unexpected {tag!r}")


def dumps(value: Any) -> bytes:
    """``value`` as UTF-8 JSON (non-finite floats as JSON5's ``Infinity`` and ``NaN``)."""
    return json.dumps(encode(value), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def loads(data: bytes) -> Any:
    """The value ``dumps`` wrote.

    Raises:
        WireError: For bytes that are not such a document.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WireError(f"not a gradlint document: {type(e).__name__}") from None
    try:
        return decode(doc)
    except RecursionError:
        raise WireError("nested too deeply") from None
