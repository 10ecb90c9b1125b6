"""`wallet audit`: re-derive every ledger invariant from the entries and report any breach."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Each check returns rows that breach an invariant, with a sentence saying which.
CHECKS: list[tuple[str, str]] = [
    (
        "debits equal credits per asset",
        """SELECT slug || ': debits ' || debits || ' != credits ' || credits
             FROM (SELECT a.slug,
                          coalesce(sum(e.amount) FILTER (WHERE e.direction = 'DEBIT'), 0) AS debits,
                          coalesce(sum(e.amount) FILTER (WHERE e.direction = 'CREDIT'), 0)
                              AS credits
                     FROM assets a JOIN entries e ON e.asset_id = a.id
                    GROUP BY a.slug) x
            WHERE debits <> credits""",
    ),
    (
        "balances of an asset sum to zero",
        """SELECT a.slug || ': balances sum to ' || sum(acc.balance)
             FROM assets a JOIN accounts acc ON acc.asset_id = a.id
            GROUP BY a.slug HAVING sum(acc.balance) <> 0""",
    ),
    (
        "each stored balance equals the sum of its entries",
        """SELECT 'account ' || acc.id || ': stored ' || acc.balance || ', entries say '
                  || coalesce(s.total, 0) || ', version ' || acc.version || ' vs '
                  || coalesce(s.n, 0) || ' entries'
             FROM accounts acc
             LEFT JOIN (SELECT account_id,
                               sum(CASE direction WHEN 'CREDIT' THEN amount ELSE -amount END)
                                   AS total,
                               count(*) AS n
                          FROM entries GROUP BY account_id) s ON s.account_id = acc.id
            WHERE acc.balance <> coalesce(s.total, 0) OR acc.version <> coalesce(s.n, 0)""",
    ),
    (
        "each entry's balance_after is its account's running balance",
        """SELECT 'entry ' || id || ': balance_after ' || balance_after || ', running ' || running
             FROM (SELECT e.id, e.balance_after,
                          sum(CASE e.direction WHEN 'CREDIT' THEN e.amount ELSE -e.amount END)
                              OVER (PARTITION BY e.account_id ORDER BY e.account_version) AS running
                     FROM entries e) x
            WHERE balance_after <> running""",
    ),
    (
        "no user balance is below what it holds (available >= 0)",
        """SELECT 'account ' || id || ' (user ' || user_id || '): balance ' || balance
                  || ', held ' || held
             FROM accounts WHERE kind = 'USER' AND (balance < held OR held < 0)""",
    ),
    (
        "every transaction's entries balance: one DEBIT and one CREDIT of its amount",
        """SELECT 'transaction ' || t.id || ': ' || count(e.id) || ' entries'
             FROM transactions t LEFT JOIN entries e ON e.transaction_id = t.id
            GROUP BY t.id, t.amount, t.asset_id
           HAVING count(e.id) <> 2
               OR count(*) FILTER (WHERE e.direction = 'DEBIT') <> 1
               OR count(*) FILTER (WHERE e.direction = 'CREDIT') <> 1
               OR bool_or(e.amount <> t.amount OR e.asset_id <> t.asset_id)""",
    ),
    (
        "each TOPUP, BONUS and SPEND moves money between its user and the Treasury as its type"
        " says",
        """SELECT 'transaction ' || t.id || ' (' || t.type || '): ' || e.direction || ' on a '
                  || acc.kind || ' account'
             FROM transactions t
             JOIN entries e ON e.transaction_id = t.id
             JOIN accounts acc ON acc.id = e.account_id
            WHERE t.type IN ('TOPUP', 'BONUS', 'SPEND')
              AND CASE acc.kind
                  WHEN 'USER' THEN acc.user_id <> t.user_id
                                   OR (t.type = 'SPEND') <> (e.direction = 'DEBIT')
                  ELSE (t.type = 'SPEND') <> (e.direction = 'CREDIT') END""",
    ),
    (
        "a TRANSFER moves between two user wallets, from its user",
        """SELECT 'transaction ' || t.id || ': ' || e.direction || ' on ' || acc.kind
                  || coalesce(' of user ' || acc.user_id, '')
             FROM transactions t
             JOIN entries e ON e.transaction_id = t.id
             JOIN accounts acc ON acc.id = e.account_id
            WHERE t.type = 'TRANSFER'
              AND (acc.kind <> 'USER' OR (e.direction = 'DEBIT') <> (acc.user_id = t.user_id))""",
    ),
    (
        "each reversal runs opposite to its original, which is no reversal",
        """SELECT 'reversal ' || r.id || ' of ' || r.reverses_id || ': ' || re.direction
                  || ' on account ' || re.account_id
             FROM transactions r
             JOIN transactions o ON o.id = r.reverses_id
             JOIN entries re ON re.transaction_id = r.id
             JOIN accounts ra ON ra.id = re.account_id
            WHERE o.type = 'REVERSAL' OR o.asset_id <> r.asset_id OR NOT EXISTS (
                  SELECT 1 FROM entries oe JOIN accounts oa ON oa.id = oe.account_id
                   WHERE oe.transaction_id = o.id AND oe.direction <> re.direction
                     AND CASE WHEN ra.kind = 'USER' THEN oe.account_id = re.account_id
                              ELSE oa.kind = ra.kind END)""",
    ),
    (
        "the reversals of a transaction sum to at most its amount",
        """SELECT 'transaction ' || o.id || ': amount ' || o.amount || ', reversed '
                  || sum(r.amount)
             FROM transactions o JOIN transactions r ON r.reverses_id = o.id
            GROUP BY o.id, o.amount HAVING sum(r.amount) > o.amount""",
    ),
    (
        "each wallet holds exactly its HELD holds, and nothing for a finished one",
        """SELECT 'account ' || acc.id || ': held ' || acc.held || ', HELD holds sum to '
                  || coalesce(h.total, 0)
             FROM accounts acc
             LEFT JOIN (SELECT account_id, sum(amount) AS total FROM holds
                         WHERE status = 'HELD' GROUP BY account_id) h ON h.account_id = acc.id
            WHERE acc.held <> coalesce(h.total, 0)""",
    ),
    (
        "a captured hold posted at most its amount, once, from its own wallet",
        """SELECT 'hold ' || h.id || ': amount ' || h.amount || ', captured '
                  || h.captured_amount || ', posted ' || coalesce(t.amount::text, 'nothing')
             FROM holds h LEFT JOIN transactions t ON t.id = h.transaction_id
             LEFT JOIN (SELECT hold_id, count(*) AS n FROM transactions
                         WHERE hold_id IS NOT NULL GROUP BY hold_id) c ON c.hold_id = h.id
            WHERE h.captured_amount > h.amount
               OR (h.status = 'CAPTURED' AND (t.id IS NULL OR t.amount <> h.captured_amount
                   OR t.hold_id <> h.id OR t.user_id <> h.user_id))
               OR (h.status <> 'CAPTURED' AND h.captured_amount <> 0)
               OR coalesce(c.n, 0) <> (h.status = 'CAPTURED')::int""",
    ),
]

_SUMMARY = """
SELECT a.slug,
       coalesce(sum(acc.balance) FILTER (WHERE acc.kind = 'USER'), 0) AS circulating,
       coalesce(sum(acc.balance) FILTER (WHERE acc.kind = 'TREASURY'), 0) AS treasury,
       (SELECT count(*) FROM transactions t WHERE t.asset_id = a.id) AS transactions
  FROM assets a LEFT JOIN accounts acc ON acc.asset_id = a.id
 GROUP BY a.id, a.slug ORDER BY a.slug
"""


@dataclass(frozen=True, slots=True)
class AssetSummary:
    slug: str
    circulating: int
    treasury: int
    transactions: int


@dataclass(frozen=True, slots=True)
class AuditReport:
    assets: list[AssetSummary]
    breaches: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.breaches

    def render(self) -> str:
        lines = []
        for a in self.assets:
            lines.append(
                f"{a.slug}: {a.transactions} transactions, {a.circulating} held by users, "
                f"treasury {a.treasury}"
            )
        for check, _ in CHECKS:
            found = self.breaches.get(check, [])
            lines.append(f"[{'FAIL' if found else ' ok '}] {check}")
            lines.extend(f"         {b}" for b in found[:20])
            if len(found) > 20:
                lines.append(f"         ... and {len(found) - 20} more")
        lines.append("audit passed" if self.ok else "AUDIT FAILED")
        return "\n".join(lines)


async def audit(conn: AsyncConnection) -> AuditReport:
    """Run every check; run it under REPEATABLE READ so concurrent postings cannot skew it."""
    breaches: dict[str, list[str]] = {}
    for name, sql in CHECKS:
        found = list((await conn.execute(text(sql))).scalars())
        if found:
            breaches[name] = found
    summary = [
        AssetSummary(r.slug, r.circulating, r.treasury, r.transactions)
        for r in (await conn.execute(text(_SUMMARY))).all()
    ]
    return AuditReport(assets=summary, breaches=breaches)
