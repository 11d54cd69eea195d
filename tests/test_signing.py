"""cxbridge.signing: Standard Webhooks signatures, cross-checked with standardwebhooks and svix."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks
import svix.webhooks

from cxbridge import signing
from cxbridge.errors import SignatureError
from cxbridge.signing import (
    FutureTimestampError,
    InvalidSecretError,
    MalformedHeaderError,
    MissingHeaderError,
    NoMatchingSignatureError,
    StaleTimestampError,
    generate_secret,
    parse_secret,
    sign,
    verify,
)

BODY = b'{"type":"call_summary","ai":{"summary":"Caf\xc3\xa9 \xe2\x80\x94 refund agreed"}}'
MSG_ID = "dlv_01HZX3K8Q2"


@pytest.fixture
def secret() -> str:
    return generate_secret()


def test_generate_secret_is_whsec_base64_of_32_random_bytes() -> None:
    one, two = generate_secret(), generate_secret()
    assert one.startswith("whsec_") and one != two
    assert len(base64.b64decode(one.removeprefix("whsec_"))) == 32
    assert len(parse_secret(generate_secret(64))) == 64


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("c2VjcmV0", "start with 'whsec_'"),
        ("whsec_!!!not-base64!!!", "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "at least 32 bytes"),
        ("", "start with"),
    ],
)
def test_parse_secret_errors_are_typed_and_never_echo_the_secret(bad: str, reason: str) -> None:
    with pytest.raises(InvalidSecretError, match=reason) as info:
        parse_secret(bad)
    assert isinstance(info.value, SignatureError)
    if bad:
        assert bad not in str(info.value)


def test_generate_secret_refuses_short_keys() -> None:
    with pytest.raises(InvalidSecretError):
        generate_secret(16)


def test_unpadded_secret_is_accepted(secret: str) -> None:
    assert parse_secret(secret.rstrip("=")) == parse_secret(secret)


def test_sign_headers_match_the_scheme(secret: str) -> None:
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret], timestamp=1_700_000_000)
    assert headers["webhook-id"] == MSG_ID
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"] == headers["X-CXMind-Signature"]
    version, encoded = headers["webhook-signature"].split(",")
    assert version == "v1"
    import hashlib
    import hmac

    expected = hmac.new(
        parse_secret(secret), f"{MSG_ID}.1700000000.".encode() + BODY, hashlib.sha256
    ).digest()
    assert base64.b64decode(encoded) == expected


def test_sign_accepts_a_datetime_timestamp(secret: str) -> None:
    moment = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret], timestamp=moment)
    assert headers["webhook-timestamp"] == str(int(moment.timestamp()))


def test_sign_without_secret_or_with_bad_id_is_a_signature_error(secret: str) -> None:
    with pytest.raises(SignatureError, match="no secret"):
        sign(BODY, msg_id=MSG_ID, secrets=[])
    with pytest.raises(SignatureError, match="message id"):
        sign(BODY, msg_id="a b\r\nX-Evil: 1", secrets=[secret])


def test_standardwebhooks_verifies_what_we_sign(secret: str) -> None:
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret])
    payload = standardwebhooks.Webhook(secret).verify(BODY, headers)
    assert payload["type"] == "call_summary"


def test_svix_verifies_what_we_sign(secret: str) -> None:
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret])
    svix.webhooks.Webhook(secret).verify(BODY, headers)


def test_we_verify_what_standardwebhooks_signs(secret: str) -> None:
    now = datetime.now(UTC)
    value = standardwebhooks.Webhook(secret).sign(MSG_ID, now, BODY.decode())
    headers = {
        "Webhook-Id": MSG_ID,
        "Webhook-Timestamp": str(int(now.timestamp())),
        "Webhook-Signature": value,
    }
    verify(BODY, headers, secret)


def test_we_verify_what_svix_signs_with_svix_header_names(secret: str) -> None:
    now = datetime.now(UTC)
    value = svix.webhooks.Webhook(secret).sign(MSG_ID, now, BODY.decode())
    headers = {
        "svix-id": MSG_ID,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": value,
    }
    verify(BODY, headers, secret)


def test_headers_are_case_insensitive(secret: str) -> None:
    headers = {k.upper(): v for k, v in sign(BODY, msg_id=MSG_ID, secrets=[secret]).items()}
    verify(BODY, headers, secret)


def test_x_cxmind_signature_is_used_when_webhook_signature_is_absent(secret: str) -> None:
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret])
    del headers["webhook-signature"]
    verify(BODY, headers, secret)


def test_tampered_body_fails(secret: str) -> None:
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret])
    with pytest.raises(NoMatchingSignatureError, match="raw bytes"):
        verify(BODY.replace(b"refund", b"rebate"), headers, secret)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(BODY.replace(b"refund", b"rebate"), headers)


def test_changed_id_or_wrong_secret_fails(secret: str) -> None:
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret])
    with pytest.raises(NoMatchingSignatureError):
        verify(BODY, {**headers, "webhook-id": "dlv_other"}, secret)
    with pytest.raises(NoMatchingSignatureError):
        verify(BODY, headers, generate_secret())


def test_stale_and_future_timestamps_fail(secret: str) -> None:
    now = int(time.time())
    old = sign(BODY, msg_id=MSG_ID, secrets=[secret], timestamp=now - 301)
    with pytest.raises(StaleTimestampError, match="301 s old"):
        verify(BODY, old, secret, now=now)
    verify(BODY, old, secret, now=now, tolerance=600)
    future = sign(BODY, msg_id=MSG_ID, secrets=[secret], timestamp=now + 301)
    with pytest.raises(FutureTimestampError):
        verify(BODY, future, secret, now=now)
    # the third-party verifiers agree
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError, match="too old"):
        standardwebhooks.Webhook(secret).verify(BODY, old)


def test_timestamp_inside_the_tolerance_passes(secret: str) -> None:
    now = int(time.time())
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret], timestamp=now - 299)
    verify(BODY, headers, secret, now=now)
    verify(BODY, headers, secret, now=datetime.fromtimestamp(now, UTC))


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers(secret: str, missing: str) -> None:
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret])
    del headers[missing]
    if missing == "webhook-signature":
        del headers["X-CXMind-Signature"]
    with pytest.raises(MissingHeaderError, match=missing):
        verify(BODY, headers, secret)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("webhook-timestamp", "yesterday"),
        ("webhook-timestamp", "1.7e9"),
        ("webhook-signature", "v1"),
        ("webhook-signature", "v2,abc"),
        ("webhook-signature", "v1,@@@notbase64@@@"),
    ],
)
def test_malformed_headers(secret: str, header: str, value: str) -> None:
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret])
    headers[header] = value
    headers.pop("X-CXMind-Signature")
    with pytest.raises(MalformedHeaderError):
        verify(BODY, headers, secret)


def test_unknown_versions_are_skipped_next_to_a_good_v1(secret: str) -> None:
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret])
    headers["webhook-signature"] = "v1a,Zm9v " + headers["webhook-signature"]
    verify(BODY, headers, secret)


def test_rotation_two_secrets_two_signatures_each_verifies(secret: str) -> None:
    new = generate_secret()
    headers = sign(BODY, msg_id=MSG_ID, secrets=[new, secret])
    assert len(headers["webhook-signature"].split(" ")) == 2
    verify(BODY, headers, secret)
    verify(BODY, headers, new)
    verify(BODY, headers, [new, secret])
    standardwebhooks.Webhook(secret).verify(BODY, headers)
    svix.webhooks.Webhook(new).verify(BODY, headers)


def test_receiver_with_several_secrets_accepts_either(secret: str) -> None:
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret])
    verify(BODY, headers, [generate_secret(), secret])


def test_str_body_is_taken_as_utf8(secret: str) -> None:
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret])
    verify(BODY.decode(), headers, secret)


def test_verify_with_a_bad_secret_is_a_signature_error_not_value_error_only(secret: str) -> None:
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret])
    with pytest.raises(SignatureError):
        verify(BODY, headers, "not-a-secret")
    with pytest.raises(SignatureError):
        verify(BODY, headers, [])


def test_errors_never_contain_the_secret(secret: str) -> None:
    headers = sign(BODY, msg_id=MSG_ID, secrets=[secret])
    for attempt in (
        lambda: verify(b"x", headers, secret),
        lambda: verify(BODY, {}, secret),
        lambda: verify(BODY, headers, secret, now=0),
    ):
        with pytest.raises(SignatureError) as info:
            attempt()
        assert secret not in str(info.value)
        assert secret.removeprefix("whsec_") not in repr(info.value)


def test_public_names() -> None:
    assert set(signing.__all__) >= {"sign", "verify", "generate_secret", "parse_secret"}
