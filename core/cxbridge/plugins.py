"""Loading plugins and calling their hooks.

Plugins are discovered through the ``cxbridge`` entry-point group. One plugin that fails to import is
reported (name, distribution, error) and skipped, so it cannot take the host down; with
``CXBRIDGE_STRICT_PLUGINS=1`` it is fatal instead. :class:`Hooks` is the typed face of the hook relay that
the core calls.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast

import pluggy
from pluggy import HookImpl
from pydantic import BaseModel

from cxbridge import hookspecs
from cxbridge.destinations import Destination, DestinationType
from cxbridge.errors import PluginError
from cxbridge.events import Event
from cxbridge.outcome import Delivery, Outcome, Payload
from cxbridge.settings import Settings

__all__ = [
    "ENTRY_POINT_GROUP",
    "Hooks",
    "LoadFailure",
    "PluginInfo",
    "PluginManager",
    "load_plugins",
]

ENTRY_POINT_GROUP = "cxbridge"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    distribution: str
    error: str


@dataclass
class PluginInfo:
    """What ``cxbridge plugins`` shows about one loaded plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)
    destination_types: list[str] = field(default_factory=list)


class PluginManager:
    """Loads plugins and keeps the registry of destination types.

    :param strict: make a plugin that fails to load, or implements an unknown hook, an error.
    :param allow: if given, only entry points with these names load.
    :param deny: entry points with these names never load.
    """

    def __init__(
        self,
        *,
        strict: bool = False,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] = (),
    ) -> None:
        self.strict = strict
        self.allow = set(allow) if allow is not None else None
        self.deny = set(deny)
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._dists: dict[str, tuple[str, str]] = {}
        self.failures: list[LoadFailure] = []
        self.destination_types: dict[str, DestinationType] = {}
        self.hooks = Hooks(self._pm)

    # -- loading ---------------------------------------------------------------------------------

    def load_entrypoints(self) -> None:
        """Import and register every allowed plugin of the ``cxbridge`` entry-point group."""
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in self.deny or (self.allow is not None and ep.name not in self.allow):
                log.info("plugin %s skipped by the allow/deny lists", ep.name)
                continue
            self._load_one(ep)

    def _load_one(self, ep: EntryPoint) -> None:
        dist = ep.dist.name if ep.dist else "?"
        try:
            plugin = ep.load()
        except Exception as exc:
            failure = LoadFailure(ep.name, dist, f"{type(exc).__name__}: {exc}")
            if self.strict:
                raise PluginError(
                    f"plugin {ep.name!r} (distribution {dist}) failed to import: {failure.error}",
                    plugin=ep.name,
                ) from exc
            log.error(
                "plugin %r (distribution %s) failed to import and was skipped: %s\n%s",
                ep.name,
                dist,
                failure.error,
                traceback.format_exc(),
            )
            self.failures.append(failure)
            return
        self.register(plugin, name=ep.name)
        if ep.dist:
            self._dists[ep.name] = (ep.dist.name, ep.dist.version)

    def register(self, plugin: object, name: str) -> None:
        """Register a plugin object (a module, a class or an instance with hook implementations)."""
        self._pm.register(plugin, name=name)
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self._pm.unregister(name=name)
            raise PluginError(f"plugin {name!r} is not valid: {exc}", plugin=name) from exc
        self._collect_destination_types(name)

    def register_objects(self, plugins: Iterable[object]) -> None:
        """Register plugin objects given in code (embedders, tests), each under its ``__name__``,
        or its class name and position for an instance."""
        for index, plugin in enumerate(plugins):
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{index}"
            self.register(plugin, name=name)

    def _collect_destination_types(self, plugin_name: str) -> None:
        for impl in self._pm.hook.register_destinations.get_hookimpls():
            if impl.plugin_name != plugin_name:
                continue

            def register(
                name: str,
                options: type[BaseModel],
                *,
                description: str = "",
                ordering: str | None = None,
                **_future: Any,
            ) -> None:
                if name in self.destination_types:
                    other = self.destination_types[name].plugin
                    raise PluginError(
                        f"destination type {name!r} is registered by both {other!r} and "
                        f"{plugin_name!r}; deny one of them with CXBRIDGE_PLUGINS_DENY",
                        plugin=plugin_name,
                    )
                if not (isinstance(options, type) and issubclass(options, BaseModel)):
                    raise PluginError(
                        f"destination type {name!r}: options must be a pydantic model class",
                        plugin=plugin_name,
                    )
                if ordering not in (None, "call"):
                    raise PluginError(
                        f"destination type {name!r}: ordering must be 'call' or None, "
                        f"not {ordering!r}",
                        plugin=plugin_name,
                    )
                self.destination_types[name] = DestinationType(
                    name,
                    options,
                    description,
                    plugin=plugin_name,
                    ordering="call" if ordering == "call" else None,
                )

            impl.function(register=register)

    # -- introspection ---------------------------------------------------------------------------

    def plugin_names(self) -> list[str]:
        return sorted(name for name, _ in self._pm.list_name_plugin())

    def info(self) -> list[PluginInfo]:
        infos = []
        for name in self.plugin_names():
            plugin = self._pm.get_plugin(name)
            dist, version = self._dists.get(name, (None, None))
            hooks = sorted(h.name for h in self._pm.get_hookcallers(plugin) or [])
            types = sorted(t.name for t in self.destination_types.values() if t.plugin == name)
            infos.append(PluginInfo(name, dist, version, hooks, types))
        return infos


def _call_isolated(caller: pluggy.HookCaller, kwargs: dict[str, Any]) -> None:
    """Run every implementation of an observing hook; a failing one is logged, the rest still run.

    Wrappers (``wrapper=True``, and old-style ``hookwrapper=True``) run around the others in pluggy's
    order and receive what pluggy would give them: the list of the other implementations' non-None
    results (old-style: a ``pluggy.Result`` of it). Unlike pluggy, an exception is not passed on to
    the wrappers: it is logged with the plugin's name, as is a wrapper's own.
    """
    results: list[object] = []
    teardowns: list[tuple[HookImpl, Generator[object, object, object]]] = []
    for impl in reversed(caller.get_hookimpls()):  # pluggy's order: outermost wrapper first
        args = [kwargs[name] for name in impl.argnames]
        try:
            if impl.wrapper or impl.hookwrapper:
                wrapper = cast(Generator[object, object, object], impl.function(*args))
                next(wrapper)
                teardowns.append((impl, wrapper))
            else:
                result = impl.function(*args)
                if result is not None:
                    results.append(result)
        except Exception:
            log.exception("plugin %r failed in hook %s", impl.plugin_name, caller.name)
    for impl, wrapper in reversed(teardowns):
        try:
            wrapper.send(pluggy.Result(results, None) if impl.hookwrapper else results)
        except StopIteration:
            continue
        except Exception:
            log.exception("plugin %r failed in hook %s", impl.plugin_name, caller.name)
            continue
        wrapper.close()
        log.error(
            "plugin %r: its wrapper of hook %s yields more than once; it must yield exactly once",
            impl.plugin_name,
            caller.name,
        )


class Hooks:
    """Typed calls into the plugins. This is what the core uses; plugins never call it."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._hook = pm.hook

    def on_event(self, event: Event, tenant: str) -> None:
        _call_isolated(self._hook.on_event, {"event": event, "tenant": tenant})

    def transform(self, event: Event, destination: Destination) -> Payload | None:
        result: Payload | None = self._hook.transform(event=event, destination=destination)
        return result

    def deliver(self, delivery: Delivery, destination: Destination) -> Outcome | None:
        result: Outcome | None = self._hook.deliver(delivery=delivery, destination=destination)
        return result

    def on_delivery_failed(self, delivery: Delivery, destination: Destination, reason: str) -> None:
        _call_isolated(
            self._hook.on_delivery_failed,
            {"delivery": delivery, "destination": destination, "reason": reason},
        )

    def shutdown(self) -> None:
        _call_isolated(self._hook.shutdown, {})


def load_plugins(settings: Settings | None = None) -> PluginManager:
    """A plugin manager with every allowed entry-point plugin loaded, as the settings say."""
    settings = settings or Settings()
    manager = PluginManager(
        strict=settings.strict_plugins, allow=settings.plugins_allow, deny=settings.plugins_deny
    )
    manager.load_entrypoints()
    return manager
