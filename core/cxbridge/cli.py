"""The ``cxbridge`` command. Exit codes: 0 ok, 1 invalid input or failure, 2 usage error."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from cxbridge import __version__
from cxbridge.errors import ConfigError, CxbridgeError
from cxbridge.settings import Settings, redact_url

if TYPE_CHECKING:
    from cxbridge.config import TenantConfig
    from cxbridge.destinations import Destination
    from cxbridge.store import Store

__all__ = ["main"]

log = logging.getLogger(__name__)
STATUSES = ("dead", "pending", "delivered")


def _settings(config: Path | None = None) -> Settings:
    settings = Settings()
    if config is not None:
        settings = settings.model_copy(update={"config_dir": config})
    return settings


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(1)


def explain(exc: BaseException) -> str:
    """One line saying what went wrong and how to fix it, for an error no command handled itself."""
    if isinstance(exc, ConfigError):
        lines = [str(problem) for problem in exc.problems]
        return "\n".join(
            [*lines, f"{len(lines)} problem(s) in the tenant files; fix them and retry"]
        )
    if isinstance(exc, CxbridgeError):
        return f"error: {exc}"
    try:
        settings = Settings()
        broker, store = redact_url(settings.broker_url), redact_url(settings.database_url)
    except Exception:  # the settings themselves are what is broken
        broker = store = "(unreadable settings)"
    module = type(exc).__module__.split(".")[0]
    if module == "redis":
        return f"error: cannot reach Redis at {broker}: {exc}; start it or fix CXBRIDGE_BROKER_URL"
    if module == "pika":
        detail = str(exc) or type(exc).__name__
        return f"error: cannot reach RabbitMQ at {broker}: {detail}; start it or fix CXBRIDGE_BROKER_URL"
    if module in {"sqlalchemy", "psycopg", "sqlite3"}:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return f"error: cannot use the store at {store}: {detail}; fix CXBRIDGE_DATABASE_URL"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"error: {exc.strerror or exc}{where}"
    return f"error: {type(exc).__name__}: {exc} (run with -vv to see where)"


class _Cli(click.Group):
    """Every error a command does not handle becomes one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as exc:
            log.debug("command failed", exc_info=True)
            _fail(explain(exc))


def _destination(tenants: Mapping[str, TenantConfig], tenant: str, name: str) -> Destination:
    """The named destination, or exit with one line naming the ones that exist."""
    if tenant not in tenants:
        _fail(f"no tenant {tenant!r}; known: {', '.join(sorted(tenants)) or 'none'}")
    destination = tenants[tenant].destinations.get(name)
    if destination is None:
        known = ", ".join(sorted(tenants[tenant].destinations)) or "none"
        _fail(f"tenant {tenant!r} has no destination {name!r}; known: {known}")
    return destination


def _store(settings: Settings) -> Store:
    """The store the settings name, ready to read (its tables are created if it is new)."""
    from cxbridge.store import Store

    store = Store(settings.database_url)
    store.migrate()
    return store


config_option = click.option(
    "--config",
    "-c",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of tenant YAML files (default: $CXBRIDGE_CONFIG_DIR or examples/tenants).",
)


@click.group(cls=_Cli)
@click.version_option(__version__, prog_name="cxbridge")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def cli(verbose: int) -> None:
    """Carry contact-center AI events into Salesforce, Zendesk and any HTTP endpoint."""
    from cxbridge.logs import configure_logging

    # Read directly, not through Settings: a bad CXBRIDGE_* value must still get a one-line error.
    log_format = os.environ.get("CXBRIDGE_LOG_FORMAT", "auto")
    level = max(logging.WARNING - 10 * verbose, logging.DEBUG)
    configure_logging(level, log_format if log_format in ("json", "text") else "auto")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path), required=False)
def validate(path: Path | None) -> None:
    """Check every tenant file of PATH (a folder, or one file); print each problem as
    file:line:col: message."""
    from cxbridge.config import load_config_dir, load_tenant
    from cxbridge.plugins import load_plugins

    settings = _settings(path if path is None or not path.is_file() else None)
    plugins = load_plugins(settings)
    try:
        if path is not None and path.is_file():
            tenant = load_tenant(
                path, plugins.destination_types, env_allow=settings.tenant_env_allow
            )
            tenants = {tenant.name: tenant}
        else:
            tenants = load_config_dir(
                settings.config_dir, plugins.destination_types, env_allow=settings.tenant_env_allow
            )
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        _fail(f"{len(exc.problems)} problem(s) found")
    if not tenants:
        _fail(
            f"{settings.config_dir}: no tenant files (*.yaml, *.yml) here; is it the right folder?"
        )
    for tenant in tenants.values():
        for warning in tenant.warnings:
            click.echo(str(warning), err=True)
        click.echo(
            f"{tenant.file}: tenant {tenant.name}, {len(tenant.destinations)} destination(s)"
        )
    click.echo("ok")


@cli.command()
@click.option("--tenant", "-t", required=True, help="Tenant name.")
@click.option("--destination", "-d", required=True, help="Destination name in the tenant file.")
@config_option
@click.argument("event_file", type=click.File("rb"))
def render(tenant: str, destination: str, config: Path | None, event_file: Any) -> None:
    """Print the body that DESTINATION would receive for the event in EVENT_FILE (- for stdin).

    Secrets are hidden: the value of every ${VAR} the tenant file reads shows as ${VAR}, other
    secret options (signing secrets, tokens, passwords) as [redacted]."""
    from cxbridge.config import load_config_dir
    from cxbridge.events import parse_event
    from cxbridge.plugins import load_plugins
    from cxbridge.routing import render_payload

    settings = _settings(config)
    plugins = load_plugins(settings)
    tenants = load_config_dir(
        settings.config_dir, plugins.destination_types, env_allow=settings.tenant_env_allow
    )
    event = parse_event(event_file.read(), max_bytes=settings.max_event_bytes)
    dest = _destination(tenants, tenant, destination)
    if not dest.accepts(event.type):
        click.echo(f"note: {destination} does not subscribe to {event.type}", err=True)
    try:
        payload = render_payload(plugins.hooks, event, dest)
    except CxbridgeError as exc:
        _fail(f"{tenant}/{destination}: {exc}")
    secrets = _secret_values(tenants[tenant].env_names, dest.options)
    if payload.meta:
        meta = json.dumps(payload.meta, sort_keys=True)
        click.echo(f"# {_redact(meta.encode(), secrets).decode()}", err=True)
    sys.stdout.buffer.write(_redact(payload.body, secrets) + b"\n")


def _secret_values(env_names: frozenset[str], options: Any) -> dict[str, str]:
    """What ``render`` hides, and what it shows instead: the value of every ``${VAR}`` the tenant
    file read, and every secret field (``SecretStr``) of the destination's options."""
    from pydantic import BaseModel, SecretStr

    hidden = {os.environ[name]: f"${{{name}}}" for name in env_names if name in os.environ}
    stack = [options]
    while stack:
        value = stack.pop()
        if isinstance(value, SecretStr):
            hidden.setdefault(value.get_secret_value(), "[redacted]")
        elif isinstance(value, BaseModel):
            stack.extend(getattr(value, name) for name in type(value).model_fields)
        elif isinstance(value, dict | list | tuple):
            stack.extend(value.values() if isinstance(value, dict) else value)
    return {secret: shown for secret, shown in hidden.items() if len(secret) >= 4}


def _redact(text: bytes, secrets: dict[str, str]) -> bytes:
    """``text`` with each secret replaced, as written and as JSON escapes it; longest first."""
    for secret in sorted(secrets, key=len, reverse=True):
        shown = secrets[secret].encode()
        for form in {
            secret,
            json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1],
        }:
            text = text.replace(form.encode("utf-8", "surrogatepass"), shown)
    return text


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List installed plugins: name, version, destination types and hooks."""
    from cxbridge.plugins import load_plugins

    manager = load_plugins(_settings())
    infos = manager.info()
    if as_json:
        data = {
            "plugins": [info.__dict__ for info in infos],
            "failures": [failure.__dict__ for failure in manager.failures],
        }
        click.echo(json.dumps(data, indent=2))
        return
    for info in infos:
        types = ", ".join(info.destination_types) or "-"
        click.echo(
            f"{info.name} {info.version or ''}  types: {types}  hooks: {', '.join(info.hooks)}"
        )
    for failure in manager.failures:
        click.echo(f"{failure.name} ({failure.distribution})  FAILED: {failure.error}", err=True)


@cli.command()
@click.option("--output", "-o", type=click.File("w"), default="-", help="Where to write it.")
def schema(output: Any) -> None:
    """Write the JSON Schema of a tenant file (for editor autocompletion)."""
    from cxbridge.config import tenant_json_schema
    from cxbridge.plugins import load_plugins

    manager = load_plugins(_settings())
    json.dump(tenant_json_schema(manager.destination_types), output, indent=2)
    output.write("\n")


@cli.command()
@click.option(
    "--threads",
    default=4,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Worker threads per process.",
)
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes.",
)
@click.option(
    "--no-scheduler",
    is_flag=True,
    help="Do not run a scheduler thread here (by default every process runs one; one is elected).",
)
@config_option
def worker(threads: int, processes: int, no_scheduler: bool, config: Path | None) -> None:
    """Run delivery workers against $CXBRIDGE_BROKER_URL and $CXBRIDGE_DATABASE_URL.

    With --processes N a supervisor restarts any worker process that dies. Exit codes: 0 after
    SIGTERM or SIGINT, 1 when the configuration, the store or the broker is not usable (one line
    on stderr says which)."""
    from cxbridge.workers import WorkerStartError, run_workers

    root = logging.getLogger()
    if root.level > logging.INFO:  # a long-running worker tells its story (-v: more)
        root.setLevel(logging.INFO)
    try:
        run_workers(
            _settings(config), processes=processes, threads=threads, scheduler=not no_scheduler
        )
    except WorkerStartError as exc:
        _fail(f"cxbridge worker: {exc}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8787, show_default=True, envvar="CXBRIDGE_PORT", help="Port to listen on."
)
@click.option("--no-workers", is_flag=True, help="Only serve; `cxbridge worker` processes deliver.")
@click.option("--threads", default=4, show_default=True, help="Worker threads in this process.")
@config_option
def serve(host: str, port: int, no_workers: bool, threads: int, config: Path | None) -> None:
    """Run the service: ingress, admin API, Copilot WebSocket and metrics (plus workers)."""
    from cxbridge.service import ServiceSettings, run_serve

    settings = ServiceSettings()
    if config is not None:
        settings = settings.model_copy(update={"config_dir": config})
    try:
        run_serve(settings, host=host, port=port, workers=not no_workers, threads=threads)
    except ConfigError as exc:
        _fail("\n".join(str(p) for p in exc.problems))
    except CxbridgeError as exc:
        _fail(str(exc))


@cli.command()
@click.option("--tenant", "-t", help="Only this tenant.")
@click.option("--destination", "-d", help="Only this destination.")
@click.option("--event-type", "-e", help="Only this event type.")
@click.option(
    "--status",
    default="dead",
    show_default=True,
    type=click.Choice(STATUSES),
    help="Which deliveries.",
)
@click.option("--since", type=click.DateTime(), help="Created at or after (UTC).")
@click.option("--until", type=click.DateTime(), help="Created before (UTC).")
@click.option("--id", "ids", multiple=True, help="One delivery id (repeatable).")
@click.option("--rerender", is_flag=True, help="Render the payload again from the stored event.")
@click.option("--dry-run", is_flag=True, help="Only count what would be replayed.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@config_option
def replay(
    tenant: str | None,
    destination: str | None,
    event_type: str | None,
    status: str,
    since: datetime | None,
    until: datetime | None,
    ids: tuple[str, ...],
    rerender: bool,
    dry_run: bool,
    yes: bool,
    config: Path | None,
) -> None:
    """Send matching deliveries again (by default: dead letters).

    Deliveries still pending (waiting for their next attempt, or being attempted right now) are
    skipped and counted: only dead or delivered ones are replayed."""
    from cxbridge.engine import Engine
    from cxbridge.replay import replay as run_replay
    from cxbridge.store import DeliveryFilter

    engine = Engine(_settings(config))
    where = DeliveryFilter(
        tenant=tenant,
        destination=destination,
        event_type=event_type,
        status=status,
        since=_utc(since),
        until=_utc(until),
        ids=list(ids) or None,
    )
    count = engine.store.count_deliveries(where)
    click.echo(f"{count} deliveries match")
    if dry_run or count == 0:
        return
    if not yes:
        click.confirm(f"Replay {count} deliveries?", abort=True)
    with click.progressbar(length=count, label="replaying") as bar:
        done = run_replay(engine, where, rerender=rerender, progress=bar.update)
    click.echo(str(done))


@cli.command()
@click.option("--tenant", "-t", required=True, help="Tenant name.")
@click.option("--destination", "-d", required=True, help="Destination name.")
@config_option
def enable(tenant: str, destination: str, config: Path | None) -> None:
    """Enable a destination that a 410 Gone disabled (replay its dead letters afterwards)."""
    from cxbridge.config import load_config_dir
    from cxbridge.plugins import load_plugins

    settings = _settings(config)
    tenants = load_config_dir(
        settings.config_dir,
        load_plugins(settings).destination_types,
        env_allow=settings.tenant_env_allow,
    )
    _destination(tenants, tenant, destination)
    store = _store(settings)
    try:
        if store.enable_destination(tenant, destination):
            click.echo(f"{tenant}/{destination} enabled")
        else:
            click.echo(f"{tenant}/{destination} was not disabled; nothing to do")
    finally:
        store.close()


json_option = click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
limit_option = click.option(
    "--limit",
    "-n",
    default=20,
    show_default=True,
    type=click.IntRange(1),
    help="At most this many.",
)


@cli.command()
@click.option("--tenant", "-t", help="Only this tenant.")
@click.option("--event-type", "-e", help="Only this event type.")
@click.option("--since", type=click.DateTime(), help="Received at or after (UTC).")
@limit_option
@json_option
def events(
    tenant: str | None, event_type: str | None, since: datetime | None, limit: int, as_json: bool
) -> None:
    """List the newest events and how many of their deliveries are in each status."""
    from cxbridge import console

    store = _store(_settings())
    try:
        rows = store.list_events(
            tenant=tenant, event_type=event_type, since=_utc(since), limit=limit
        )
    finally:
        store.close()
    if as_json:
        for row in rows:
            click.echo(json.dumps(console.event_dict(row)))
    elif rows:
        console.console().print(console.events_table(rows))
    else:
        click.echo("no events yet", err=True)


@cli.command()
@click.option("--tenant", "-t", help="Only this tenant.")
@click.option("--destination", "-d", help="Only this destination.")
@click.option("--event-type", "-e", help="Only this event type.")
@click.option("--status", type=click.Choice(STATUSES), help="Only this status (default: all).")
@click.option("--since", type=click.DateTime(), help="Created at or after (UTC).")
@click.option("--until", type=click.DateTime(), help="Created before (UTC).")
@limit_option
@json_option
@click.option("--follow", "-f", is_flag=True, help="Keep watching: one line per change.")
@click.option(
    "--for",
    "follow_for",
    type=click.FloatRange(min=0, min_open=True),
    help="With --follow: stop after this many seconds (default: until Ctrl-C).",
)
def deliveries(
    tenant: str | None,
    destination: str | None,
    event_type: str | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
    follow: bool,
    follow_for: float | None,
) -> None:
    """List the newest deliveries: status, attempts so far and the last error."""
    from cxbridge import console
    from cxbridge.store import DeliveryFilter

    where = DeliveryFilter(
        tenant=tenant,
        destination=destination,
        event_type=event_type,
        status=status,
        since=_utc(since),
        until=_utc(until),
    )
    store = _store(_settings())
    out = console.console()
    try:
        records = store.list_deliveries(where, limit, newest=True)
        if as_json:
            for record in records:
                click.echo(json.dumps(record.as_dict()))
        elif records:
            out.print(console.deliveries_table(records))
        elif not follow:
            click.echo("no deliveries match", err=True)
        if not follow:
            return
        seen = {r.id: (r.status, r.attempts) for r in records}
        deadline = None if follow_for is None else time.monotonic() + follow_for
        while deadline is None or time.monotonic() < deadline:
            polled = datetime.now(UTC)
            time.sleep(1.0)
            changed = store.list_deliveries(dataclasses.replace(where, updated_since=polled))
            for record in changed:
                state = (record.status, record.attempts)
                if seen.get(record.id) != state:
                    seen[record.id] = state
                    if as_json:
                        click.echo(json.dumps(record.as_dict()))
                    else:
                        out.print(console.delivery_line(record))
    finally:
        store.close()


@cli.command()
@click.argument("delivery_id")
@json_option
def show(delivery_id: str, as_json: bool) -> None:
    """Show one delivery: its state, every attempt with its error and response, its dead letters."""
    from cxbridge import console

    store = _store(_settings())
    try:
        record = store.get_delivery(delivery_id)
        if record is None:
            _fail(f"no delivery {delivery_id!r}; `cxbridge deliveries` lists them")
        attempts = store.attempts_of(delivery_id)
        dead = store.dead_letters_of(delivery_id)
    finally:
        store.close()
    if as_json:
        data = record.as_dict()
        data["attempts"] = [console.attempt_dict(a) for a in attempts]
        data["dead_letters"] = [
            {
                **d,
                "dead_at": console.when(d["dead_at"]),
                "replayed_at": console.when(d["replayed_at"]),
            }
            for d in dead
        ]
        click.echo(json.dumps(data, indent=2))
        return
    console.console().print(console.delivery_detail(record, attempts, dead))


@cli.command()
def secret() -> None:
    """Print a new signing secret (whsec_...) for a destination's `secrets` list."""
    from cxbridge.signing import generate_secret

    click.echo(generate_secret())


def _utc(value: datetime | None) -> datetime | None:
    from datetime import UTC

    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@cli.command()
@click.option(
    "--events",
    default=8,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="How many sample events to send.",
)
@config_option
def demo(events: int, config: Path | None) -> None:
    """Run the main job on the embedded default: sample events through the engine to a local sink."""
    from cxbridge.demo import run_demo

    sys.exit(run_demo(_settings(config), events=events))


# -- plugin authors --------------------------------------------------------------------------------


@cli.command("new-plugin")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to create the cxbridge-NAME folder.",
)
def new_plugin(name: str, directory: Path) -> None:
    """Write a working plugin package for destination type NAME, with its contract tests."""
    from cxbridge.scaffold import ScaffoldError
    from cxbridge.scaffold import new_plugin as write_plugin

    try:
        root = write_plugin(name, directory, cxbridge_version=__version__)
    except ScaffoldError as exc:
        _fail(str(exc))
        return
    click.echo(f"wrote {root}")
    click.echo(f"next: pip install -e '{root}[test]' && pytest {root}")


def main() -> None:
    cli(prog_name="cxbridge")
