"""The scenarios: a service configuration, a client behaviour, and the faults to inject."""

from __future__ import annotations

from dataclasses import dataclass

from chaos.faults import FaultKind


@dataclass(frozen=True, slots=True)
class Track:
    """Inject one of `faults`, chosen at random, every `every_s` seconds (drawn uniformly)."""

    faults: tuple[FaultKind, ...]
    every_s: tuple[float, float]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    what: str
    tracks: tuple[Track, ...] = ()
    workers: int = 1
    pool_size: int = 8
    pool_timeout_s: float = 5.0
    lock_timeout_ms: int = 2000
    clients_factor: int = 1  # clients = --clients x this
    # First-attempt client timeouts shorter than the server's work, for this share of ops.
    short_timeouts: tuple[float, float] | None = None
    short_timeout_share: float = 1.0
    # The fault must make the service answer 503 BUSY, each within `busy_bound_s`.
    expect_busy: bool = False

    @property
    def env(self) -> dict[str, str]:
        return {
            "WALLET_POOL_SIZE": str(self.pool_size),
            "WALLET_POOL_TIMEOUT_S": str(self.pool_timeout_s),
            "WALLET_LOCK_TIMEOUT_MS": str(self.lock_timeout_ms),
        }

    def busy_bound_s(self, queueing_s: float) -> float:
        """How long a BUSY answer may take: a pool wait, a lock wait, and the queueing requests
        see at this load (the slowest acknowledged attempt, at least a second: the BUSYs are
        a few hundred answers, so the slowest of them sits at the tail of that queueing too)."""
        return self.pool_timeout_s + self.lock_timeout_ms / 1000 + max(1.0, queueing_s)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("baseline", "no faults: the control"),
    Scenario(
        "terminate-backends",
        "pg_terminate_backend on 1 to half of the service's connections, every 0.2-0.8 s",
        tracks=(Track(("terminate",), (0.2, 0.8)),),
    ),
    Scenario(
        "pg-restart-fast",
        "PostgreSQL stopped with -m fast, down 0.2-1.5 s, started again, every 1.5-3 s",
        tracks=(Track(("pg-fast",), (1.5, 3.0)),),
    ),
    Scenario(
        "pg-restart-immediate",
        "PostgreSQL crashed (-m immediate: WAL recovery on start), down 0.2-1.5 s, every 1.5-3 s",
        tracks=(Track(("pg-immediate",), (1.5, 3.0)),),
    ),
    Scenario(
        "service-kill",
        "SIGKILL `wallet serve` (its process group), restart it on the same port, every 1.5-3 s",
        tracks=(Track(("service-kill",), (1.5, 3.0)),),
    ),
    Scenario(
        "worker-kill",
        "`--workers 2`: SIGKILL one worker every 1.5-3 s; uvicorn replaces it",
        workers=2,
        tracks=(Track(("worker-kill",), (1.5, 3.0)),),
    ),
    Scenario(
        "lock-contention",
        "a side transaction holds a hot wallet's rows 0.5-1.5 s past lock_timeout (500 ms)",
        lock_timeout_ms=500,
        tracks=(Track(("lock-hold",), (0.3, 1.0)),),
        expect_busy=True,
    ),
    Scenario(
        "client-timeouts",
        "client timeouts of 30-300 ms while hot wallets are held 0.6-1.6 s (under lock_timeout)",
        short_timeouts=(0.03, 0.3),
        tracks=(Track(("slow-lock",), (0.2, 0.8)),),
    ),
    Scenario(
        "pool-exhaustion",
        "2x clients on WALLET_POOL_SIZE=2 (pool timeout 0.5 s) while hot wallets are held",
        pool_size=2,
        pool_timeout_s=0.5,
        clients_factor=2,
        tracks=(Track(("slow-lock",), (0.2, 0.8)),),
        expect_busy=True,
    ),
    Scenario(
        "mixed",
        "all of the above at once, at random, on `--workers 2`, pool 4, lock_timeout 500 ms",
        workers=2,
        pool_size=4,
        pool_timeout_s=1.0,
        lock_timeout_ms=500,
        short_timeouts=(0.05, 0.5),
        short_timeout_share=0.3,
        tracks=(
            Track(
                ("terminate", "pg-fast", "pg-immediate", "service-kill", "worker-kill"),
                (1.0, 2.5),
            ),
            Track(("lock-hold", "slow-lock"), (0.3, 1.0)),
        ),
    ),
)

BY_NAME = {s.name: s for s in SCENARIOS}
