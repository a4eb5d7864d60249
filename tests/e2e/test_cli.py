"""The `cnop` command line: db init, user create, audit (exit codes and reports)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner

from cnop.cli import app
from cnop.common.database import keys
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import Update

runner = CliRunner()


def test_db_init_user_create_and_audit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    result = runner.invoke(app, ["db", "init", "--store", url])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        ["user", "create", "root_admin", "--email", "root@example.com", "--admin", "--password-stdin", "--store", url],
        input="Adm1n!Password-x\n",
    )
    assert result.exit_code == 0, result.output
    assert "created root_admin (admin)" in result.output
    again = runner.invoke(
        app,
        ["user", "create", "root_admin", "--email", "other@example.com", "--password-stdin", "--store", url],
        input="Adm1n!Password-x\n",
    )
    assert again.exit_code == 1 and "username_taken" in again.output
    weak = runner.invoke(
        app,
        ["user", "create", "someone_x", "--email", "s@example.com", "--password-stdin", "--store", url],
        input="weak\n",
    )
    assert weak.exit_code == 2
    result = runner.invoke(app, ["audit", "--store", url])
    assert result.exit_code == 0, result.output
    assert "all invariants hold" in result.output

    async def corrupt() -> None:
        store = SQLiteStore(f"{tmp_path}/cli.db")
        await store.transact([Update(keys.USERS, keys.balance_key("root_admin"), add={"available": Decimal("5.00")})])
        await store.close()

    asyncio.run(corrupt())
    result = runner.invoke(app, ["audit", "--store", url])
    assert result.exit_code == 1
    assert "root_admin: ledger sums to available 0" in result.output


def test_db_migrate_runs_each_migration_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    assert runner.invoke(app, ["db", "init", "--store", url]).exit_code == 0
    first = runner.invoke(app, ["db", "migrate", "--store", url])
    assert first.exit_code == 0, first.output
    assert "applied 0001-ledger-type-index" in first.output and "(0 changed)" in first.output
    again = runner.invoke(app, ["db", "migrate", "--store", url])
    assert again.exit_code == 0 and "nothing to migrate" in again.output
    rerun = runner.invoke(app, ["db", "migrate", "--rerun", "--store", url])
    assert rerun.exit_code == 0 and "0001-ledger-type-index" in rerun.output
