"""Carrying out a write plan against Salesforce: one delivery attempt."""

from __future__ import annotations

import dataclasses
import logging

from simple_salesforce.exceptions import SalesforceMalformedRequest

from cxbridge import Outcome
from cxbridge_salesforce.client import Attempt, SalesforceClient
from cxbridge_salesforce.errors import PlanError, _errors, outcome_for_exception
from cxbridge_salesforce.mapping import Write, WritePlan

__all__ = ["execute"]

log = logging.getLogger("cxbridge_salesforce")
NOT_YET_RETRY_AFTER = 60.0
RACE_RETRY_AFTER = 5.0


class _RetryLater(Exception):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def execute(plan: WritePlan, client: SalesforceClient) -> Outcome:
    """Make every write of ``plan`` in order; the first failure decides the outcome."""
    if not plan.writes:
        return Outcome.delivered(response_excerpt=f"nothing to write for {plan.event_type}")
    attempt = client.attempt()
    written: list[str] = []
    for write in plan.writes:
        try:
            written.append(_write(write, attempt))
        except _RetryLater as exc:
            return Outcome.retry(f"{write.name}: {exc}", retry_after=exc.retry_after)
        except Exception as exc:
            outcome = outcome_for_exception(
                exc,
                rate_limit_retry_after=client.options.rate_limit_retry_after,
                retry_after=client.last_retry_after(),
            )
            if outcome is None:
                raise
            done = f" (already written: {', '.join(written)})" if written else ""
            return dataclasses.replace(
                outcome, error=f"{write.name} ({write.object}): {outcome.error}{done}"
            )
    summary = "; ".join(
        f"{w.name} {w.object} {rid}" for w, rid in zip(plan.writes, written, strict=True)
    )
    return Outcome.delivered(
        remote_id=",".join(written), status_code=attempt.last_status, response_excerpt=summary
    )


def _write(write: Write, attempt: Attempt) -> str:
    """One write; returns the record's Id (or its external-id reference if Salesforce gave none)."""
    fields = dict(write.fields)
    ref = f"{write.object}/{write.external_id_field}/{write.external_id}"

    if write.operation == "create":
        if write.external_id_field and write.external_id is not None:
            fields.setdefault(write.external_id_field, write.external_id)
        fields = {**write.create_fields, **fields}
        _resolve_lookups(write, fields, attempt, new=True)
        return attempt.create(write.object, fields) or write.object

    if not write.external_id_field or write.external_id is None:
        raise PlanError(f"{write.operation} needs external_id_field and external_id")

    if write.operation == "update":
        record_id = attempt.get_id(write.object, write.external_id_field, write.external_id)
        if record_id is None:
            # Events may arrive out of order: the record this updates may be created a bit later.
            raise _RetryLater(f"{ref} does not exist yet", NOT_YET_RETRY_AFTER)
        _resolve_lookups(write, fields, attempt, new=False)
        if fields:
            attempt.update(write.object, record_id, fields)
        return record_id

    # upsert: fields that only a new record gets need to know whether it exists
    existing: str | None = None
    new: bool | None = None
    if write.create_fields or any(lk.when == "create" for lk in write.lookups):
        existing = attempt.get_id(write.object, write.external_id_field, write.external_id)
        new = existing is None
    if new:
        fields = {**write.create_fields, **fields}
    _resolve_lookups(write, fields, attempt, new=bool(new))
    if not fields:
        return existing or ref
    try:
        _, record_id, created = attempt.upsert(
            write.object, write.external_id_field, write.external_id, fields
        )
    except SalesforceMalformedRequest as exc:
        refused = {
            str(name)
            for e in _errors(exc.content)
            if e.get("errorCode") == "INVALID_FIELD_FOR_INSERT_UPDATE"
            for name in e.get("fields") or ()
        }
        if new and refused & set(write.create_fields):
            # Another event created the record between our read and this upsert, so the create-only
            # fields became an update. The next attempt reads it as existing.
            raise _RetryLater(f"{ref} was created concurrently", RACE_RETRY_AFTER) from None
        raise
    if new and not created:
        log.warning("salesforce: %s was created concurrently; create-only fields were applied", ref)
    return record_id or existing or ref


def _resolve_lookups(
    write: Write, fields: dict[str, object], attempt: Attempt, *, new: bool
) -> None:
    for lookup in write.lookups:
        if lookup.field in fields or (lookup.when == "create" and not new):
            continue
        try:
            found = attempt.find_contact_by_phone(lookup.phone)
        except SalesforceMalformedRequest as exc:
            # A search Salesforce cannot run must not keep the record from being written.
            log.warning("salesforce: contact search failed, %s left empty: %s", lookup.field, exc)
            continue
        if found:
            fields[lookup.field] = found
