"""From what went wrong talking to Salesforce to an :class:`~cxbridge.Outcome`.

==========================================  ==================================================
401 (after the one re-login of the attempt) permanent: the credentials no longer work
403 ``REQUEST_LIMIT_EXCEEDED``              retry after ``rate_limit_retry_after`` (the org's
                                            daily API limit is a rolling 24 h window)
other 403                                   permanent (permissions)
400                                         permanent, naming the error code and the fields;
                                            transient codes (``UNABLE_TO_LOCK_ROW``) retry
300 (several records on one external id)    permanent, listing the record ids
404                                         permanent
410 (an API version Salesforce retired)     permanent, and the destination is disabled
408, 429, 5xx, timeouts, connection errors  retry, after the answer's ``Retry-After`` if any
address refused by allow_networks, 3xx      permanent (the guard's message names the rule or
redirect                                    the Location)
non-JSON error bodies (HTML 401 or 503)     by status, with the body's text as excerpt
==========================================  ==================================================
"""

from __future__ import annotations

import json
from typing import Any

import requests
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceMoreThanOneRecord,
    SalesforceRefusedRequest,
)

from cxbridge import Outcome, guard_outcome, parse_retry_after
from cxbridge_salesforce.client import AuthError

__all__ = ["TRANSIENT_ERROR_CODES", "PlanError", "outcome_for_exception"]

EXCERPT_LIMIT = 16 * 1024
# Error codes Salesforce answers with a 4xx although a later attempt may well succeed.
TRANSIENT_ERROR_CODES = frozenset(
    {"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG", "QUERY_TIMEOUT"}
)


class PlanError(Exception):
    """A stored write plan that cannot be carried out as written (re-render it after fixing the
    mapping)."""


def outcome_for_exception(
    exc: BaseException, *, rate_limit_retry_after: float, retry_after: str | None = None
) -> Outcome | None:
    """The outcome of an exception from a Salesforce call, or None if it is not one we know.
    ``retry_after`` is the failed answer's ``Retry-After`` header."""
    guarded = guard_outcome(exc)  # a refused address or redirect, a failed DNS lookup
    if guarded is not None:
        return guarded
    if isinstance(exc, AuthError):
        details: dict[str, Any] = {
            "status_code": exc.status_code,
            "provider_code": exc.provider_code,
        }
        if exc.retryable:
            return Outcome.retry(str(exc), **details)
        return Outcome.permanent(str(exc), **details)
    if isinstance(exc, PlanError):
        return Outcome.permanent(str(exc))
    if isinstance(exc, SalesforceError):
        return _salesforce_outcome(exc, rate_limit_retry_after, retry_after)
    if isinstance(exc, requests.Timeout):
        return Outcome.retry(f"Salesforce did not answer in time ({type(exc).__name__})")
    if isinstance(exc, requests.RequestException):
        return Outcome.retry(f"cannot reach Salesforce: {type(exc).__name__}")
    if isinstance(exc, ValueError) and "JSON" in type(exc).__name__:
        return Outcome.retry("Salesforce answered with a body that is not JSON")
    return None


def _salesforce_outcome(
    exc: SalesforceError, rate_limit_retry_after: float, retry_after: str | None
) -> Outcome:
    status = exc.status
    errors = _errors(exc.content)
    code = errors[0].get("errorCode") if errors else None
    details: dict[str, Any] = {
        "status_code": status,
        "provider_code": code,
        "response_excerpt": _excerpt(exc.content),
    }
    where = f"{exc.resource_name} " if exc.resource_name else ""
    described = _describe(errors) or f"HTTP {status}"

    if isinstance(exc, SalesforceExpiredSession) or status == 401:
        return Outcome.permanent(
            f"Salesforce refused the session again after renewing it ({described}); check that the "
            "integration user is active and the connected app is approved for it",
            **{**details, "provider_code": code or "INVALID_SESSION_ID"},
        )
    if isinstance(exc, SalesforceMoreThanOneRecord) or status == 300:
        ids = _ids(exc.content)
        return Outcome.permanent(
            f"several {where}records share this external id ({', '.join(ids) or 'ids unknown'}); "
            "make the external-id field unique and merge the duplicates",
            **{**details, "provider_code": "MULTIPLE_CHOICES"},
        )
    if any(e.get("errorCode") == "REQUEST_LIMIT_EXCEEDED" for e in errors):
        return Outcome.retry(
            f"Salesforce API request limit exceeded ({described})",
            retry_after=rate_limit_retry_after,
            **{**details, "provider_code": "REQUEST_LIMIT_EXCEEDED"},
        )
    if isinstance(exc, SalesforceRefusedRequest):
        return Outcome.permanent(
            f"Salesforce refused the {where}request ({described}); check the integration user's "
            "permissions",
            **details,
        )
    if status == 410:
        return Outcome.permanent(
            f"Salesforce says the {where}resource is gone (HTTP 410), usually a retired API "
            "version: raise api_version, then run `cxbridge enable` and replay the dead letters",
            disable_destination=True,
            **details,
        )
    if status >= 500 or status in (408, 429) or code in TRANSIENT_ERROR_CODES:
        return Outcome.retry(
            f"Salesforce {where}error: {described}",
            retry_after=parse_retry_after(retry_after),
            **details,
        )
    return Outcome.permanent(f"Salesforce rejected the {where}write: {described}", **details)


def _errors(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list):
        return [e for e in content if isinstance(e, dict)]
    return []


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors:
        text = f"{error.get('errorCode', 'ERROR')}: {error.get('message', '')}".strip()
        fields = error.get("fields")
        if fields:
            text += f" (fields: {', '.join(str(f) for f in fields)})"
        parts.append(text)
    return "; ".join(parts)


def _ids(content: Any) -> list[str]:
    ids = []
    for item in content if isinstance(content, list) else []:
        if isinstance(item, str):
            ids.append(item.rstrip("/").rsplit("/", 1)[-1])
        elif isinstance(item, dict) and item.get("Id"):
            ids.append(str(item["Id"]))
    return ids


def _excerpt(content: Any) -> str | None:
    if content is None:
        return None
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    return text[:EXCERPT_LIMIT]
