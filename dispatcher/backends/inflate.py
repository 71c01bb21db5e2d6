"""Undo a response's ``Content-Encoding`` a little at a time, within hard caps (pure, no I/O).

A probe asks for ``Accept-Encoding: identity``, but a site may compress anyway, and a
hostile one may send a few KiB that inflate to gigabytes (``Content-Encoding: gzip, gzip``).
:class:`BodyDecoder` inflates each layer with ``zlib``'s ``max_length``, so no layer ever
produces more than ``limit`` bytes however its input is built, and no call works on more
than what it was fed plus that cap: the event loop is never held for long.

``gzip`` (and ``x-gzip``) and ``deflate`` (zlib-wrapped or raw, as servers send both) are
understood, stacked in any order; ``identity`` is skipped. Anything else is refused with a
:class:`UndecodableBody` naming it.

:class:`BodySearch` is the probe's whole body check on top of it, shared by both HTTP probes:
raw pieces in, at most :data:`MAX_BODY` bytes in :data:`MAX_PIECES` pieces, decoded, searched
for the expected text.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

MAX_INFLATED = 64 * 1024  # decoded bytes per layer: what is searched for the expected text
MAX_LAYERS = 4  # content codings stacked on one body
MAX_BODY = 64 * 1024  # raw body bytes read off the wire, before any inflating
MAX_PIECES = 4096  # body pieces (reads, or chunks of a chunked body) a probe will take
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


class BodySearch:
    """Look for ``wanted`` in a body fed one raw piece at a time (pure, no I/O).

    At most :data:`MAX_BODY` raw bytes are taken, in at most :data:`MAX_PIECES` pieces, and
    inflated through a :class:`BodyDecoder` for ``names`` (the ``Content-Encoding`` codings).
    """

    __slots__ = ("_body", "_decoder", "_keep", "_pieces", "_wanted", "found", "names", "read")

    def __init__(self, wanted: bytes, names: list[str]) -> None:
        self._wanted = wanted
        self._keep = len(wanted) - 1  # what may hold the start of a match across pieces
        self.names = names
        self._decoder = BodyDecoder(names) if names else None
        self._body = bytearray()  # decoded so far (without codings: only its last _keep bytes)
        self._pieces = 0
        self.read = 0
        self.found = False

    def feed(self, received: bytes) -> bool:
        """Take one piece; ``True`` when the search is over (found, or a cap reached).

        Raises :class:`UndecodableBody` for a corrupt coding or a piece beyond the count.
        """
        chunk = received[: MAX_BODY - self.read]
        self.read += len(chunk)
        seen = max(0, len(self._body) - self._keep)
        decoder = self._decoder
        if decoder is None:
            haystack = self._body[seen:] + chunk
            self._body = haystack[len(haystack) - self._keep :] if self._keep else bytearray()
            full = False
        else:
            self._body += decoder.feed(chunk)
            haystack = self._body[seen:]
            full = decoder.full
        if self._wanted in haystack:
            self.found = True
            return True
        if self.read >= MAX_BODY or full:
            return True
        self._pieces += 1
        if self._pieces >= MAX_PIECES:
            raise UndecodableBody(f"the body came in more than {MAX_PIECES} pieces")
        return False

    def searched(self) -> str:
        """For a failed search of a compressed body: what was searched (else ``""``)."""
        if self.found or self._decoder is None:
            return ""
        capped = ", inflating stopped at its cap" if self._decoder.full else ""
        how = ", ".join(self.names)
        return (
            f" (searched {len(self._body)} bytes inflated from {self.read} bytes of {how}{capped})"
        )


__all__ = [
    "MAX_BODY",
    "MAX_INFLATED",
    "MAX_LAYERS",
    "MAX_PIECES",
    "BodyDecoder",
    "BodySearch",
    "UndecodableBody",
    "codings",
]
