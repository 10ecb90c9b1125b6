"""The REST API: one module per feature (thin: parse, call the ledger, shape the envelope)."""

from starlette.routing import Route

from wallet.rest import admin, assets, batches, health, holds, transactions, transfers, wallet

routes: list[Route] = [  # matched in order: the busiest first (no two paths overlap)
    *wallet.routes,
    *health.routes,
    *transfers.routes,
    *holds.routes,
    *batches.routes,
    *transactions.routes,
    *assets.routes,
    *admin.routes,
]
