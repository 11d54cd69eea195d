"""The outbox of ``on_delivery_failed``: every dead letter's hooks run at least once, even across a crash.

The dead letter row is the outbox entry: it is written in the same transaction as the dead status
(:meth:`Store.finish_attempt`, :meth:`Store.kill`, :meth:`Store.add_event` for template errors) with
its hooks not done. Right after that commit the writing process claims the row, calls the hooks and
marks the row done. A process that dies in between leaves the row undone; the scheduler of any process
claims such rows once they are :data:`CLAIM_SECONDS` old (or their claim has run out) and calls the
hooks then.

A claim is one conditional UPDATE, so two dispatchers never both take a row. A hook still running when
its claim runs out may be called a second time, and a crash after the hooks ran but before the row was
marked calls them again: hence "at least once", with ``delivery.id`` to de-duplicate on.

A hook implementation that raises is logged and the row still counts as done (the implementations are
isolated, see :mod:`cxbridge.plugins`): dispatching again would repeat the implementations that
succeeded, and a broken one would fail forever. Only a dispatch that never finished (the process died,
or a ``BaseException`` such as ``SystemExit`` escaped) is dispatched again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from cxbridge.destinations import Destination
from cxbridge.outcome import Delivery
from cxbridge.plugins import Hooks
from cxbridge.store import DeadLetter, DeliveryRecord, Store

__all__ = ["CLAIM_SECONDS", "DeadLetterOutbox"]

log = logging.getLogger(__name__)
# How long a dispatcher holds a dead letter while its hooks run; also how old an undone row must be
# before the scheduler takes it over from the process that wrote it.
CLAIM_SECONDS = 30.0


class DeadLetterOutbox:
    """Calls ``on_delivery_failed`` for the dead letters in the store.

    :param destination_of: the configured destination of a delivery, ``None`` if it was removed.
    """

    def __init__(
        self,
        store: Store,
        hooks: Hooks,
        destination_of: Callable[[DeliveryRecord], Destination | None],
        *,
        claim_seconds: float = CLAIM_SECONDS,
        batch: int = 100,
    ) -> None:
        self.store = store
        self.hooks = hooks
        self.destination_of = destination_of
        self.claim_seconds = claim_seconds
        self.batch = batch

    def dispatch(self, delivery_ids: Sequence[str]) -> int:
        """Run the hooks of these deliveries' undone dead letters, just after the commit that wrote
        them. Returns how many dead letters it dispatched. Never raises a store error: the dead
        status is committed, and what this could not do the scheduler does later."""
        if not delivery_ids:
            return 0
        try:
            return self._run(
                self.store.claim_dead_letters(
                    claim_seconds=self.claim_seconds,
                    delivery_ids=delivery_ids,
                    limit=max(self.batch, len(delivery_ids)),
                )
            )
        except Exception:
            log.exception(
                "on_delivery_failed of %s left to the scheduler (in %.0f s)",
                ", ".join(delivery_ids),
                self.claim_seconds,
            )
            return 0

    def dispatch_left_over(self) -> int:
        """One scheduler pass: run the hooks of dead letters left undone for ``claim_seconds`` (their
        writer died before or while calling them). Returns how many it dispatched."""
        return self._run(
            self.store.claim_dead_letters(
                claim_seconds=self.claim_seconds, older_than=self.claim_seconds, limit=self.batch
            )
        )

    def _run(self, letters: Sequence[DeadLetter]) -> int:
        for letter in letters:
            record = self.store.get_delivery(letter.delivery_id)
            if record is None:  # purged meanwhile: nothing left to describe
                log.warning("dead letter %s: delivery %s is gone", letter.id, letter.delivery_id)
            else:
                destination = self.destination_of(record) or Destination(
                    record.tenant, record.destination, "unknown", frozenset(), options=None
                )
                self.hooks.on_delivery_failed(_delivery_of(record), destination, letter.reason)
            self.store.finish_dead_letter(letter.id)
        return len(letters)


def _delivery_of(record: DeliveryRecord) -> Delivery:
    """The delivery as of its last attempt, as the hooks see it."""
    return Delivery(
        record.id,
        record.tenant,
        record.destination,
        record.event_id,
        record.event_type,
        record.attempts,
        record.payload,
        record.first_attempt_at,
    )
