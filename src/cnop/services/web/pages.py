"""The web app's pages: each route reads the session, calls the services' use cases, renders.

No route calls the JSON API over HTTP: pages and API share the same services (each route asks
for the ones it uses, as the API's routes do), so a page shows exactly what the API would
answer. Every POST checks the CSRF token first; every page with account data needs the session
cookie (else: to the log-in page and back).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cnop.common.config import Settings
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.database.store import InvalidCursor, Page
from cnop.common.entities.balance import TransactionType
from cnop.common.entities.holding import AssetTransaction
from cnop.common.entities.order import ASSET_ID_PATTERN, ORDER_ID_PATTERN, OrderCreate, OrderStatus, OrderType
from cnop.common.exceptions import CnopError, ValidationFailed
from cnop.services.admin_api import PriceSet, set_manual_price
from cnop.services.dependencies import (
    Accounts,
    AppClock,
    AppSettings,
    Assets,
    Balances,
    Holdings,
    Insights,
    Inventory,
    Money,
    Orders,
    Portfolios,
    Prices,
    PriceSourceDep,
    Trading,
    Users,
    client_ip,
)
from cnop.services.inventory.service import InventoryService
from cnop.services.order.api import order_filter
from cnop.services.order.preview import preview_order
from cnop.services.user.login import Logins
from cnop.services.user.schemas import (
    USERNAME_PATTERN,
    AmountRequest,
    LoginRequest,
    PasswordChangeRequest,
    ProfileUpdateRequest,
    RegisterRequest,
)
from cnop.services.user.service import AccountService, MoneyService, Principal
from cnop.services.web.rendering import (
    CsrfRefused,
    PageRedirect,
    field_errors,
    is_htmx,
    login_redirect,
    non_empty,
    page,
    read_form,
    redirect,
    refusal,
    safe_next,
)
from cnop.services.web.session import clear_session, csrf_ok, session_principal, set_session

router = APIRouter(include_in_schema=False)
AssetId = Annotated[str, Path(pattern=ASSET_ID_PATTERN)]
OrderId = Annotated[str, Path(pattern=ORDER_ID_PATTERN)]

ORDER_KINDS = ("market", "limit", "stop_loss", "stop_limit", "take_profit", "trailing_stop")
TICKET_FIELDS = (
    "side",
    "kind",
    "quantity",
    "price",
    "stop_price",
    "trail_by",
    "trail_value",
    "time_in_force",
    "expires_at",
)
NOTICES = {
    "welcome": "Welcome! Your account is ready; deposit some cash to start trading.",
    "deposited": "Deposit received.",
    "withdrawn": "Withdrawal sent.",
    "placed": "Order placed.",
    "cancelled": "Order cancelled; its reservation was released.",
    "profile": "Profile saved.",
    "password": "Password changed. Every other session was signed out.",
    "logged_out": "You are logged out.",
    "price": "Price set.",
    "asset": "Asset updated.",
}
SPARK_POINTS = 48
LEDGER_CSV_MAX_ROWS = 10_000


# --- session helpers ------------------------------------------------------------------------------


async def signed_in(request: Request, accounts: AccountService) -> Principal:
    principal = await session_principal(request, accounts)
    if principal is None:
        raise login_redirect(request)
    return principal


async def admin_only(request: Request, accounts: AccountService) -> Principal:
    principal = await signed_in(request, accounts)
    if not principal.is_admin:
        raise PageRedirect("/dashboard")
    return principal


async def posted(request: Request) -> dict[str, str]:
    """The form of a state-changing request, after the CSRF check."""
    form = await read_form(request)
    if not csrf_ok(request, form):
        raise CsrfRefused()
    return form


def notice(request: Request) -> str | None:
    return NOTICES.get(request.query_params.get("notice", ""))


T = TypeVar("T")


async def page_or_first(fetch: Callable[[str | None], Awaitable[Page[T]]], cursor: str | None) -> Page[T]:
    """The page at `cursor`; the first page when the cursor is not one we made (a stale link)."""
    try:
        return await fetch(cursor)
    except InvalidCursor:
        return await fetch(None)


async def asset_scales(assets: AssetDAO) -> dict[str, int]:
    return {asset.asset_id: asset.scale for asset in await assets.all_assets()}


# --- markets (public) -------------------------------------------------------------------------------


async def _market_rows(
    assets: AssetDAO, inventory: InventoryService, prices: Prices, clock: AppClock, category: str | None, search: str
) -> list[dict[str, Any]]:
    needle = search.strip().lower()
    since = clock.now() - timedelta(hours=24)
    rows = []
    for asset in await assets.all_assets():
        if not asset.is_active:
            continue
        if category and (asset.category or "").lower() != category.lower():
            continue
        if needle and needle not in asset.asset_id.lower() and needle not in asset.name.lower():
            continue
        data = inventory.asset_data(asset)
        history = prices.history(asset.asset_id, since=since, interval_seconds=1800)
        rows.append({"asset": data, "spark": [t.price for t in history][-SPARK_POINTS:]})
    return rows


@router.get("/")
async def markets(
    request: Request,
    accounts: Accounts,
    assets: Assets,
    inventory: Inventory,
    prices: Prices,
    clock: AppClock,
    category: Annotated[str | None, Query(max_length=50)] = None,
    q: Annotated[str, Query(max_length=50)] = "",
) -> Response:
    principal = await session_principal(request, accounts)
    category = category or None
    rows = await _market_rows(assets, inventory, prices, clock, category, q)
    categories = sorted({a.category for a in await assets.all_assets() if a.category and a.is_active})
    template = (
        "_market_rows.html"
        if is_htmx(request) and request.headers.get("hx-target") == "market-rows"
        else "markets.html"
    )
    return page(
        request,
        template,
        principal=principal,
        rows=rows,
        categories=categories,
        category=category,
        q=q,
        stream_assets=",".join(r["asset"].asset_id for r in rows),
        notice=notice(request),
    )


# --- sign up, log in, log out -------------------------------------------------------------------------

SIGNUP_FIELDS = ("username", "email", "password", "first_name", "last_name", "phone", "date_of_birth")


@router.get("/signup")
async def signup_page(request: Request, accounts: Accounts) -> Response:
    if await session_principal(request, accounts) is not None:
        return redirect(request, "/dashboard")
    return page(request, "signup.html", values={}, errors={})


@router.post("/signup")
async def signup(request: Request, accounts: Accounts, logins: Logins) -> Response:
    form = await posted(request)
    values = {name: form.get(name, "") for name in SIGNUP_FIELDS if name != "password"}
    body: dict[str, Any] = non_empty(form, SIGNUP_FIELDS)
    if "password" in form:
        body["password"] = form["password"]  # never altered before hashing
    body["marketing_emails_consent"] = form.get("marketing_emails_consent") == "on"
    try:
        registration = RegisterRequest.model_validate(body)
        await accounts.register(registration, ip=client_ip(request))
        token = await logins.login(registration.username, registration.password, client_ip(request))
    except ValidationError as exc:
        return page(request, "signup.html", status_code=422, values=values, errors=field_errors(exc, SIGNUP_FIELDS))
    except CnopError as exc:
        errors = _account_errors(exc, SIGNUP_FIELDS)
        return page(request, "signup.html", status_code=exc.status, values=values, errors=errors)
    response = redirect(request, "/dashboard?notice=welcome")
    set_session(response, request, token)
    return response


def _account_errors(exc: CnopError, fields: tuple[str, ...]) -> dict[str, str]:
    if isinstance(exc, ValidationFailed):
        return field_errors(exc, fields)
    where = {"username_taken": "username", "email_taken": "email", "weak_password": "password"}.get(exc.code)
    if where in fields:
        return {where: exc.detail}
    return {"_form": f"{refusal(exc)['title']}: {exc.detail}"}


@router.get("/login")
async def login_page(request: Request, accounts: Accounts, next: str | None = None) -> Response:
    if await session_principal(request, accounts) is not None:
        return redirect(request, safe_next(next))
    return page(request, "login.html", values={}, errors={}, next=safe_next(next), notice=notice(request))


@router.post("/login")
async def login(request: Request, logins: Logins) -> Response:
    form = await posted(request)
    target = safe_next(form.get("next"))
    values = {"username": form.get("username", "")}
    try:
        credentials = LoginRequest.model_validate(
            {"username": form.get("username", ""), "password": form.get("password", "")}
        )
        token = await logins.login(credentials.username, credentials.password, client_ip(request))
    except ValidationError as exc:
        errors = field_errors(exc, ("username", "password"))
        return page(request, "login.html", status_code=422, values=values, errors=errors, next=target, notice=None)
    except CnopError as exc:
        errors = {
            "_form": f"{refusal(exc)['title']}. {exc.detail}" if exc.code == "login_blocked" else refusal(exc)["title"]
        }
        refused = page(
            request, "login.html", status_code=exc.status, values=values, errors=errors, next=target, notice=None
        )
        if exc.code == "login_blocked" and "retry_after" in exc.extra:
            refused.headers["Retry-After"] = str(exc.extra["retry_after"])
        return refused
    response = redirect(request, target)
    set_session(response, request, token)
    return response


@router.post("/logout")
async def logout(request: Request, accounts: Accounts) -> Response:
    await posted(request)
    principal = await session_principal(request, accounts)
    if principal is not None:
        await accounts.logout(principal, ip=client_ip(request))
    response = redirect(request, "/login?notice=logged_out")
    clear_session(response, request)
    return response


# --- dashboard ---------------------------------------------------------------------------------------


@router.get("/dashboard")
async def dashboard(
    request: Request,
    accounts: Accounts,
    portfolios: Portfolios,
    insights: Insights,
    balances: Balances,
    orders: Orders,
    assets: Assets,
) -> Response:
    principal = await signed_in(request, accounts)
    portfolio = await portfolios.portfolio(principal.username)
    insight = await insights.portfolio_insight(principal.username)
    ledger = await balances.get_user_transactions(principal.username, limit=8)
    recent = await orders.get_orders_by_user(principal.username, limit=5)
    scales = await asset_scales(assets)
    slices: list[tuple[str, Decimal]] = [
        (row.asset_id, row.percentage) for row in portfolio.assets if row.percentage is not None and row.percentage > 0
    ]
    if portfolio.total_value > 0:
        cash_share = (portfolio.cash.total / portfolio.total_value * 100).quantize(Decimal("0.01"))
        slices.append(("Cash", cash_share))
    cost = sum((row.cost_basis for row in portfolio.assets), Decimal(0))
    pnl = sum((row.unrealized_pnl or Decimal(0) for row in portfolio.assets), Decimal(0))
    return page(
        request,
        "dashboard.html",
        principal=principal,
        portfolio=portfolio,
        insight=insight,
        ledger=ledger.items,
        orders=recent.items,
        slices=slices,
        total_cost=cost,
        total_pnl=pnl,
        scales=scales,
        stream_assets=",".join(row.asset_id for row in portfolio.assets),
        notice=notice(request),
    )


# --- asset page and order ticket -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssetView:
    """The asset page: its detail and live price, the order ticket, the caller's holding and cash."""

    assets: AssetDAO
    inventory: InventoryService
    holdings: HoldingDAO
    balances: BalanceDAO

    async def render(
        self,
        request: Request,
        principal: Principal | None,
        asset_id: str,
        *,
        ticket: dict[str, str],
        errors: dict[str, str],
        problem: dict[str, str] | None,
        status_code: int = 200,
    ) -> Response:
        asset = await self.assets.get_asset(asset_id)
        detail = self.inventory.asset_detail(asset)
        holding = None
        balance = None
        if principal is not None:
            holding = await self.holdings.get_holding(principal.username, asset_id)
            balance = await self.balances.get_balance(principal.username)
        return page(
            request,
            "asset.html",
            principal=principal,
            asset=detail,
            holding=holding,
            balance=balance,
            ticket=ticket,
            errors=errors,
            problem=problem,
            kinds=ORDER_KINDS,
            stream_assets=asset_id,
            status_code=status_code,
            notice=notice(request),
        )


async def asset_view(assets: Assets, inventory: Inventory, holdings: Holdings, balances: Balances) -> AssetView:
    return AssetView(assets, inventory, holdings, balances)


AssetViewDep = Annotated[AssetView, Depends(asset_view)]


@router.get("/assets/{asset_id}")
async def asset_page(request: Request, asset_id: AssetId, accounts: Accounts, view: AssetViewDep) -> Response:
    principal = await session_principal(request, accounts)
    asset = await view.assets.find_asset(asset_id.upper())
    if asset is None:
        return page(
            request,
            "error.html",
            principal=principal,
            status_code=404,
            title="No such asset",
            message=f"There is no asset {asset_id.upper()}.",
        )
    return await view.render(request, principal, asset.asset_id, ticket={}, errors={}, problem=None)


def order_request(asset_id: str, form: dict[str, str]) -> OrderCreate:
    """The API's order body from the ticket: only the fields the chosen type uses."""
    side = form.get("side", "buy")
    kind = form.get("kind", "market")
    if side not in ("buy", "sell"):
        raise ValidationFailed.field("side", "must be buy or sell")
    if kind not in ORDER_KINDS:
        raise ValidationFailed.field("kind", "is not an order type")
    body: dict[str, Any] = {
        "order_type": f"{kind}_{side}",
        "asset_id": asset_id,
        "quantity": form.get("quantity", "").strip(),
    }
    if kind in ("limit", "stop_limit"):
        body["price"] = form.get("price", "").strip()
    elif kind == "market" and form.get("price", "").strip():
        body["price"] = form["price"].strip()  # a protection bound
    if kind in ("stop_loss", "stop_limit", "take_profit"):
        body["stop_price"] = form.get("stop_price", "").strip()
    if kind == "trailing_stop":
        key = "trail_percent" if form.get("trail_by") == "percent" else "trail_amount"
        body[key] = form.get("trail_value", "").strip()
    tif = form.get("time_in_force", "gtc") or "gtc"
    body["time_in_force"] = tif
    if tif == "gtd":
        expires = form.get("expires_at", "").strip()
        if not expires:
            raise ValidationFailed.field("expires_at", "is required for good-till-date orders")
        try:
            moment = datetime.fromisoformat(expires)
        except ValueError as exc:
            raise ValidationFailed.field("expires_at", "must be a date and time") from exc
        body["expires_at"] = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    for name in ("quantity", "price", "stop_price", "trail_amount", "trail_percent"):
        if name in body and body[name] == "":
            raise ValidationFailed.field(_ticket_field(name), "is required")
    try:
        return OrderCreate.model_validate(body)
    except ValidationError as exc:
        errors = [{"field": _ticket_field(e["field"]), "message": e["message"]} for e in field_list(exc)]
        raise ValidationFailed("The order is not valid", errors=errors) from exc


def _ticket_field(name: str) -> str:
    return "trail_value" if name in ("trail_amount", "trail_percent") else name


def field_list(exc: ValidationError) -> list[dict[str, str]]:
    from cnop.common.web.problems import validation_errors

    return validation_errors(exc.errors())


@router.post("/assets/{asset_id}/preview")
async def order_preview(request: Request, asset_id: AssetId, accounts: Accounts, trading: Trading) -> Response:
    principal = await signed_in(request, accounts)
    form = await posted(request)
    try:
        order = order_request(asset_id.upper(), form)
    except ValidationFailed as exc:
        return page(
            request, "_preview.html", principal=principal, preview=None, errors=field_errors(exc, TICKET_FIELDS)
        )
    preview = await preview_order(trading, principal.username, order)
    return page(
        request,
        "_preview.html",
        principal=principal,
        preview=preview,
        problem=refusal(preview.refusal) if preview.refusal else None,
        errors={},
    )


@router.post("/assets/{asset_id}/orders")
async def place_order(
    request: Request, asset_id: AssetId, accounts: Accounts, trading: Trading, view: AssetViewDep
) -> Response:
    principal = await signed_in(request, accounts)
    form = await posted(request)
    asset_id = asset_id.upper()
    ticket = {name: form.get(name, "") for name in TICKET_FIELDS}
    problem = None
    try:
        order = order_request(asset_id, form)
        placed = await trading.place_order(principal.username, order)
    except ValidationFailed as exc:
        errors, status_code = field_errors(exc, TICKET_FIELDS), 422
    except CnopError as exc:
        errors, problem, status_code = {}, refusal(exc), exc.status
    else:
        return redirect(request, f"/orders?notice=placed&highlight={placed.order_id}")
    return await view.render(
        request, principal, asset_id, ticket=ticket, errors=errors, problem=problem, status_code=status_code
    )


# --- orders -----------------------------------------------------------------------------------------------

STATUS_CHOICES = ("all", "completed", "cancelled", "expired", "failed")


@dataclass(frozen=True, slots=True)
class OrdersView:
    """The orders page: the open orders, then the history under the filters."""

    orders: OrderDAO
    assets: AssetDAO

    async def context(
        self, principal: Principal, status: str, asset_id: str, order_type: str, cursor: str | None
    ) -> dict[str, Any]:
        open_orders = await self.orders.get_queued_orders(principal.username)
        # History is the closed orders (open ones are listed above it), or those of one final status.
        wanted_status: Any = OrderStatus(status) if status in STATUS_CHOICES and status != "all" else "closed"
        kind = OrderType(order_type) if order_type in {t.value for t in OrderType} else None
        asset = asset_id.upper() if asset_id and asset_id.isalnum() else None
        matches = order_filter(asset, kind, wanted_status)
        history = await page_or_first(
            lambda at: self.orders.get_orders_by_user(principal.username, limit=25, cursor=at, where=matches),
            cursor,
        )
        query = {"status": status, "asset_id": asset or "", "order_type": kind.value if kind else ""}
        return {
            "open_orders": open_orders,
            "history": history.items,
            "next_cursor": history.next_cursor,
            "filters": query,
            "status_choices": STATUS_CHOICES,
            "order_types": [t.value for t in OrderType],
            "scales": await asset_scales(self.assets),
            "stream_assets": ",".join(sorted({o.asset_id for o in open_orders})),
        }


async def orders_view(orders: Orders, assets: Assets) -> OrdersView:
    return OrdersView(orders, assets)


OrdersViewDep = Annotated[OrdersView, Depends(orders_view)]


@router.get("/orders")
async def orders_page(
    request: Request,
    accounts: Accounts,
    view: OrdersViewDep,
    status: Annotated[str, Query(max_length=20)] = "all",
    asset_id: Annotated[str, Query(max_length=10)] = "",
    order_type: Annotated[str, Query(max_length=30)] = "",
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> Response:
    principal = await signed_in(request, accounts)
    context = await view.context(principal, status, asset_id, order_type, cursor)
    template = (
        "_orders_live.html" if is_htmx(request) and request.headers.get("hx-target") == "orders-live" else "orders.html"
    )
    return page(
        request,
        template,
        principal=principal,
        notice=notice(request),
        highlight=request.query_params.get("highlight"),
        **context,
    )


@router.post("/orders/{order_id}/cancel")
async def cancel_order(
    request: Request, order_id: OrderId, accounts: Accounts, trading: Trading, view: OrdersViewDep
) -> Response:
    principal = await signed_in(request, accounts)
    await posted(request)
    try:
        await trading.cancel_order(principal.username, order_id)
    except CnopError as exc:
        context = await view.context(principal, "all", "", "", None)
        return page(
            request,
            "orders.html",
            principal=principal,
            status_code=exc.status,
            problem=refusal(exc),
            notice=None,
            highlight=None,
            **context,
        )
    return redirect(request, "/orders?notice=cancelled")


# --- ledger --------------------------------------------------------------------------------------------


def _ledger_type(value: str) -> TransactionType | None:
    return TransactionType(value) if value in {t.value for t in TransactionType} else None


@router.get("/ledger")
async def ledger_page(
    request: Request,
    accounts: Accounts,
    balances: Balances,
    holdings: Holdings,
    assets: Assets,
    transaction_type: Annotated[str, Query(max_length=30)] = "",
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    asset_id: Annotated[str, Query(max_length=10)] = "",
    asset_cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> Response:
    principal = await signed_in(request, accounts)
    kind = _ledger_type(transaction_type)
    entries = await page_or_first(
        lambda at: balances.get_user_transactions(principal.username, limit=25, cursor=at, transaction_type=kind),
        cursor,
    )
    held_assets = sorted(h.asset_id for h in await holdings.get_holdings(principal.username))
    chosen = asset_id.upper() if asset_id.upper() in held_assets else (held_assets[0] if held_assets else "")
    asset_rows: list[AssetTransaction] = []
    asset_next = None
    if chosen:
        asset_page_ = await page_or_first(
            lambda at: holdings.get_asset_transactions(principal.username, chosen, limit=25, cursor=at), asset_cursor
        )
        asset_rows = asset_page_.items
        asset_next = asset_page_.next_cursor
    return page(
        request,
        "ledger.html",
        principal=principal,
        entries=entries.items,
        next_cursor=entries.next_cursor,
        transaction_type=kind.value if kind else "",
        types=[t.value for t in TransactionType],
        held_assets=held_assets,
        chosen_asset=chosen,
        asset_rows=asset_rows,
        asset_next=asset_next,
        scales=await asset_scales(assets),
    )


@router.get("/ledger.csv")
async def ledger_csv(
    request: Request,
    accounts: Accounts,
    balances: Balances,
    clock: AppClock,
    transaction_type: Annotated[str, Query(max_length=30)] = "",
) -> Response:
    principal = await signed_in(request, accounts)
    kind = _ledger_type(transaction_type)

    async def rows() -> AsyncIterator[str]:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(
            ["transaction_id", "created_at", "transaction_type", "amount", "status", "order_id", "description"]
        )
        cursor = None
        written = 0
        while written < LEDGER_CSV_MAX_ROWS:
            batch = await balances.get_user_transactions(
                principal.username, limit=100, cursor=cursor, transaction_type=kind
            )
            for entry in batch.items:
                writer.writerow(
                    [
                        entry.transaction_id,
                        entry.created_at.isoformat().replace("+00:00", "Z"),
                        entry.transaction_type.value,
                        format(entry.amount, "f"),
                        entry.status.value,
                        entry.order_id or "",
                        entry.description or "",
                    ]
                )
                written += 1
            yield out.getvalue()
            out.seek(0)
            out.truncate()
            cursor = batch.next_cursor
            if cursor is None:
                break

    stamp = clock.now().strftime("%Y%m%d")
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="ledger-{principal.username}-{stamp}.csv"',
            "Cache-Control": "no-store",
        },
    )


# --- cash ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CashView:
    """The cash page: the balance, today's use of the daily limits, the deposit and withdraw forms."""

    balances: BalanceDAO
    money: MoneyService

    async def render(
        self,
        request: Request,
        principal: Principal,
        *,
        errors: dict[str, dict[str, str]],
        values: dict[str, str],
        status_code: int = 200,
    ) -> Response:
        balance = await self.balances.get_balance(principal.username)
        usage = await self.money.daily_usage(principal.username)
        return page(
            request,
            "cash.html",
            principal=principal,
            balance=balance,
            usage=usage,
            errors=errors,
            values=values,
            problem=None,
            status_code=status_code,
            notice=notice(request),
        )


async def cash_view(balances: Balances, money: Money) -> CashView:
    return CashView(balances, money)


CashViewDep = Annotated[CashView, Depends(cash_view)]


@router.get("/cash")
async def cash_page(request: Request, accounts: Accounts, view: CashViewDep) -> Response:
    principal = await signed_in(request, accounts)
    return await view.render(request, principal, errors={}, values={})


@router.post("/cash/{kind}")
async def move_cash(request: Request, kind: str, accounts: Accounts, view: CashViewDep) -> Response:
    if kind not in ("deposit", "withdraw"):
        return page(request, "error.html", status_code=404, title="Not found", message="There is no such page.")
    principal = await signed_in(request, accounts)
    form = await posted(request)
    amount_text = form.get("amount", "").strip()
    try:
        if not amount_text:
            raise ValidationFailed.field("amount", "is required")
        body = AmountRequest.model_validate({"amount": amount_text})
        move = view.money.deposit if kind == "deposit" else view.money.withdraw
        await move(principal.username, body.amount)
    except (ValidationError, ValidationFailed) as exc:
        errors, status_code = field_errors(exc, ("amount",)), 422
    except CnopError as exc:
        errors, status_code = {"amount": f"{refusal(exc)['title']}: {exc.detail}"}, exc.status
    else:
        return redirect(request, f"/cash?notice={'deposited' if kind == 'deposit' else 'withdrawn'}")
    return await view.render(
        request, principal, errors={kind: errors}, values={kind: amount_text}, status_code=status_code
    )


# --- profile and password --------------------------------------------------------------------------------

PROFILE_FIELDS = ("first_name", "last_name", "email", "phone", "date_of_birth")


@router.get("/profile")
async def profile_page(request: Request, accounts: Accounts) -> Response:
    principal = await signed_in(request, accounts)
    return _profile_view(request, principal, values=_profile_values(principal), errors={}, password_errors={})


def _profile_values(principal: Principal) -> dict[str, str]:
    user = principal.user
    return {
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "phone": user.phone or "",
        "date_of_birth": user.date_of_birth.isoformat() if user.date_of_birth else "",
        "marketing_emails_consent": "on" if user.marketing_emails_consent else "",
    }


def _profile_view(
    request: Request,
    principal: Principal,
    *,
    values: dict[str, str],
    errors: dict[str, str],
    password_errors: dict[str, str],
    status_code: int = 200,
) -> Response:
    return page(
        request,
        "profile.html",
        principal=principal,
        values=values,
        errors=errors,
        password_errors=password_errors,
        status_code=status_code,
        notice=notice(request),
    )


@router.post("/profile")
async def update_profile(request: Request, accounts: Accounts) -> Response:
    principal = await signed_in(request, accounts)
    form = await posted(request)
    values = {name: form.get(name, "") for name in PROFILE_FIELDS}
    values["marketing_emails_consent"] = "on" if form.get("marketing_emails_consent") == "on" else ""
    body: dict[str, Any] = {name: form.get(name, "") for name in ("first_name", "last_name", "email")}
    body["phone"] = form.get("phone", "").strip() or None
    body["date_of_birth"] = form.get("date_of_birth", "").strip() or None
    body["marketing_emails_consent"] = form.get("marketing_emails_consent") == "on"
    try:
        update = ProfileUpdateRequest.model_validate(body)
        await accounts.update_profile(principal, update)
    except ValidationError as exc:
        errors, status_code = field_errors(exc, PROFILE_FIELDS), 422
    except CnopError as exc:
        errors, status_code = _account_errors(exc, PROFILE_FIELDS), exc.status
    else:
        return redirect(request, "/profile?notice=profile")
    return _profile_view(request, principal, values=values, errors=errors, password_errors={}, status_code=status_code)


@router.post("/profile/password")
async def change_password(request: Request, accounts: Accounts, logins: Logins) -> Response:
    principal = await signed_in(request, accounts)
    form = await posted(request)
    fields = ("current_password", "new_password", "confirm_password")
    errors: dict[str, str] = {}
    if form.get("new_password", "") != form.get("confirm_password", ""):
        errors["confirm_password"] = "does not match the new password"
    try:
        change = PasswordChangeRequest.model_validate(
            {"current_password": form.get("current_password", ""), "new_password": form.get("new_password", "")}
        )
        if errors:
            raise ValidationFailed(
                "The passwords do not match", errors=[{"field": k, "message": v} for k, v in errors.items()]
            )
        token = await logins.change_password(principal, change, client_ip(request))
    except (ValidationError, ValidationFailed) as exc:
        errors, status_code = {**field_errors(exc, fields), **errors}, 422
    except CnopError as exc:
        where = "current_password" if exc.code == "invalid_credentials" else "new_password"
        errors, status_code = {where: exc.detail}, exc.status
    else:
        response = redirect(request, "/profile?notice=password")
        set_session(response, request, token)
        return response
    values = _profile_values(principal)
    return _profile_view(request, principal, values=values, errors={}, password_errors=errors, status_code=status_code)


# --- admin -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdminView:
    """The admin page: every asset with its state and price, and (manual source) the price form."""

    assets: AssetDAO
    inventory: InventoryService
    settings: Settings

    async def render(
        self,
        request: Request,
        principal: Principal,
        *,
        errors: dict[str, str],
        values: dict[str, str],
        status_code: int = 200,
    ) -> Response:
        rows = [self.inventory.asset_data(a) for a in await self.assets.all_assets()]
        return page(
            request,
            "admin/assets.html",
            principal=principal,
            assets=rows,
            manual=self.settings.price_source == "manual",
            errors=errors,
            values=values,
            status_code=status_code,
            notice=notice(request),
        )


async def admin_view(assets: Assets, inventory: Inventory, settings: AppSettings) -> AdminView:
    return AdminView(assets, inventory, settings)


AdminViewDep = Annotated[AdminView, Depends(admin_view)]


@router.get("/admin")
async def admin_page(request: Request, accounts: Accounts, view: AdminViewDep) -> Response:
    principal = await admin_only(request, accounts)
    return await view.render(request, principal, errors={}, values={})


@router.post("/admin/assets/{asset_id}/{action}")
async def admin_asset(
    request: Request, asset_id: AssetId, action: str, accounts: Accounts, view: AdminViewDep
) -> Response:
    principal = await admin_only(request, accounts)
    await posted(request)
    if action not in ("activate", "deactivate"):
        return page(
            request,
            "error.html",
            principal=principal,
            status_code=404,
            title="Not found",
            message="There is no such action.",
        )
    try:
        if action == "activate":
            await view.assets.activate_asset(asset_id.upper())
        else:
            await view.assets.deactivate_asset(asset_id.upper())
    except CnopError as exc:
        return await view.render(request, principal, errors={"_form": exc.detail}, values={}, status_code=exc.status)
    return redirect(request, "/admin?notice=asset")


@router.post("/admin/prices")
async def admin_price(request: Request, accounts: Accounts, view: AdminViewDep, source: PriceSourceDep) -> Response:
    principal = await admin_only(request, accounts)
    form = await posted(request)
    values = {"asset_id": form.get("asset_id", ""), "price": form.get("price", "")}
    try:
        body = PriceSet.model_validate({"asset_id": values["asset_id"].strip(), "price": values["price"].strip()})
        await set_manual_price(source, view.assets, body)
    except ValidationError as exc:
        errors, status_code = field_errors(exc, ("asset_id", "price")), 422
    except CnopError as exc:
        errors, status_code = {"asset_id" if exc.code == "asset_not_found" else "_form": exc.detail}, exc.status
    else:
        return redirect(request, "/admin?notice=price")
    return await view.render(request, principal, errors=errors, values=values, status_code=status_code)


@router.get("/admin/ledger")
async def admin_ledger(
    request: Request,
    accounts: Accounts,
    users: Users,
    balances: Balances,
    username: Annotated[str, Query(max_length=30)] = "",
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> Response:
    principal = await admin_only(request, accounts)
    entries: list[Any] = []
    next_cursor = None
    error = None
    name = username.strip().lower()
    if name:
        if not USERNAME_PATTERN.match(name) or await users.find_user(name) is None:
            error = "No user of that name"
        else:
            found = await page_or_first(lambda at: balances.get_user_transactions(name, limit=50, cursor=at), cursor)
            entries = found.items
            next_cursor = found.next_cursor
    return page(
        request,
        "admin/ledger.html",
        principal=principal,
        username=name,
        entries=entries,
        next_cursor=next_cursor,
        error=error,
        status_code=404 if error else 200,
    )
