"""GraphQL resolver logic: context, per-request loaders, thin adapters over the ledger."""
