"""`cnop`: serve the system, manage the store, audit the books, create users."""

from __future__ import annotations

import asyncio
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cnop.common.config import Settings
from cnop.common.exceptions import CnopError

app = typer.Typer(help="Cloud Native Order Processor", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Store management", no_args_is_help=True)
user_app = typer.Typer(help="User management", no_args_is_help=True)
serve_app = typer.Typer(help="Serve the system (all services behind the gateway)", invoke_without_command=True)
keys_app = typer.Typer(help="Token signing keys (the cloud shape)", no_args_is_help=True)
dev_app = typer.Typer(help="Run shapes on this machine for development", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(dev_app, name="dev")
app.add_typer(keys_app, name="keys")
app.add_typer(user_app, name="user")
app.add_typer(serve_app, name="serve")

console = Console()
err_console = Console(stderr=True)

StoreOption = Annotated[str | None, typer.Option("--store", help="sqlite:///PATH or dynamodb (default: CNOP_STORE)")]


def _settings(store: str | None = None) -> Settings:
    settings = Settings()
    if store:
        settings = settings.model_copy(update={"store": store})
    return settings


DrainOption = Annotated[
    float | None,
    typer.Option("--drain-seconds", help="On SIGTERM, answer not-ready this long before stopping (default: config)"),
]


@serve_app.callback()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
    store: StoreOption = None,
    drain_seconds: DrainOption = None,
) -> None:
    """Serve every service behind the gateway, with the price feed and trigger engine (the local shape).

    `cnop serve <role>` runs one role of the cloud shape instead.
    """
    if ctx.invoked_subcommand is not None:
        return
    from cnop.common.shared.redis import ping_or_exit
    from cnop.gateway.app import create_app
    from cnop.serving import run_app

    settings = _settings(store)
    ping_or_exit(settings)
    console.print(f"[bold]cnop[/] serving on http://{host}:{port} (store: {settings.store})")
    drain = settings.shutdown_drain_seconds if drain_seconds is None else drain_seconds
    run_app(create_app(settings), host=host, port=port, drain_seconds=drain, settings=settings)


def _serve_role(name: str, host: str, port: int, store: str | None, drain_seconds: float | None) -> None:
    from cnop.common.shared.redis import ping_or_exit
    from cnop.gateway.cloud import create_gateway_app
    from cnop.roles import GATEWAY, create_role_app, role_named
    from cnop.serving import run_app

    settings = _settings(store)
    ping_or_exit(settings)
    app = create_gateway_app(settings) if name == GATEWAY else create_role_app(role_named(name), settings)
    console.print(f"[bold]cnop {name}[/] serving on http://{host}:{port} (store: {settings.store})")
    drain = settings.shutdown_drain_seconds if drain_seconds is None else drain_seconds
    run_app(app, host=host, port=port, drain_seconds=drain, settings=settings)


def _add_role_command(name: str, summary: str) -> None:
    def command(
        host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port (health and metrics, and the role's routes)")] = 8080,
        store: StoreOption = None,
        drain_seconds: DrainOption = None,
    ) -> None:
        _serve_role(name, host, port, store, drain_seconds)

    command.__doc__ = f"The {name} role of the cloud shape: {summary}."
    serve_app.command(name)(command)


def _add_role_commands() -> None:
    # The roles are listed once, in `cnop.roles`; each becomes `cnop serve <role>`.
    from cnop.roles import GATEWAY, ROLES

    _add_role_command(GATEWAY, "the only public entry; routes /api/v1/... to the services")
    for role in ROLES:
        _add_role_command(role.name, role.summary)


_add_role_commands()


@db_app.command("init")
def db_init(store: StoreOption = None) -> None:
    """Create the tables (idempotent) and load the asset catalogue."""
    from cnop.container import build_container

    async def run() -> None:
        container = build_container(_settings(store))
        await container.store.create_tables()
        for startup in container.startup:
            await startup()
        await container.store.close()

    asyncio.run(run())
    console.print("[green]store ready[/]")


@db_app.command("migrate")
def db_migrate(
    store: StoreOption = None,
    rerun: Annotated[
        bool, typer.Option("--rerun", help="Run every migration again, not only those not applied yet")
    ] = False,
) -> None:
    """Bring items written by an older version to the current format (each step once per store)."""
    from cnop.common.clock import SystemClock
    from cnop.common.database.factory import open_store
    from cnop.common.migrations import migrate

    settings = _settings(store)

    async def run() -> None:
        s = open_store(settings.store, settings)
        try:
            await s.create_tables()
            applied = await migrate(s, settings, SystemClock(), rerun=rerun)
        finally:
            await s.close()
        for step in applied:
            console.print(f"[green]applied[/] {step.name}: {step.summary} ({step.changed} changed)")
        if not applied:
            console.print("nothing to migrate")

    asyncio.run(run())
    console.print("[green]store up to date[/]")


@app.command("audit")
def audit(store: StoreOption = None) -> None:
    """Check the ledger invariants; exit 1 with a report on any violation."""
    from cnop.audit import run_audit
    from cnop.common.database.factory import open_store

    settings = _settings(store)

    async def run() -> int:
        s = open_store(settings.store, settings)
        try:
            await s.create_tables()
            report = await run_audit(s)
        finally:
            await s.close()
        table = Table(title="cnop audit")
        table.add_column("fact")
        table.add_column("value")
        table.add_row("users checked", str(report.checked_users))
        for name, value in report.facts.items():
            table.add_row(name, value)
        table.add_row("violations", str(len(report.violations)))
        console.print(table)
        for violation in report.violations:
            console.print(f"[red]violation[/] {violation}")
        return 0 if report.ok else 1

    code = asyncio.run(run())
    if code == 0:
        console.print("[green]all invariants hold[/]")
    raise typer.Exit(code)


@user_app.command("create")
def user_create(
    username: str,
    email: Annotated[str, typer.Option("--email")],
    admin: Annotated[bool, typer.Option("--admin", help="Give the user the admin role")] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    first_name: Annotated[str, typer.Option("--first-name")] = "Admin",
    last_name: Annotated[str, typer.Option("--last-name")] = "User",
    store: StoreOption = None,
) -> None:
    """Create a user (optionally an admin); the password is read from standard input."""
    from cnop.common.entities.user import UserRole
    from cnop.container import build_container
    from cnop.services.user.schemas import RegisterRequest

    if not password_stdin:
        err_console.print("pass --password-stdin and the password on standard input")
        raise typer.Exit(2)
    password = sys.stdin.readline().rstrip("\r\n")
    try:
        request = RegisterRequest(
            username=username, email=email, password=password, first_name=first_name, last_name=last_name
        )
    except ValidationError as exc:
        for error in exc.errors():
            err_console.print(f"[red]{'.'.join(str(p) for p in error['loc'])}[/]: {error['msg']}")
        raise typer.Exit(2) from None

    async def run() -> None:
        container = build_container(_settings(store))
        try:
            await container.store.create_tables()
            role = UserRole.ADMIN if admin else UserRole.CUSTOMER
            await container.accounts.register(request, role=role)
        finally:
            await container.store.close()

    try:
        asyncio.run(run())
    except CnopError as exc:
        err_console.print(f"[red]{exc.code}[/]: {exc.detail}")
        raise typer.Exit(1) from None
    console.print(f"[green]created[/] {request.username} ({'admin' if admin else 'customer'})")


@keys_app.command("generate")
def keys_generate(
    private_key: Annotated[Path, typer.Option("--private-key", help="Where to write the private key (PEM)")],
    public_key: Annotated[Path, typer.Option("--public-key", help="Where to write the public key (PEM)")],
    exist_ok: Annotated[
        bool, typer.Option("--exist-ok", help="If the private key exists, keep it and print its kid")
    ] = False,
) -> None:
    """Make an Ed25519 key pair for signing tokens; prints its kid. An existing key is never overwritten."""
    from cnop.common.security.token_manager import existing_key_id, write_ed25519_key_pair

    try:
        kid = write_ed25519_key_pair(private_key, public_key)
    except FileExistsError:
        if not exist_ok:
            err_console.print(f"[red]{private_key} exists[/]: refusing to overwrite a key")
            raise typer.Exit(1) from None
        kid = existing_key_id(private_key)
    typer.echo(kid)


@app.command("probe")
def probe(
    port: Annotated[int, typer.Option(help="Port of the local server")] = 8080,
    path: Annotated[str, typer.Option(help="Path to ask")] = "/health",
    timeout: Annotated[float, typer.Option(help="Seconds to wait")] = 3.0,
) -> None:
    """Exit 0 if http://127.0.0.1:PORT/PATH answers 200, else 1 (a container HEALTHCHECK)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError):
        ok = False
    raise typer.Exit(0 if ok else 1)


@dev_app.command("cloud")
def dev_cloud(
    workdir: Annotated[Path, typer.Option(help="Keys, logs and (for SQLite) the store live here")] = Path(".cloud"),
    base_port: Annotated[int, typer.Option(help="Gateways from here; services at +10.., workers at +20..")] = 8100,
    gateways: Annotated[int, typer.Option(min=1, max=9)] = 2,
    workers: Annotated[int, typer.Option(min=0, max=9)] = 2,
    dynamodb_local: Annotated[
        bool, typer.Option(help="Start DynamoDB Local (installed by `make deps-dynamodb`); else the SQLite file")
    ] = True,
    redis: Annotated[
        bool, typer.Option(help="Start redis-server for the shared state (--no-redis: each process keeps its own)")
    ] = True,
) -> None:
    """The cloud shape as processes on 127.0.0.1: DynamoDB Local, Redis, every service, gateways; Ctrl-C stops."""
    import shutil
    import time

    from cnop.dev import CloudOnOneMachine, Helper, start_dynamodb_local, start_redis

    workdir = workdir.resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    helpers: list[Helper] = []
    extra: dict[str, str] = {}
    try:
        store = f"sqlite:///{workdir / 'cloud.db'}"
        if dynamodb_local:
            ddb = start_dynamodb_local(
                base_port + 30, Path(".cache/dynamodb-local").resolve(), workdir / "logs" / "dynamodb.log"
            )
            helpers.append(ddb)
            store = "dynamodb"
            extra = {"AWS_ENDPOINT_URL_DYNAMODB": ddb.url, "AWS_REGION": "us-east-1",
                     "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}  # fmt: skip
        redis_url = None
        if redis:
            if shutil.which("redis-server") is None:
                err_console.print("redis-server is not installed: pass --no-redis, or install it")
                raise typer.Exit(1)
            helpers.append(start_redis(base_port + 31, workdir / "logs" / "redis.log"))
            redis_url = helpers[-1].url
        shape = CloudOnOneMachine(workdir, store, base_port, gateways, workers, redis_url, extra)
        shape.start()
        try:
            table = Table(title="cnop cloud shape (Ctrl-C stops)")
            table.add_column("process")
            table.add_column("address")
            for helper in helpers:
                table.add_row(helper.name, helper.url)
            for member in shape.members:
                table.add_row(member.name, member.url)
            console.print(table)
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            console.print("stopping")
        finally:
            shape.stop()
    finally:
        for helper in reversed(helpers):
            helper.stop()


def main() -> None:
    app()
