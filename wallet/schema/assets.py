"""createAsset: a new currency and its Treasury (admin scope)."""

from __future__ import annotations

from typing import Annotated, cast

import strawberry

from wallet.errors import WalletError
from wallet.resolvers import assets as resolve
from wallet.schema.errors import AssetAlreadyExists, Failure, Forbidden, InvalidInput, failure
from wallet.schema.types import Asset, Ctx


@strawberry.type
class CreateAssetSuccess:
    asset: Asset
    created: bool = strawberry.field(description="False: it existed already, with these fields.")


CreateAssetResult = Annotated[
    CreateAssetSuccess | AssetAlreadyExists | InvalidInput | Forbidden,
    strawberry.union("CreateAssetResult"),
]
_FAILURES: tuple[type[Failure], ...] = (AssetAlreadyExists, InvalidInput, Forbidden)


@strawberry.input
class CreateAssetInput:
    slug: str = strawberry.field(description="^[a-z][a-z0-9_]{0,63}$")
    name: str = strawberry.field(description="1 to 100 characters.")
    decimals: int = strawberry.field(description="0 to 18: how many minor units make one.")


async def create_asset(info: Ctx, input: CreateAssetInput) -> CreateAssetResult:
    """Create an asset and its Treasury; the same fields again return it."""
    try:
        asset, created = await resolve.create_asset(
            info.context, slug=input.slug, name=input.name, decimals=input.decimals
        )
    except WalletError as error:
        return cast(CreateAssetResult, failure(error, *_FAILURES))
    return CreateAssetSuccess(asset=Asset.of(asset), created=created)
