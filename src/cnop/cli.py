"""`cnop`: serve the system, manage the store, audit the books, create users."""

from __future__ import annotations

import asyncio
import contextlib
import sys
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
app.add_typer(db_app, name="db")
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


@serve_app.callback()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
    store: StoreOption = None,
) -> None:
    """Serve every service behind the gateway, with the price feed and trigger engine."""
    if ctx.invoked_subcommand is not None:
        return
    from cnop.gateway.app import create_app
    from cnop.gateway.server import serve as serve_http

    settings = _settings(store)
    console.print(f"[bold]cnop[/] serving on http://{host}:{port} (store: {settings.store})")
    serve_http(create_app(settings), settings, host=host, port=port)


@serve_app.command("worker")
def serve_worker(store: StoreOption = None) -> None:
    """Run only the price feed and the trigger engine (no HTTP); several may run over one store."""
    from cnop.common.logging import configure_logging
    from cnop.container import build_container

    settings = _settings(store).model_copy(update={"trigger_engine": True})
    configure_logging(settings)

    async def run() -> None:
        container = build_container(settings)
        await container.store.create_tables()
        for startup in container.startup:
            await startup()
        console.print(f"[bold]cnop worker[/] running (store: {settings.store}, prices: {settings.price_source})")
        try:
            await asyncio.gather(*(task() for task in container.background))
        finally:
            await container.store.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


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
) -> None:
    """Make an Ed25519 key pair for signing tokens; prints its kid."""
    from cnop.common.security.token_manager import write_ed25519_key_pair

    try:
        kid = write_ed25519_key_pair(private_key, public_key)
    except FileExistsError:
        err_console.print(f"[red]{private_key} exists[/]: refusing to overwrite a key")
        raise typer.Exit(1) from None
    typer.echo(kid)


def main() -> None:
    app()
