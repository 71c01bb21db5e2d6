"""Signed, timestamped, optionally compressed JSON tokens with key rotation (itsdangerous).

A token is ``PAYLOAD.TIMESTAMP.SIGNATURE``: URL-safe base64 of compact JSON (prefixed ``.``
when zlib-compressed), the issue time in whole seconds, and an HMAC-SHA1 over both with a
key derived from one secret key and a purpose-specific salt. It is the format of
itsdangerous's ``URLSafeTimedSerializer``, so that class can read our tokens too.

Keys: pass one key or a sequence, oldest first and **newest last** (as ``FARM_SECRET_KEYS``).
The newest signs; every key verifies; a key removed from the list invalidates what it signed.
Derived keys are computed once, when the codec is built.

Tokens are signed, not encrypted: anyone holding one can read its payload.

The issue time comes from the wall clock (``time.time``, injectable) because tokens travel
between machines; each machine's monotonic clock would mean nothing to another.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from itsdangerous.encoding import base64_encode, bytes_to_int, int_to_bytes, want_bytes
from itsdangerous.exc import BadSignature
from itsdangerous.signer import Signer

from dispatcher.errors import InvalidValue
from dispatcher.session.errors import BadToken, TokenExpired, TokenTooLarge, UnserializableState

SecretKeys = str | bytes | Sequence[str | bytes]
Clock = Callable[[], float]

MAX_COOKIE_BYTES = 4093
"""The largest cookie every browser keeps; the default ``max_size`` of every codec."""
MAX_INFLATED_BYTES = 1 << 20
"""A compressed payload may not inflate beyond this (even a signed one)."""
DEFAULT_COMPRESS_OVER = 256
DEFAULT_LEEWAY = 5


def key_list(secret_keys: SecretKeys) -> tuple[bytes, ...]:
    """The keys as bytes, oldest first and newest last; :class:`InvalidValue` if there are none
    or one is empty. A single ``str``/``bytes`` is one key, never a sequence of characters."""
    keys = [secret_keys] if isinstance(secret_keys, str | bytes) else list(secret_keys)
    if not keys:
        raise InvalidValue("secret_keys", "at least one secret key")
    out = []
    for index, key in enumerate(keys):
        if not isinstance(key, str | bytes) or not key:
            raise InvalidValue(f"secret_keys[{index}]", "a non-empty string or bytes")
        out.append(key.encode() if isinstance(key, str) else key)
    return tuple(out)


def secret_keys_from_env(
    env: Mapping[str, str] | None = None, var: str = "FARM_SECRET_KEYS"
) -> tuple[str, ...]:
    """The keys in ``$FARM_SECRET_KEYS`` (comma-separated, newest last), as the dispatcher
    reads them; :class:`InvalidValue` naming the variable if it is unset or empty."""
    raw = (os.environ if env is None else env).get(var, "")
    keys = tuple(item.strip() for item in raw.split(",") if item.strip())
    if not keys:
        raise InvalidValue(var, "a comma-separated list with at least one key, newest last")
    return keys


@dataclass(frozen=True, slots=True)
class Signed:
    """A verified token's ``value`` and its issue time ``issued_at`` (Unix seconds)."""

    value: Any
    issued_at: int


class _Signer(Signer):
    """itsdangerous's signer (same key derivation, same HMAC-SHA1 signatures) with every
    derived key and its keyed HMAC state computed once, at construction: signing copies the
    newest key's state, verifying tries each key's, newest first."""

    def __init__(self, keys: Sequence[bytes], salt: str) -> None:
        super().__init__(list(keys), salt=salt)
        derived = [Signer.derive_key(self, key) for key in self.secret_keys]
        self._macs = [hmac.new(key, digestmod=hashlib.sha1) for key in reversed(derived)]
        #: Per derived key, newest first: SHA-1 states keyed with the inner and outer HMAC
        #: pads (RFC 2104), for :meth:`StateCodec.seal` and :meth:`StateCodec.unseal`.
        self.pads = tuple(_pads(key) for key in reversed(derived))

    def get_signature(self, value: str | bytes) -> bytes:
        return base64_encode(self._mac(self._macs[0], want_bytes(value)))

    def verify_signature(self, value: str | bytes, sig: str | bytes) -> bool:
        try:
            expected = _b64decode(want_bytes(sig))
        except ValueError:
            return False
        data = want_bytes(value)
        return any(hmac.compare_digest(self._mac(base, data), expected) for base in self._macs)

    @staticmethod
    def _mac(base: hmac.HMAC, data: bytes) -> bytes:
        mac = base.copy()
        mac.update(data)
        return mac.digest()


class StateCodec:
    """Signs JSON values into tokens and verifies them back, for one purpose (``salt``).

    ``max_age`` (seconds) is the default lifetime checked by :meth:`loads`; ``None`` checks
    none. A payload whose JSON is longer than ``compress_over`` bytes is zlib-compressed when
    that makes it shorter (``None``: never). A token longer than ``max_size`` is refused by
    :meth:`dumps` with :class:`TokenTooLarge` (``None``: no limit). A token issued more than
    ``leeway`` seconds in the future (clock skew between machines) is rejected.
    """

    def __init__(
        self,
        secret_keys: SecretKeys,
        *,
        salt: str,
        max_age: int | None = None,
        compress_over: int | None = DEFAULT_COMPRESS_OVER,
        max_size: int | None = MAX_COOKIE_BYTES,
        leeway: int = DEFAULT_LEEWAY,
        clock: Clock = time.time,
    ) -> None:
        if not salt:
            raise InvalidValue("salt", "a non-empty, purpose-specific salt")
        _check_seconds("max_age", max_age)
        self.salt = salt
        self.max_age = max_age
        self.compress_over = compress_over
        self.max_size = max_size
        self.leeway = leeway
        self.clock = clock
        self._signer = _Signer(key_list(secret_keys), salt)

    def dumps(self, obj: Any) -> str:
        """A token for ``obj`` (any JSON value), signed with the newest key now.

        Raises :class:`UnserializableState` (not standard JSON) or :class:`TokenTooLarge`.
        """
        stamp = base64_encode(int_to_bytes(int(self.clock())))
        payload = _encode_payload(obj, self.compress_over)
        token = self._signer.sign(payload + b"." + stamp).decode("ascii")
        if self.max_size is not None and len(token) > self.max_size:
            raise TokenTooLarge(f"{self.salt} token", len(token), self.max_size)
        return token

    def loads(self, token: str, max_age: int | None = None) -> Any:
        """The value in ``token``; see :meth:`load`."""
        return self.load(token, max_age).value

    def load(self, token: str, max_age: int | None = None) -> Signed:
        """The value in ``token`` and when it was signed, checked against ``max_age`` (or the
        codec's). Any input that is not a valid, live token of this purpose raises
        :class:`BadToken` (:class:`TokenExpired` when only its age is wrong); nothing else."""
        if not isinstance(token, str) or not token.isascii():
            raise BadToken(self.salt, "not an ASCII string")
        try:
            signed = self._signer.unsign(token)
        except BadSignature as exc:
            raise BadToken(self.salt, _reason(exc)) from None
        payload, _, stamp = signed.rpartition(b".")
        issued_at = _decode_stamp(self.salt, stamp)
        self._check_age(issued_at, self.max_age if max_age is None else max_age)
        return Signed(_decode_payload(self.salt, payload), issued_at)

    def seal(self, payload: str, issued_at: int) -> str:
        """The token :meth:`dumps` gives for a value whose payload part is ``payload``
        (URL-safe base64 of its JSON, see :func:`encode_payload`), issued at ``issued_at``.

        For hot paths that sign the same few values again and again: they encode each value
        once and only sign here (one HMAC, no JSON, no exceptions). No size check.
        """
        value = f"{payload}.{_stamp_text(issued_at)}"
        mac = _hmac_sha1(self._signer.pads[0], value.encode("ascii"))
        return f"{value}.{_b64text(mac)}"

    def unseal(self, token: str, max_age: int | None = None) -> tuple[str, int] | None:
        """``(payload, issued_at)`` of a valid, live token (the payload part still encoded),
        or ``None``: the verdict of :meth:`load` (never an exception), for hot paths.

        The signature is compared in its text form; base64 has one canonical spelling of the
        expected MAC, so any other spelling fails, as in :meth:`load`.
        """
        if token.__class__ is not str or not token.isascii():
            return None
        value, _, signature = token.rpartition(".")
        payload, _, stamp = value.rpartition(".")
        if not payload.strip(".") or not stamp:
            return None
        data = value.encode("ascii")
        for pads in self._signer.pads:
            if hmac.compare_digest(_b64text(_hmac_sha1(pads, data)), signature):
                break
        else:
            return None
        issued_at = _STAMPS.get(stamp)
        if issued_at is None:
            issued_at = _parse_stamp(stamp)
            if issued_at is None:
                return None
        age = int(self.clock()) - issued_at
        limit = self.max_age if max_age is None else max_age
        if age < -self.leeway or (limit is not None and age > limit):
            return None
        return payload, issued_at

    def _check_age(self, issued_at: int, max_age: int | None) -> None:
        age = int(self.clock()) - issued_at
        if age < -self.leeway:
            raise BadToken(self.salt, f"issued {-age} s in the future")
        if max_age is not None and age > max_age:
            signed = datetime.fromtimestamp(issued_at, tz=UTC)
            raise TokenExpired(self.salt, signed, age, max_age)


def _check_seconds(field: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidValue(field, f"a whole number of seconds >= 1 or None, got {value!r}")


def _reason(exc: BadSignature) -> str:
    text = str(exc)
    if text.startswith("No b'.' found"):
        return "no signature"
    return "signature does not match" if text.startswith("Signature ") else text


def encode_payload(obj: Any) -> str:
    """The payload part of a token for ``obj`` (uncompressed), for :meth:`StateCodec.seal`."""
    return _encode_payload(obj, None).decode("ascii")


def decode_payload(salt: str, payload: str) -> Any:
    """The value in a token's payload part, as :meth:`StateCodec.unseal` returns it;
    :class:`BadToken` if it does not decode."""
    return _decode_payload(salt, payload.encode("ascii"))


Pads = tuple["hashlib._Hash", "hashlib._Hash"]


def _pads(key: bytes) -> Pads:
    """SHA-1 states that have absorbed ``key`` XOR the inner and the outer pad."""
    # HMAC-SHA1 is itsdangerous's format and is not weakened by SHA-1's collisions.
    if len(key) > _SHA1_BLOCK:
        key = hashlib.sha1(key).digest()  # noqa: S324 - RFC 2104 key reduction
    key = key.ljust(_SHA1_BLOCK, b"\0")
    inner = hashlib.sha1(key.translate(_INNER))  # noqa: S324 - HMAC pad, see above
    outer = hashlib.sha1(key.translate(_OUTER))  # noqa: S324 - HMAC pad, see above
    return inner, outer


def _hmac_sha1(pads: Pads, data: bytes) -> bytes:
    """HMAC-SHA1 of ``data`` from precomputed pads: what ``hmac.digest(key, data, "sha1")``
    gives, for half the time (no key schedule, no digest look-up by name)."""
    inner, outer = pads[0].copy(), pads[1].copy()
    inner.update(data)
    outer.update(inner.digest())
    return outer.digest()


_SHA1_BLOCK = 64
_INNER = bytes(b ^ 0x36 for b in range(256))
_OUTER = bytes(b ^ 0x5C for b in range(256))


def _b64text(raw: bytes) -> str:
    """URL-safe base64 without padding, as text (itsdangerous's ``base64_encode``)."""
    return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE, b"=").decode("ascii")


def _stamp_text(issued_at: int) -> str:
    text = _STAMP_TEXTS.get(issued_at)
    if text is None:
        text = base64_encode(int_to_bytes(issued_at)).decode("ascii")
        if len(_STAMP_TEXTS) >= _STAMP_CACHE:
            _STAMP_TEXTS.clear()
        _STAMP_TEXTS[issued_at] = text
    return text


def _parse_stamp(stamp: str) -> int | None:
    """A timestamp part's value; ``None`` unless it is canonical base64 of a non-empty
    number (as :func:`_decode_stamp` accepts). Remembered: many tokens share a second."""
    try:
        raw = _b64decode(stamp.encode("ascii"))
    except ValueError:
        return None
    if not raw:
        return None
    value = bytes_to_int(raw)
    if len(_STAMPS) >= _STAMP_CACHE:
        _STAMPS.clear()
    _STAMPS[stamp] = value
    return value


#: Timestamp parts by value and values by part, for the seconds seen last.
_STAMP_TEXTS: dict[int, str] = {}
_STAMPS: dict[str, int] = {}
_STAMP_CACHE = 4096
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _encode_payload(obj: Any, compress_over: int | None) -> bytes:
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        raw = text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnserializableState(str(exc)) from None
    if compress_over is not None and len(raw) > compress_over:
        packed = zlib.compress(raw)
        if len(packed) < len(raw) - 1:
            return b"." + base64_encode(packed)
    return base64_encode(raw)


def _decode_stamp(salt: str, stamp: bytes) -> int:
    try:
        raw = _b64decode(stamp)
    except ValueError:
        raw = b""
    if not raw:
        raise BadToken(salt, "malformed timestamp")
    return bytes_to_int(raw)


def _decode_payload(salt: str, payload: bytes) -> Any:
    compressed = payload.startswith(b".")
    try:
        raw = _b64decode(payload[1:] if compressed else payload)
        if compressed:
            raw = _inflate(raw)
        return json.loads(raw.decode("utf-8"))
    except (ValueError, zlib.error, RecursionError):
        raise BadToken(salt, "undecodable payload") from None


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64decode(data: bytes) -> bytes:
    """Strict, canonical URL-safe base64 without padding; ``ValueError`` on anything else, so
    a token has exactly one spelling."""
    if b"+" in data or b"/" in data:
        raise ValueError("not URL-safe base64")
    padded = data.translate(_FROM_URLSAFE) + b"=" * (-len(data) % 4)
    try:
        raw = binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None
    if base64_encode(raw) != data:  # unused low bits set: one value, two spellings
        raise ValueError("non-canonical base64")
    return raw


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    raw = inflater.decompress(data, MAX_INFLATED_BYTES)
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError("compressed payload too large or truncated")
    return raw
