"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks): how to generate `Amount`."""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st
from schemathesis.graphql import nodes

# Amounts are Ints or strings of digits on the wire; generate valid, edge and hostile ones.
schemathesis.graphql.scalar(
    "Amount",
    st.integers(min_value=-(2**63), max_value=2**63).map(nodes.Int)
    | st.from_regex(r"\A[0-9]{1,20}\Z").map(nodes.String)
    | st.text(max_size=20).map(nodes.String),
)
