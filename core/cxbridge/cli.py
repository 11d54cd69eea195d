"""The ``cxbridge`` command. Exit codes: 0 ok, 1 invalid input or failure, 2 usage error."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from cxbridge import __version__
from cxbridge.errors import ConfigError, CxbridgeError
from cxbridge.settings import Settings

__all__ = ["main"]


def _settings(config: Path | None = None) -> Settings:
    settings = Settings()
    if config is not None:
        settings = settings.model_copy(update={"config_dir": config})
    return settings


def _fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(1)


config_option = click.option(
    "--config",
    "-c",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of tenant YAML files (default: $CXBRIDGE_CONFIG_DIR or examples/tenants).",
)


@click.group()
@click.version_option(__version__, prog_name="cxbridge")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def cli(verbose: int) -> None:
    """Carry contact-center AI events into Salesforce, Zendesk and any HTTP endpoint."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path), required=False)
def validate(directory: Path | None) -> None:
    """Check every tenant file of DIRECTORY; print each problem as file:line:col: message."""
    from cxbridge.config import load_config_dir
    from cxbridge.plugins import load_plugins

    settings = _settings(directory)
    plugins = load_plugins(settings)
    try:
        tenants = load_config_dir(settings.config_dir, plugins.destination_types)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        _fail(f"{len(exc.problems)} problem(s) found")
    for tenant in tenants.values():
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
    """Print the exact body that DESTINATION would receive for the event in EVENT_FILE (- for stdin)."""
    from cxbridge.config import load_config_dir
    from cxbridge.events import parse_event
    from cxbridge.plugins import load_plugins
    from cxbridge.routing import render_payload

    settings = _settings(config)
    plugins = load_plugins(settings)
    try:
        tenants = load_config_dir(settings.config_dir, plugins.destination_types)
        event = parse_event(event_file.read())
    except ConfigError as exc:
        _fail("\n".join(str(p) for p in exc.problems))
        return
    except CxbridgeError as exc:
        _fail(str(exc))
        return
    if tenant not in tenants:
        _fail(f"no tenant {tenant!r}; known: {', '.join(sorted(tenants)) or 'none'}")
    dest = tenants[tenant].destinations.get(destination)
    if dest is None:
        known = ", ".join(sorted(tenants[tenant].destinations)) or "none"
        _fail(f"tenant {tenant!r} has no destination {destination!r}; known: {known}")
        return
    if not dest.accepts(event.type):
        click.echo(f"note: {destination} does not subscribe to {event.type}", err=True)
    try:
        payload = render_payload(plugins.hooks, event, dest)
    except CxbridgeError as exc:
        _fail(f"{tenant}/{destination}: {exc}")
        return
    if payload.meta:
        click.echo(f"# {json.dumps(payload.meta, sort_keys=True)}", err=True)
    sys.stdout.buffer.write(payload.body + b"\n")


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
@click.option("--threads", default=4, show_default=True, help="Worker threads per process.")
@click.option("--processes", default=1, show_default=True, help="Worker processes.")
@click.option("--no-scheduler", is_flag=True, help="Do not run the due/lost scheduler here.")
@config_option
def worker(threads: int, processes: int, no_scheduler: bool, config: Path | None) -> None:
    """Run delivery workers against $CXBRIDGE_BROKER_URL and $CXBRIDGE_DATABASE_URL."""
    from cxbridge.workers import run_workers

    run_workers(_settings(config), processes=processes, threads=threads, scheduler=not no_scheduler)


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
@click.option("--status", default="dead", show_default=True, help="dead, pending or delivered.")
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
    """Send matching deliveries again (by default: dead letters)."""
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
    click.echo(f"{done} deliveries enqueued again")


@cli.command()
@click.option("--tenant", "-t", required=True, help="Tenant name.")
@click.option("--destination", "-d", required=True, help="Destination name.")
def enable(tenant: str, destination: str) -> None:
    """Enable a destination that a 410 Gone disabled (replay its dead letters afterwards)."""
    from cxbridge.store import Store

    store = Store(_settings().database_url)
    store.migrate()
    if store.enable_destination(tenant, destination):
        click.echo(f"{tenant}/{destination} enabled")
    else:
        click.echo(f"{tenant}/{destination} was not disabled")
    store.close()


def _utc(value: datetime | None) -> datetime | None:
    from datetime import UTC

    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@cli.command()
@click.option("--events", default=8, show_default=True, help="How many sample events to send.")
@config_option
def demo(events: int, config: Path | None) -> None:
    """Run the main job on the embedded default: sample events through the engine to a local sink."""
    from cxbridge.demo import run_demo

    sys.exit(run_demo(_settings(config), events=events))


def main() -> None:
    cli(prog_name="cxbridge")
