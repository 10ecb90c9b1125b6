"""Assets (currencies): the list, and creating one with its Treasury."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wallet import ledger
from wallet.db.engine import with_connection
from wallet.http import ok, read_json_object
from wallet.inputs import parse_asset_name, parse_int_range, parse_new_asset_slug
from wallet.resources import principal, read, resources

MAX_DECIMALS = 18


def asset_view(asset: ledger.AssetInfo) -> dict[str, Any]:
    return {"slug": asset.slug, "name": asset.name, "decimals": asset.decimals}


async def list_assets(request: Request) -> Response:
    principal(request).require("read")
    found = await read(resources(request), ledger.assets)
    return ok([asset_view(a) for a in found])


async def post_asset(request: Request) -> Response:
    """201 for a new asset; the same fields again are 200 (so a retry is harmless, and needs no
    Idempotency-Key); other fields for an existing slug are ASSET_ALREADY_EXISTS."""
    principal(request).require("admin")
    res = resources(request)
    body = await read_json_object(request)
    slug = parse_new_asset_slug(body.get("slug"))
    name = parse_asset_name(body.get("name"))
    decimals = parse_int_range(body.get("decimals"), field="decimals", low=0, high=MAX_DECIMALS)
    asset, created = await with_connection(
        res.engine,
        lambda conn: ledger.create_asset(conn, slug=slug, name=name, decimals=decimals),
        retry=True,  # a retry of a create that committed finds the same fields: 200
    )
    res.assets.remember([asset])
    return ok(asset_view(asset), status=201 if created else 200)


routes = [
    Route("/api/assets", list_assets, methods=["GET"]),
    Route("/api/admin/assets", post_asset, methods=["POST"]),
]
