"""GraphiQL works with no internet: a real headless Chromium loads it from the service alone."""

from __future__ import annotations

import os
import shutil
from urllib.parse import quote, urlsplit

import httpx
import pytest
from playwright.async_api import Route, async_playwright

from wallet.seed import ALICE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a sandboxed machine: no GPU, and no background calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

QUERY = f"""{{
  wallet(userId: "{ALICE}") {{
    username
    balances {{ asset {{ slug }} amount }}
  }}
}}"""


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("WALLET_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required here (Debian package `chromium`) but not found")
        pytest.skip("no Chromium on this machine: `make test` installs Debian's `chromium`")
    return CHROMIUM


@pytest.mark.slow
async def test_graphiql_runs_a_wallet_query_offline(base_url: str, chromium: str) -> None:
    async with httpx.AsyncClient() as client:
        found = await client.get(f"{base_url}/api/wallet/balance/{ALICE}")
    balance = found.json()["data"][0]["balance"]
    service_host = urlsplit(base_url).netloc
    outside: list[str] = []

    async def only_the_service(route: Route) -> None:
        """Stand in for an internal network: anything not served by the wallet is unreachable."""
        if urlsplit(route.request.url).netloc == service_host:
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort("internetdisconnected")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            await page.route("**/*", only_the_service)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"{base_url}/graphql?q={quote(QUERY)}")
            await page.locator(".graphiql-execute-button").click(timeout=20_000)
            await page.wait_for_function(
                "expected => (document.querySelector('.graphiql-response')?.innerText || '')"
                ".includes(expected)",
                arg=f'"amount": "{balance}"',
                timeout=20_000,
            )
            response_text = await page.locator(".graphiql-response").inner_text()
        finally:
            await browser.close()
    assert '"username": "alice"' in response_text
    assert outside == []
    assert errors == []
