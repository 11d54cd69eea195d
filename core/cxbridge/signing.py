"""Webhook signing and verification, the Standard Webhooks scheme (https://www.standardwebhooks.com).

A signed request carries three headers::

    webhook-id:         the delivery id, stable across attempts (use it to drop duplicates)
    webhook-timestamp:  unix seconds of this attempt
    webhook-signature:  "v1,<base64 HMAC-SHA256(secret, f'{id}.{timestamp}.{body}')>", one entry per
                        active secret, separated by spaces (several during a rotation)

``X-CXMind-Signature`` repeats ``webhook-signature``. A secret is ``whsec_`` followed by the base64
of at least 32 random bytes (:func:`generate_secret`); the HMAC key is the decoded bytes.

Senders call :func:`sign`; receivers call :func:`verify` with the *raw* request body (before any
JSON parsing). Existing Standard Webhooks and Svix verifiers accept what :func:`sign` produces, and
:func:`verify` accepts what they produce.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from cxbridge.errors import SignatureError

__all__ = [
    "CXMIND_SIGNATURE_HEADER",
    "DEFAULT_TOLERANCE",
    "MIN_SECRET_BYTES",
    "SECRET_PREFIX",
    "FutureTimestampError",
    "InvalidSecretError",
    "MalformedHeaderError",
    "MissingHeaderError",
    "NoMatchingSignatureError",
    "StaleTimestampError",
    "TimestampError",
    "generate_secret",
    "parse_secret",
    "sign",
    "signature",
    "verify",
]

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 32
DEFAULT_TOLERANCE = 300
CXMIND_SIGNATURE_HEADER = "X-CXMind-Signature"

# Header names, lower case; each tuple is tried in order. Svix's own names are accepted so that a
# receiver moving from Svix keeps working.
_ID_HEADERS = ("webhook-id", "svix-id")
_TIMESTAMP_HEADERS = ("webhook-timestamp", "svix-timestamp")
_SIGNATURE_HEADERS = ("webhook-signature", "x-cxmind-signature", "svix-signature")


class InvalidSecretError(SignatureError, ValueError):
    """A secret is not ``whsec_`` + base64 of at least 32 bytes. Never carries the secret."""


class MissingHeaderError(SignatureError):
    """A required header (``webhook-id``, ``-timestamp`` or ``-signature``) is absent."""


class MalformedHeaderError(SignatureError):
    """A header is present but unreadable (a timestamp that is not a number, no ``v1,`` entry)."""


class TimestampError(SignatureError):
    """``webhook-timestamp`` is outside the tolerance: a replay, or a clock that is off."""


class StaleTimestampError(TimestampError):
    """The timestamp is older than the tolerance allows."""


class FutureTimestampError(TimestampError):
    """The timestamp is further in the future than the tolerance allows."""


class NoMatchingSignatureError(SignatureError):
    """No signature in the header matches the body with any of the given secrets."""


def generate_secret(nbytes: int = MIN_SECRET_BYTES) -> str:
    """A new random secret: ``whsec_`` + base64 of ``nbytes`` (at least 32) random bytes."""
    if nbytes < MIN_SECRET_BYTES:
        raise InvalidSecretError(f"a secret needs at least {MIN_SECRET_BYTES} bytes, not {nbytes}")
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(nbytes)).decode("ascii")


def parse_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret; :class:`InvalidSecretError` (without the secret)."""
    if not isinstance(secret, str):
        raise InvalidSecretError(f"a secret must be a string, not {type(secret).__name__}")
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecretError(
            f"a secret must start with {SECRET_PREFIX!r} followed by base64; generate one with "
            "`.venv/bin/cxbridge secret`"
        )
    encoded = secret[len(SECRET_PREFIX) :].strip()
    try:
        # Unpadded base64 is common in copied secrets; add the padding back.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecretError(f"the part after {SECRET_PREFIX!r} is not valid base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise InvalidSecretError(
            f"a secret must decode to at least {MIN_SECRET_BYTES} bytes, this one has {len(key)}"
        )
    return key


def _unix(moment: int | float | datetime | None) -> int:
    if moment is None:
        return int(time.time())
    if isinstance(moment, datetime):
        return int(moment.timestamp())
    return int(moment)


def _check_msg_id(msg_id: str) -> None:
    if not msg_id or not msg_id.isprintable() or any(ch.isspace() for ch in msg_id):
        raise SignatureError(
            "the message id must be a non-empty string without spaces or control characters"
        )


def _hmac(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode(), hashlib.sha256)
    mac.update(body)
    return mac.digest()


def signature(body: bytes, *, msg_id: str, timestamp: int, secret: str) -> str:
    """One ``v1,<base64>`` signature entry of ``body`` with one secret."""
    digest = _hmac(parse_secret(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def sign(
    body: bytes,
    *,
    msg_id: str,
    secrets: Sequence[str],
    timestamp: int | float | datetime | None = None,
) -> dict[str, str]:
    """Headers that sign ``body`` as one attempt of message ``msg_id``.

    :param body: the exact bytes that will be sent.
    :param msg_id: the delivery id, stable across attempts (``webhook-id``).
    :param secrets: one or more ``whsec_…`` secrets; each adds a signature (key rotation).
    :param timestamp: unix seconds (or a datetime) of this attempt; now by default.
    :return: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``, ``X-CXMind-Signature``.
    :raises InvalidSecretError: a secret is malformed; :class:`SignatureError` when ``secrets`` is
        empty or ``msg_id`` cannot be a header value.
    """
    if isinstance(secrets, str):
        secrets = [secrets]
    if not secrets:
        raise SignatureError("no secret to sign with; configure at least one whsec_ secret")
    _check_msg_id(msg_id)
    ts = _unix(timestamp)
    value = " ".join(signature(body, msg_id=msg_id, timestamp=ts, secret=s) for s in secrets)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": value,
        CXMIND_SIGNATURE_HEADER: value,
    }


def _lower(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    # Mappings (dict, Starlette, Django) have items(); Werkzeug's headers too, and iterate as pairs.
    items = headers.items() if hasattr(headers, "items") else headers
    return {str(name).lower(): str(value) for name, value in items}


def _first(headers: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            return value.strip()
    return None


def _signatures(value: str) -> list[bytes]:
    """The decoded ``v1`` signatures of a header; other versions (``v1a`` ...) are skipped."""
    found: list[bytes] = []
    for entry in value.split():
        version, sep, encoded = entry.partition(",")
        if not sep or version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def verify(
    body: bytes | str,
    headers: Mapping[str, str],
    secrets: str | Sequence[str],
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: int | float | datetime | None = None,
) -> None:
    """Check that a received webhook was signed with one of ``secrets``; return quietly if so.

    :param body: the raw request body, exactly as received (``await request.body()``,
        ``request.get_data()``, ``request.body``). A re-serialised JSON body will not verify.
    :param headers: the request headers; names are matched case-insensitively.
        ``X-CXMind-Signature`` (or Svix's ``svix-*`` headers) are used when ``webhook-signature``
        is absent.
    :param secrets: the ``whsec_…`` secret, or several while you rotate.
    :param tolerance: seconds the timestamp may differ from ``now`` (replay protection); 5 min.
    :param now: the current time, for tests.
    :raises MissingHeaderError, MalformedHeaderError, StaleTimestampError, FutureTimestampError,
        NoMatchingSignatureError, InvalidSecretError: all subclasses of
        :class:`~cxbridge.errors.SignatureError`; answer 400 or 401 to any of them.
    """
    keys = [parse_secret(s) for s in ([secrets] if isinstance(secrets, str) else secrets)]
    if not keys:
        raise InvalidSecretError("no secret to verify with")
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    lowered = _lower(headers)

    msg_id = _first(lowered, _ID_HEADERS)
    if msg_id is None:
        raise MissingHeaderError("missing header webhook-id")
    stamp = _first(lowered, _TIMESTAMP_HEADERS)
    if stamp is None:
        raise MissingHeaderError("missing header webhook-timestamp")
    header = _first(lowered, _SIGNATURE_HEADERS)
    if header is None:
        raise MissingHeaderError("missing header webhook-signature (or X-CXMind-Signature)")

    if not stamp.isascii() or not stamp.isdigit():
        raise MalformedHeaderError("webhook-timestamp must be unix seconds (digits only)")
    timestamp = int(stamp)
    current = _unix(now)
    if timestamp < current - tolerance:
        raise StaleTimestampError(
            f"webhook-timestamp is {current - timestamp} s old, more than the {tolerance} s "
            "allowed; a replayed message or a receiver clock that is off"
        )
    if timestamp > current + tolerance:
        raise FutureTimestampError(
            f"webhook-timestamp is {timestamp - current} s in the future, more than the "
            f"{tolerance} s allowed; check the receiver's clock"
        )

    received = _signatures(header)
    if not received:
        raise MalformedHeaderError("webhook-signature holds no readable 'v1,<base64>' entry")
    matched = False
    for key in keys:
        expected = _hmac(key, msg_id, timestamp, raw)
        for candidate in received:
            # Compare every entry (no early exit): timing says nothing about which one matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise NoMatchingSignatureError(
            "no signature matches: the body was changed (verify the raw bytes, not re-encoded "
            "JSON) or the secret is wrong"
        )
