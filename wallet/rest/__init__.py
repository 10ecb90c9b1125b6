"""The REST API: one module per feature (thin: parse, call the ledger, shape the envelope)."""

from starlette.routing import Route

from wallet.rest import admin, assets, health, transactions, transfers, wallet

routes: list[Route] = [
    *health.routes,
    *wallet.routes,
    *transfers.routes,
    *transactions.routes,
    *assets.routes,
    *admin.routes,
]
