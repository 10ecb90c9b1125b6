"""The REST API: one module per feature (thin: parse, call the ledger, shape the envelope)."""

from starlette.routing import Route

from wallet.rest import admin, health, wallet

routes: list[Route] = [*health.routes, *wallet.routes, *admin.routes]
