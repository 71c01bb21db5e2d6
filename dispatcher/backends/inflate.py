"""Undo a response's ``Content-Encoding`` a little at a time, within hard caps (pure, no I/O).

A probe asks for ``Accept-Encoding: identity``, but a site may compress anyway, and a
hostile one may send a few KiB that inflate to gigabytes (``Content-Encoding: gzip, gzip``).
:class:`BodyDecoder` inflates each layer with ``zlib``'s ``max_length``, so no layer ever
produces more than ``limit`` bytes however its input is built, and no call works on more
than what it was fed plus that cap: the event loop is never held for long.

``gzip`` (and ``x-gzip``) and ``deflate`` (zlib-wrapped or raw, as servers send both) are
understood, stacked in any order; ``identity`` is skipped. Anything else is refused with a
:class:`UndecodableBody` naming it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

MAX_INFLATED = 64 * 1024  # decoded bytes per layer: what is searched for the expected text
MAX_LAYERS = 4  # content codings stacked on one body
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class UndecodableBody(ValueError):
    """A body that cannot be decoded within the caps; ``reason`` says why, for the verdict."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _Layer:
    """One content coding undone: at most ``limit`` bytes out, ever."""

    __slots__ = ("_held", "_inflater", "full", "limit", "name", "produced")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.produced = 0
        self.full = False
        self._held = b""  # deflate: the first bytes, until zlib-or-raw can be told
        self._inflater: zlib._Decompress | None = (
            zlib.decompressobj(_GZIP_WBITS) if name == "gzip" else None
        )

    def feed(self, data: bytes) -> bytes:
        """Inflate ``data``; return what came out (``b""`` once the cap is reached)."""
        if self.full or not data:
            return b""
        inflater = self._inflater
        if inflater is None:
            data = self._choose_deflate(data)
            inflater = self._inflater
            if inflater is None:
                return b""
        try:
            return self._inflate(inflater, data)
        except zlib.error as exc:
            raise UndecodableBody(f"the {self.name} layer does not inflate: {exc}") from None

    def _choose_deflate(self, data: bytes) -> bytes:
        """HTTP's ``deflate`` is meant to be zlib-wrapped; many servers send it raw."""
        held = self._held + data
        if len(held) < 2:
            self._held = held
            return b""
        zlib_header = held[0] & 0x0F == 8 and (held[0] << 8 | held[1]) % 31 == 0
        self._inflater = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        self._held = b""
        return held

    def _inflate(self, inflater: zlib._Decompress, data: bytes) -> bytes:
        out = inflater.decompress(data, self.limit - self.produced)
        while inflater.eof and inflater.unused_data and self.name == "gzip":
            room = self.limit - self.produced - len(out)
            if room <= 0:  # (a max_length of 0 would mean no limit at all)
                break
            rest = inflater.unused_data  # another gzip member follows
            inflater = self._inflater = zlib.decompressobj(_GZIP_WBITS)
            try:
                out += inflater.decompress(rest, room)
            except zlib.error:  # trailing garbage after a whole member: ignored, as browsers do
                self.full = True
                break
        self.produced += len(out)
        if inflater.unconsumed_tail or self.produced >= self.limit:
            self.full = True
        return out


def codings(header_values: Iterable[str]) -> list[str]:
    """The content codings named by ``Content-Encoding`` values, in the order applied.

    Names are case-insensitive; ``identity`` and empty items are dropped; ``x-gzip`` is
    ``gzip``. Raises :class:`UndecodableBody` for a coding not understood, or more than
    :data:`MAX_LAYERS` of them.
    """
    names: list[str] = []
    for value in header_values:
        for item in value.split(","):
            name = item.strip().lower()
            if name in ("", "identity"):
                continue
            name = "gzip" if name == "x-gzip" else name
            if name not in ("gzip", "deflate"):
                raise UndecodableBody(
                    f"Content-Encoding {name[:40]!r} is not supported (the probe asks for identity)"
                )
            names.append(name)
            if len(names) > MAX_LAYERS:
                raise UndecodableBody(f"more than {MAX_LAYERS} content codings stacked")
    return names


class BodyDecoder:
    """Feed raw body bytes in; get decoded bytes out, never more than ``limit`` per layer.

    ``names`` are the codings as applied (``Content-Encoding`` order); they are undone last
    first. Once any layer reaches its cap, :attr:`full` is set and further input is ignored:
    what came out so far is all that will ever be looked at.
    """

    def __init__(self, names: Iterable[str], limit: int = MAX_INFLATED) -> None:
        self._layers = [_Layer(name, limit) for name in reversed(list(names))]

    @property
    def full(self) -> bool:
        return any(layer.full for layer in self._layers)

    def feed(self, data: bytes) -> bytes:
        """Decode one chunk; raises :class:`UndecodableBody` when a layer is corrupt."""
        if self.full:
            return b""
        for layer in self._layers:
            data = layer.feed(data)
        return data


__all__ = ["MAX_INFLATED", "MAX_LAYERS", "BodyDecoder", "UndecodableBody", "codings"]
