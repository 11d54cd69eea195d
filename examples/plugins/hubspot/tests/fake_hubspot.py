"""A fake of the HubSpot CRM v3 objects API on 127.0.0.1, over the kit's FakeTarget: create and
search calls and notes by one property."""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

from cxbridge.testing import FakeTarget, Recorded, Reply

OBJECTS = ("calls", "notes")


class FakeHubSpot(FakeTarget):
    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in OBJECTS}
        self._ids = itertools.count(5001)
        self._store = threading.Lock()
        for name in OBJECTS:
            self.reply(f"/crm/v3/objects/{name}", self._creator(name))
            self.reply(f"/crm/v3/objects/{name}/search", self._searcher(name))

    def count(self) -> int:
        with self._store:
            return sum(len(records) for records in self.objects.values())

    def _creator(self, name: str) -> Any:
        def create(request: Recorded) -> Reply:
            properties = json.loads(request.body)["properties"]
            with self._store:
                record_id = str(next(self._ids))
                self.objects[name][record_id] = properties
            return Reply.json({"id": record_id, "properties": properties}, status=201)

        return create

    def _searcher(self, name: str) -> Any:
        def search(request: Recorded) -> Reply:
            (wanted,) = json.loads(request.body)["filterGroups"][0]["filters"]
            with self._store:
                hits = [
                    {"id": record_id}
                    for record_id, props in self.objects[name].items()
                    if props.get(wanted["propertyName"]) == wanted["value"]
                ]
            return Reply.json({"total": len(hits), "results": hits[:1]})

        return search
