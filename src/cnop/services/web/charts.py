"""Small charts drawn on the server as inline SVG: a sparkline per asset, the allocation ring.

Coordinates are pixels, so they may go through float; amounts shown as text never do.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from math import cos, pi, sin

from markupsafe import Markup, escape

# A palette that keeps 3:1 contrast against the white card background.
PALETTE = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bc4c00", "#0b7285", "#bf3989", "#57606a")


def sparkline(prices: Sequence[Decimal], *, width: int = 120, height: int = 32, label: str = "") -> Markup:
    """A polyline of `prices` scaled into the box; flat when the prices do not move."""
    if len(prices) < 2:
        return Markup(  # noqa: S704 - numbers and escaped text only
            f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(label)}: not enough history yet"></svg>'
        )
    low, high = min(prices), max(prices)
    spread = float(high - low) or 1.0
    step = width / (len(prices) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (float(p - low) / spread) * (height - 4):.1f}" for i, p in enumerate(prices)
    )
    trend = "up" if prices[-1] > prices[0] else "down" if prices[-1] < prices[0] else "flat"
    return Markup(  # noqa: S704 - numbers and escaped text only
        f'<svg class="spark spark-{trend}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(label)}"><polyline fill="none" stroke-width="1.5" points="{points}"/></svg>'
    )


def allocation_ring(slices: Sequence[tuple[str, Decimal]], *, size: int = 180) -> Markup:
    """A ring of (label, percentage) slices, largest first; the legend is rendered beside it."""
    radius = size / 2 - 14
    centre = size / 2
    parts = [
        f'<svg class="ring" width="{size}" height="{size}" viewBox="0 0 {size} {size}" role="img" '
        f'aria-labelledby="ring-title"><title id="ring-title">Allocation of your portfolio</title>'
    ]
    total = sum((share for _, share in slices), Decimal(0))
    if total <= 0:
        parts.append(
            f'<circle cx="{centre}" cy="{centre}" r="{radius}" fill="none" stroke="#d0d7de" stroke-width="22"/>'
        )
    else:
        start = -pi / 2
        for index, (name, share) in enumerate(slices):
            fraction = float(share / total)
            if fraction <= 0:
                continue
            colour_ = colour(index, name)
            if fraction >= 0.9999:
                parts.append(
                    f'<circle cx="{centre}" cy="{centre}" r="{radius}" fill="none" stroke="{colour_}" '
                    f'stroke-width="22"><title>{escape(name)}</title></circle>'
                )
                break
            end = start + fraction * 2 * pi
            large = 1 if fraction > 0.5 else 0
            x1, y1 = centre + radius * cos(start), centre + radius * sin(start)
            x2, y2 = centre + radius * cos(end), centre + radius * sin(end)
            parts.append(
                f'<path d="M {x1:.2f} {y1:.2f} A {radius} {radius} 0 {large} 1 {x2:.2f} {y2:.2f}" fill="none" '
                f'stroke="{colour_}" stroke-width="22"><title>{escape(name)}</title></path>'
            )
            start = end
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - numbers, palette colours and escaped text only


CASH_COLOUR = "#6e7781"


def colour(index: int, name: str = "") -> str:
    """The slice colour: cash is always grey, assets take the palette in order."""
    return CASH_COLOUR if name == "Cash" else PALETTE[index % len(PALETTE)]
