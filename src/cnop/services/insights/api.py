"""Insights routes."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from cnop.common.jsonio import ExactJSONResponse
from cnop.common.web.routing import ExactJSONRoute
from cnop.services.dependencies import CurrentUser, Insights
from cnop.services.insights.service import InsightEnvelope

router = APIRouter(prefix="/api/v1/insights", route_class=ExactJSONRoute, tags=["insights"])


@router.get("/portfolio", response_model=InsightEnvelope)
async def portfolio_insight(principal: CurrentUser, insights: Insights) -> Response:
    insight = await insights.portfolio_insight(principal.username)
    return ExactJSONResponse(InsightEnvelope(data=insight))
