"""Mounting the web app on the gateway: pages, static files, npm assets, its two exceptions."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from cnop.common.config import Settings
from cnop.services.user.service import AccountService
from cnop.services.web.pages import router
from cnop.services.web.rendering import CsrfRefused, PageRedirect, assets_dir, page, redirect
from cnop.services.web.session import session_principal

STATIC = Path(__file__).parent / "static"
OWN_FILES = {"app.css": "text/css", "app.js": "text/javascript", "chart.js": "text/javascript"}
# The npm files the pages load, by the name they are served under (node_modules-relative path).
VENDOR_FILES = {
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "lightweight-charts.js": "lightweight-charts/dist/lightweight-charts.standalone.production.js",
}
CACHE = "public, max-age=3600"


class WebComponents(Protocol):
    """What mounting the web app needs of the app's components (the composition root has them)."""

    settings: Settings
    accounts: AccountService


def install_web(app: FastAPI, components: WebComponents) -> None:
    vendor_root = assets_dir(components.settings.web_assets_dir)
    accounts = components.accounts

    async def own_static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in OWN_FILES:
            return Response("Not found", status_code=404, media_type="text/plain")
        return FileResponse(STATIC / name, media_type=OWN_FILES[name], headers={"Cache-Control": CACHE})

    async def vendor_static(request: Request) -> Response:
        name = request.path_params["name"]
        relative = VENDOR_FILES.get(name)
        if relative is None or vendor_root is None or not (vendor_root / relative).is_file():
            return Response(
                "Not found (run `make install` for the web assets)", status_code=404, media_type="text/plain"
            )
        return FileResponse(vendor_root / relative, media_type="text/javascript", headers={"Cache-Control": CACHE})

    async def on_redirect(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageRedirect)
        return redirect(request, exc.location)

    async def on_csrf(request: Request, exc: Exception) -> Response:
        principal = await session_principal(request, accounts)
        return page(
            request,
            "error.html",
            principal=principal,
            status_code=403,
            title="Request refused",
            message="The form's security token was missing or wrong (CSRF check). Reload the page and try again.",
        )

    app.router.routes.extend(router.routes)
    app.router.routes.append(Route("/static/{name}", own_static, methods=["GET"], include_in_schema=False))
    app.router.routes.append(Route("/static/vendor/{name}", vendor_static, methods=["GET"], include_in_schema=False))
    app.add_exception_handler(PageRedirect, on_redirect)
    app.add_exception_handler(CsrfRefused, on_csrf)
