"""A Jepsen-style fault suite for the wallet: load plus faults, with the database as the judge.

`python -m chaos` runs every scenario (see `chaos.scenarios`) against a real `wallet serve` on a
throwaway PostgreSQL cluster of its own, then checks that no acknowledged coin was lost or
duplicated. The how and why are in chaos/README.md.
"""
