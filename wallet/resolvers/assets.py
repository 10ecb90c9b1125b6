"""createAsset: a new currency and its Treasury (admin only)."""

from __future__ import annotations

from wallet import ledger
from wallet.db.engine import with_connection
from wallet.inputs import parse_asset_name, parse_int_range, parse_new_asset_slug
from wallet.resolvers.context import Context


async def create_asset(
    ctx: Context, *, slug: str, name: str, decimals: int
) -> tuple[ledger.AssetInfo, bool]:
    """The asset and whether this call made it; the same fields again return it (created:
    False), other fields for a taken slug are ASSET_ALREADY_EXISTS."""
    slug = parse_new_asset_slug(slug)
    name = parse_asset_name(name)
    decimals = parse_int_range(decimals, field="decimals", low=0, high=18)
    ctx.who().require("admin")
    asset, created = await with_connection(
        ctx.resources.engine,
        lambda conn: ledger.create_asset(conn, slug=slug, name=name, decimals=decimals),
    )
    ctx.resources.assets.remember([asset])
    return asset, created
