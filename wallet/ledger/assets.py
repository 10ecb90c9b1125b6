"""Assets (currencies) and their Treasuries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, cast

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet.db.models import Asset
from wallet.errors import AssetAlreadyExists
from wallet.ledger.common import ASSET_COLUMNS, AssetInfo, asset_of

TREASURY_SHARDS: Final = 32


async def assets(conn: AsyncConnection) -> list[AssetInfo]:
    return [asset_of(r) for r in await conn.execute(select(*ASSET_COLUMNS).order_by(Asset.slug))]


async def assets_by_id(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, AssetInfo]:
    rows = await conn.execute(select(*ASSET_COLUMNS).where(Asset.id.in_(ids)))
    return {r.asset_id: asset_of(r) for r in rows}


async def assets_by_slug(conn: AsyncConnection, slugs: Sequence[str]) -> dict[str, AssetInfo]:
    rows = await conn.execute(select(*ASSET_COLUMNS).where(Asset.slug.in_(slugs)))
    return {r.slug: asset_of(r) for r in rows}


async def _ensure(
    conn: AsyncConnection, *, slug: str, name: str, decimals: int, shards: int
) -> tuple[int, bool]:
    """The asset's id, creating it and its Treasury shards if missing (and whether it did)."""
    created = await conn.scalar(
        text(
            "INSERT INTO assets (slug, name, decimals, treasury_shards)"
            " VALUES (:slug, :name, :decimals, :shards) ON CONFLICT (slug) DO NOTHING"
            " RETURNING id"
        ),
        {"slug": slug, "name": name, "decimals": decimals, "shards": shards},
    )
    asset_id = cast(int, created or await conn.scalar(select(Asset.id).where(Asset.slug == slug)))
    await conn.execute(
        text(
            "INSERT INTO accounts (asset_id, kind, shard)"
            " SELECT a.id, 'TREASURY', s FROM assets a, generate_series(0, a.treasury_shards - 1) s"
            " WHERE a.id = :asset_id ON CONFLICT DO NOTHING"
        ),
        {"asset_id": asset_id},
    )
    return asset_id, created is not None


async def ensure_asset(
    conn: AsyncConnection,
    *,
    slug: str,
    name: str,
    decimals: int = 0,
    shards: int = TREASURY_SHARDS,
) -> int:
    """Create an asset and its Treasury shards if missing; return the asset id."""
    asset_id, _ = await _ensure(conn, slug=slug, name=name, decimals=decimals, shards=shards)
    return asset_id


async def create_asset(
    conn: AsyncConnection, *, slug: str, name: str, decimals: int
) -> tuple[AssetInfo, bool]:
    """A new asset and its Treasury; the same fields again return it (created: False), other
    fields for an existing slug are ASSET_ALREADY_EXISTS. Concurrent creates of one slug agree:
    the INSERT waits for the other and then finds it."""
    asset_id, created = await _ensure(
        conn, slug=slug, name=name, decimals=decimals, shards=TREASURY_SHARDS
    )
    row = (await conn.execute(select(*ASSET_COLUMNS).where(Asset.id == asset_id))).one()
    found = asset_of(row)
    if (found.name, found.decimals) != (name, decimals):
        raise AssetAlreadyExists(
            f"Asset {slug!r} exists with other fields (name {found.name!r},"
            f" decimals {found.decimals})."
        )
    return found, created
