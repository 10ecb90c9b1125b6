"""The ledger: the one place money moves. REST and GraphQL both call these functions.

Design note
-----------
* Double entry. A transaction is a set of entries of one asset: its debits equal its credits equal
  its amount (today every posting is one DEBIT and one CREDIT). An account's balance is its
  credits minus its debits, so the balances of all accounts of an asset sum to zero. PostgreSQL
  enforces it: a statement trigger checks every INSERT on transactions (each new transaction
  balanced by entries written in the same statement), another every INSERT on entries (so entries
  cannot be added to a committed transaction, nor name one that does not exist), triggers reject
  UPDATE, DELETE and TRUNCATE on transactions and entries. Checks on one column are domains
  (`ledger_amount`, ...), which PostgreSQL runs only where a value is written, not at every write
  of the row (migration 0007).
* Accounts. User wallets (kind USER) and the asset's Treasury (kind TREASURY). TOPUP and BONUS
  debit the Treasury and credit the user; SPEND the other way; TRANSFER debits one user and
  credits another; a REVERSAL runs along its original's legs the other way. The Treasury issues
  the coins, so its balance is minus everything in circulation. A wallet opens with the first
  coins that arrive in it: a request refused leaves none behind (a batch or group that opened
  wallets for its credits takes away, in its own transaction, those nothing arrived in; a
  trigger lets no other account be deleted).
* Holds are pending debits (as in TigerBeetle): a HELD hold counts in its account's `held`, and
  a trigger on the account's balance and held amount keeps `balance >= held`, so
  `available = balance - held` never goes below zero in PostgreSQL itself. `balance` stays the
  whole balance; a capture posts a SPEND or a TRANSFER of the captured amount and releases the
  hold.
* No hot account. The Treasury is N rows ("shards"); a posting updates one, as its last write,
  without locking it up front: from a random shard on, the first that no other posting holds
  (`FOR UPDATE SKIP LOCKED`) and that has room for the amount (bigint). It waits for a shard
  only when every one is held or full. Its balance is the sum of its shards, exact at any
  snapshot. A batch pins one shard per asset, locked after its wallets in asset order, so
  batches take shard locks in one order.
* Pessimistic locking, one order. Every user account a posting touches is locked `FOR UPDATE`
  in ascending id order before any balance check (holds before accounts), so concurrent
  transfers in both directions, and concurrent batches, never deadlock.
* One round trip. Each write is one SQL function (wallet/sql/ledger.sql, the one source a
  reviewer reads; migrations apply frozen copies of it): the locks are held for one statement.
* Time order. A posting takes its timestamp after its locks, so an account's entries are in the
  same order by time and by version: the balance at an instant is the last entry before it.
* Idempotency. The key row is inserted first, in the same database transaction as the posting,
  with a fingerprint of the request. A concurrent duplicate blocks on that row until the first
  commits and then reads its stored answer; if the first rolls back, the duplicate runs itself.
  Outcomes the ledger decides (COMPLETED and its 422 refusals) are stored and replayed;
  not-found and validation errors roll back, so a corrected retry can run.
* History is a lookup: each entry records its account's balance and version after it.
* Group commit. TOPUP, BONUS and SPEND postings that arrive while a worker's posting calls are
  busy wait and go together: one call and one commit for the group (`wallet_transact_group`),
  locks taken in a posting's own order (keys in key order, wallets ascending, one Treasury shard
  per asset), set-based when every posting completes, else each one alone in that call, exactly
  as `wallet_transact`. A posting gets the answer it would have had alone.

The functions here take a connection and never commit: the caller owns the transaction.
"""

from wallet.ledger.assets import assets, assets_by_id, assets_by_slug, create_asset, ensure_asset
from wallet.ledger.balances import (
    WalletRecord,
    balance_changes_after,
    balances,
    balances_at,
    balances_by_user,
    balances_pg,
    wallets_by_id,
)
from wallet.ledger.batches import (
    MAX_OPERATIONS,
    BatchDone,
    BatchOperation,
    GroupPosted,
    OperationResult,
    batch,
    transact_group_pg,
)
from wallet.ledger.common import (
    AssetInfo,
    Balance,
    Direction,
    Metadata,
    decode_cursor,
    encode_cursor,
    fingerprint,
    settled,
)
from wallet.ledger.history import (
    EntryRecord,
    HistoryFilter,
    HistoryItem,
    HistoryPage,
    PageRows,
    TransactionRecord,
    TransactionType,
    TransactionView,
    entries_by_transaction,
    history,
    history_on,
    history_rows,
    history_rows_on,
    history_statement,
    reversals_by_original,
    transaction_view,
    transactions_by_id,
)
from wallet.ledger.holds import (
    DEFAULT_EXPIRY_S,
    HOLD_STATUSES,
    MAX_EXPIRY_S,
    CaptureRequest,
    HoldPage,
    HoldRequest,
    HoldStatus,
    HoldView,
    capture_hold,
    create_hold,
    expire_holds,
    holds_by_id,
    holds_page,
    void_hold,
)
from wallet.ledger.overview import WalletOverview, wallet_overview, wallet_overview_on
from wallet.ledger.postings import (
    TRANSACT_ROUTE,
    Outcome,
    TransactOutcome,
    TransactRequest,
    purge_idempotency,
    refusal,
    transact,
    transact_pg,
)
from wallet.ledger.reversals import ReversalDone, ReverseRequest, reverse
from wallet.ledger.transfers import TransferDone, TransferRequest, transfer
from wallet.ledger.users import UserRecord, create_user, user_exists

__all__ = [
    "DEFAULT_EXPIRY_S",
    "HOLD_STATUSES",
    "MAX_EXPIRY_S",
    "MAX_OPERATIONS",
    "TRANSACT_ROUTE",
    "AssetInfo",
    "Balance",
    "BatchDone",
    "BatchOperation",
    "CaptureRequest",
    "Direction",
    "EntryRecord",
    "GroupPosted",
    "HistoryFilter",
    "HistoryItem",
    "HistoryPage",
    "HoldPage",
    "HoldRequest",
    "HoldStatus",
    "HoldView",
    "Metadata",
    "OperationResult",
    "Outcome",
    "PageRows",
    "ReversalDone",
    "ReverseRequest",
    "TransactOutcome",
    "TransactRequest",
    "TransactionRecord",
    "TransactionType",
    "TransactionView",
    "TransferDone",
    "TransferRequest",
    "UserRecord",
    "WalletOverview",
    "WalletRecord",
    "assets",
    "assets_by_id",
    "assets_by_slug",
    "balance_changes_after",
    "balances",
    "balances_at",
    "balances_by_user",
    "balances_pg",
    "batch",
    "capture_hold",
    "create_asset",
    "create_hold",
    "create_user",
    "decode_cursor",
    "encode_cursor",
    "ensure_asset",
    "entries_by_transaction",
    "expire_holds",
    "fingerprint",
    "history",
    "history_on",
    "history_rows",
    "history_rows_on",
    "history_statement",
    "holds_by_id",
    "holds_page",
    "purge_idempotency",
    "refusal",
    "reversals_by_original",
    "reverse",
    "settled",
    "transact",
    "transact_group_pg",
    "transact_pg",
    "transaction_view",
    "transactions_by_id",
    "transfer",
    "user_exists",
    "void_hold",
    "wallet_overview",
    "wallet_overview_on",
    "wallets_by_id",
]
