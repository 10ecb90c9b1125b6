"""What is measured: the service's scenarios, the requests behind them, and their ceilings."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from bench.seeding import ASSET, HOT_ROW_ASSET, HOT_WALLET, user_id

WALLET_QUERY = (
    "query W($id: UUID!) { wallet(userId: $id) { username"
    " balances { asset { slug name decimals } amount }"
    " ledger(first: 20) { edges { cursor node { direction amount balanceAfter createdAt"
    " transaction { id type } } } pageInfo { hasNextPage endCursor } } } }"
)
TRANSACT_MUTATION = (
    "mutation T($input: TransactInput!) { transact(input: $input) {"
    " __typename ... on TransactSuccess {"
    " replayed transaction { id createdAt } balance { amount } }"
    " ... on Error { code message } } }"
)

SAMPLE_USER = user_id(1)  # the captures' user; the pgbench scripts replace it with `:u`
SECOND_USER = user_id(2)  # a transfer's recipient in the capture; `:v` in its pgbench script


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of a kind, as the capture sends it; wrk.lua builds the same ones."""

    name: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    key_in: str | None = None  # "header", "graphql", or None (no Idempotency-Key)

    def httpx_args(self, *, key: str) -> dict[str, Any]:
        args: dict[str, Any] = {"method": self.method, "url": self.path}
        headers = {"content-type": "application/json"}
        body = self.body
        if self.key_in == "header":
            headers["idempotency-key"] = key
        elif self.key_in == "graphql" and body is not None:
            variables = body["variables"]
            body = {**body, "variables": {"input": {**variables["input"], "idempotencyKey": key}}}
        if body is not None:
            args["json"] = body
        args["headers"] = headers
        return args


def _transact(name: str, user: uuid.UUID, asset: str, kind: str) -> RequestSpec:
    body = {"userId": str(user), "amount": 1, "assetSlug": asset, "type": kind}
    return RequestSpec(name, "POST", "/api/wallet/transact", body, key_in="header")


REQUESTS = [
    _transact("topup", SAMPLE_USER, ASSET, "TOPUP"),
    _transact("topup-hot-row", SAMPLE_USER, HOT_ROW_ASSET, "TOPUP"),
    _transact("spend-hot", HOT_WALLET, ASSET, "SPEND"),
    RequestSpec("read-balance", "GET", f"/api/wallet/balance/{SAMPLE_USER}"),
    RequestSpec(
        "transfer",
        "POST",
        "/api/wallet/transfer",
        {
            "fromUserId": str(SAMPLE_USER),
            "toUserId": str(SECOND_USER),
            "amount": 1,
            "assetSlug": ASSET,
        },
        key_in="header",
    ),
    RequestSpec(
        "graphql-wallet",
        "POST",
        "/graphql",
        {"query": WALLET_QUERY, "variables": {"id": str(SAMPLE_USER)}},
    ),
    RequestSpec(
        "graphql-transact",
        "POST",
        "/graphql",
        {
            "query": TRANSACT_MUTATION,
            "variables": {
                "input": {
                    "userId": str(SAMPLE_USER),
                    "amount": "1",
                    "assetSlug": ASSET,
                    "type": "TOPUP",
                }
            },
        },
        key_in="graphql",
    ),
]


@dataclass(frozen=True, slots=True)
class Ceiling:
    """pgbench replaying the statements one request of `capture` made."""

    name: str
    capture: str
    title: str
    random_user: bool = True
    replace: tuple[str, str] | None = None  # a diagnostic variant of the service's SQL
    diagnostic: bool = False  # measured at the target concurrency only; no target uses it
    second_user: bool = False  # the capture's SECOND_USER becomes a second random user


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    mode: str  # wrk.lua's MODE
    ceiling: str
    title: str
    query: str = "-"  # the GraphQL document wrk.lua sends
    levels: tuple[int, ...] = ()  # measured at these client counts only (default: all)
    postings_per_request: int = 1


CEILINGS = [
    Ceiling("transact", "topup", "wallet_transact TOPUP, random user, Treasury over 32 shards"),
    Ceiling(
        "transact-hot-row",
        "topup-hot-row",
        "the same on an asset whose Treasury is ONE row (treasury_shards = 1)",
    ),
    Ceiling("spend-one-row", "spend-hot", "wallet_transact SPEND on one wallet", False),
    Ceiling("balance-select", "read-balance", "the balance route's own SELECT"),
    Ceiling("wallet-query-sql", "graphql-wallet", "every statement the wallet query runs"),
    Ceiling("transfer", "transfer", "wallet_transfer between two random users", second_user=True),
]
# The minimal one-round-trip posting of the team's reference measurement
# (../shared/reference/dbceiling, wallet_sharded_fn.sql), on its own schema and database.
REFERENCE_CEILING = "reference-posting"

SCENARIOS = [
    Scenario("topup-many", "topup", "transact", "REST TOPUP across 10,000 users"),
    Scenario(
        "graphql-transact",
        "graphql-transact",
        "transact",
        "GraphQL transact (TOPUP)",
        TRANSACT_MUTATION,
    ),
    Scenario("spend-hot", "spend-hot", "spend-one-row", "REST SPEND on one wallet"),
    Scenario("read-balance", "read-balance", "balance-select", "GET balance, random user"),
    Scenario(
        "graphql-wallet",
        "graphql-wallet",
        "wallet-query-sql",
        "GraphQL wallet: balances + 20-entry ledger page",
        WALLET_QUERY,
    ),
    Scenario("transfer-many", "transfer", "transfer", "REST TRANSFER between random users"),
    Scenario(
        "batch-bonus-1000",
        "batch1000",
        "transact",
        "REST atomic batch: 1,000 BONUS over 1,000 users (each client its own users)",
        levels=(2,),
        postings_per_request=1000,
    ),
    Scenario(
        "batch-atomic-100",
        "batch100",
        "transact",
        "REST atomic batch of 100 BONUS, one client",
        levels=(1,),
        postings_per_request=100,
    ),
]
# Beside the service, at the same worker count: the floor (bench/floor.py) on these scenarios,
# the service with an API key configured (auth on), at the target concurrency, and the service
# with group commit off (each posting alone: WALLET_GROUP_COMMIT_MAX=1), at every concurrency.
FLOOR_SCENARIOS = ("topup-many", "read-balance", "graphql-wallet", "graphql-transact")
AUTH_SCENARIOS = ("topup-many", "read-balance")
ALONE_SCENARIOS = ("topup-many",)
ALONE_ENV = {"WALLET_GROUP_COMMIT_MAX": "1"}

# Run order inside one round: each scenario right after its ceiling(s), under the same noise.
# "floor", "auth" and "alone" runs are named "floor/<scenario>", "auth/<scenario>" and so on.
ORDER: list[tuple[str, str]] = [
    ("reference", REFERENCE_CEILING),
    ("ceiling", "transact"),
    ("ceiling", "transact-hot-row"),
    ("service", "topup-many"),
    ("alone", "topup-many"),
    ("floor", "topup-many"),
    ("auth", "topup-many"),
    ("service", "graphql-transact"),
    ("floor", "graphql-transact"),
    ("ceiling", "spend-one-row"),
    ("service", "spend-hot"),
    ("ceiling", "balance-select"),
    ("service", "read-balance"),
    ("floor", "read-balance"),
    ("auth", "read-balance"),
    ("ceiling", "wallet-query-sql"),
    ("service", "graphql-wallet"),
    ("floor", "graphql-wallet"),
    ("ceiling", "transfer"),
    ("service", "transfer-many"),
    ("service", "batch-bonus-1000"),
    ("service", "batch-atomic-100"),
]


def ceiling(name: str) -> Ceiling:
    return next(c for c in CEILINGS if c.name == name)


def scenario(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)
