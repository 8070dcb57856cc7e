"""Declared ops: each op class is declared once, with its log tag (or as a read) and the name of the
store method that applies it. Everything else is derived from that declaration: which ops a store
logs, its handler table, and the log encoding, which is by field name (a JSON object per op), so
the format on disk never depends on the order of a dataclass's fields.

    SESSION_OPS = OpRegistry("session")

    @SESSION_OPS.logged("append", "_append")
    @dataclass(slots=True, frozen=True)
    class AppendMessages: ...

A field that is not part of the log (a quota checked only when the op first runs) is declared with
`unlogged()`; a field whose JSON form differs from its Python one names a `FieldCodec`. An op under
an idempotency key (engine.idempotency.Idempotent) is encoded as `{"op": "once", "key",
"fingerprint", "inner": <the op>}`.

Used by engine.sessions (session shards) and engine.memory (memory shards); imports neither.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from engine.errors import ValidationFailed
from engine.idempotency import Idempotent

T = TypeVar("T")
TAG = "op"  # the key of an encoded op that holds its tag
ONCE = "once"


class Op:
    """What every kind's ops derive from (SessionOp, MemoryOp). An op crosses from a gateway to a
    shard pickled as its class and its fields in order: a slotted dataclass's own pickling runs
    Python code for each object, and this does not
    (benchmarks/RESULTS.md#2-ops-pickled-by-their-fields-690af1c)."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        fields: tuple[str, ...] = self.__slots__  # a dataclass(slots=True)'s, in field order
        return (type(self), tuple([getattr(self, name) for name in fields]))


@dataclass(slots=True, frozen=True)
class FieldCodec:
    """How one field goes to JSON and back."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


TUPLE = FieldCodec(list, tuple)


def unlogged(default: Any = None) -> Any:
    """A field the log leaves out: replay applies the op without it (quotas are such fields)."""
    return dataclasses.field(default=default, metadata={"logged": False})


def coded(codec: FieldCodec, **kwargs: Any) -> Any:
    """A field with its own JSON form."""
    return dataclasses.field(metadata={"codec": codec}, **kwargs)


@dataclass(slots=True, frozen=True)
class _Field:
    name: str
    codec: FieldCodec | None
    omit_none: bool  # None is its default: left out of the encoding, and the default on decode


@dataclass(slots=True, frozen=True)
class OpSpec:
    cls: type
    tag: str | None  # None: a read, never logged
    handler: str  # the name of the store method that applies it
    log_without_result: bool  # logged even when it returns nothing (changed nothing)
    fields: tuple[_Field, ...]

    @property
    def logged(self) -> bool:
        return self.tag is not None


class UnencodableOp(ValidationFailed):
    """An op whose change the log cannot hold (a value nested too deep, an integer past 64 bits).
    Refused before anything of its batch is applied; the other ops of the batch go on."""

    def __init__(self, op_name: str, reason: str) -> None:
        super().__init__(
            f"this change cannot be stored: {reason}",
            {"op": op_name, "reason": reason},
            "JSON values may nest at most limits.max_json_depth levels, and integers must fit in 64 bits "
            "(-2^63 to 2^64-1); send large numbers as strings.",
        )


class OpRegistry:
    """The ops of one kind of store (session shards, memory shards)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._by_type: dict[type, OpSpec] = {}
        self._by_tag: dict[str, OpSpec] = {}

    # -- declaring ----------------------------------------------------------------------------------

    def logged(
        self, tag: str, handler: str, *, log_without_result: bool = True
    ) -> Callable[[type[T]], type[T]]:
        """A change: logged when it succeeds. `log_without_result=False`: not logged when it
        returns an empty result (an expiry pass that expired nothing)."""
        if tag in self._by_tag or tag == ONCE:
            raise ValueError(f"{self.name} op tag {tag!r} is declared twice")
        return self._declare(tag, handler, log_without_result)

    def read(self, handler: str) -> Callable[[type[T]], type[T]]:
        """A read: never logged, answered even while the store is read-only."""
        return self._declare(None, handler, False)

    def _declare(
        self, tag: str | None, handler: str, log_without_result: bool
    ) -> Callable[[type[T]], type[T]]:
        def declare(cls: type[T]) -> type[T]:
            fields = tuple(
                _Field(f.name, f.metadata.get("codec"), f.default is None)
                for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.metadata.get("logged", True)
            )
            if tag is not None and any(f.name == TAG for f in fields):
                raise ValueError(f"{cls.__name__}: a logged op has no field named {TAG!r}")
            spec = OpSpec(cls, tag, handler, log_without_result, fields)
            self._by_type[cls] = spec
            if tag is not None:
                self._by_tag[tag] = spec
            return cls

        return declare

    # -- what follows from the declarations ---------------------------------------------------------

    @property
    def logged_types(self) -> tuple[type, ...]:
        return tuple(spec.cls for spec in self._by_type.values() if spec.logged)

    @property
    def read_types(self) -> tuple[type, ...]:
        return tuple(spec.cls for spec in self._by_type.values() if not spec.logged)

    def spec(self, op: Any) -> OpSpec:
        return self._by_type[type(op)]

    def handlers(self, store: object) -> dict[type, Callable[..., Any]]:
        """Each declared op's handler: the store's method of the declared name."""
        return {cls: getattr(store, spec.handler) for cls, spec in self._by_type.items()}

    def is_logged(self, op: Any) -> bool:
        if type(op) is Idempotent:
            op = op.op
        spec = self._by_type.get(type(op))
        return spec is not None and spec.logged

    # -- the log encoding ---------------------------------------------------------------------------

    def encode(self, op: Any) -> dict[str, Any]:
        """The op as the JSON object the log holds."""
        if type(op) is Idempotent:
            return {TAG: ONCE, "key": op.key, "fingerprint": op.fingerprint, "inner": self.encode(op.op)}
        spec = self._by_type[type(op)]
        if spec.tag is None:
            raise TypeError(f"{type(op).__name__} is a read, not a logged op")
        out: dict[str, Any] = {TAG: spec.tag}
        for f in spec.fields:
            value = getattr(op, f.name)
            if value is None and f.omit_none:
                continue
            out[f.name] = f.codec.encode(value) if f.codec is not None else value
        return out

    def encode_bytes(self, op: Any) -> bytes:
        """The op's exact log bytes; raises UnencodableOp for a change the log cannot hold."""
        try:
            return orjson.dumps(self.encode(op))
        except TypeError as exc:  # orjson: nesting past its limit, an integer past 64 bits, ...
            inner = op.op if type(op) is Idempotent else op
            raise UnencodableOp(type(inner).__name__, _reason(str(exc))) from None

    def decode(self, encoded: dict[str, Any]) -> Any:
        """An op from its log object; raises ValueError (or TypeError) for one that is not."""
        values = dict(encoded)
        tag = values.pop(TAG, None)
        if tag == ONCE:
            return Idempotent(values["key"], values["fingerprint"], self.decode(values["inner"]))
        spec = self._by_tag.get(tag) if isinstance(tag, str) else None
        if spec is None:
            raise ValueError(f"unknown {self.name} op {tag!r}")
        known = {f.name: f for f in spec.fields}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"{self.name} op {tag!r} has unknown fields {sorted(unknown)}")
        kwargs = {
            name: known[name].codec.decode(value) if known[name].codec is not None else value  # type: ignore[union-attr]
            for name, value in values.items()
        }
        return spec.cls(**kwargs)


def _reason(message: str) -> str:
    if "Recursion limit" in message:
        return "JSON nested deeper than the log can hold"
    if "64-bit" in message:
        return "an integer does not fit in 64 bits"
    return message
