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
