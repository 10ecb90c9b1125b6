import httpx

from tests.factories import Factory


async def test_balance_of_a_new_user(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.user(gold=7)
    response = await client.get(f"/api/wallet/balance/{user}")
    assert response.status_code == 200
    assert response.json()["data"][0]["balance"] == "7"
