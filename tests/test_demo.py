"""``referral demo`` seeds parties with usable credentials and a few referrals, once."""

from __future__ import annotations

import json
import stat
from typing import Any

from aiohttp.test_utils import TestClient
from jwcrypto import jwk
from sqlalchemy import select

from referral.config import Settings
from referral.core.appkeys import sessionmaker_key
from referral.demo import seed
from referral.referrals.models import Referral
from tests.auth.factories import client_assertion, token_endpoint, token_form


async def test_demo_seeds_once_with_private_credentials(
    client: TestClient[Any, Any], settings: Settings
) -> None:
    directory = await seed(settings)
    assert directory is not None
    kinds = set()
    for name in ("authority", "provider", "observer"):
        path = directory / f"{name}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        credentials = json.loads(path.read_text())
        assert credentials["client_key"]["d"]
        assert credentials["signing_key"]["kid"]
        kinds.add(credentials["kind"])
        # The credentials work: the demo client gets an access token from the real endpoint.
        assertion = client_assertion(
            credentials["client_id"], jwk.JWK(**credentials["client_key"]), audience=token_endpoint(client)
        )
        token = await client.post("/oauth/token", data=token_form(assertion))
        assert token.status == 200, await token.text()
    assert kinds == {"authority", "provider", "observer"}

    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        statuses = sorted((await session.execute(select(Referral.type, Referral.status))).all())
    assert statuses == [
        ("preservation_request", "preserved"),
        ("referral", "in_review"),
        ("removal_order", "action_taken"),
        ("removal_order", "submitted"),
    ]
    assert await seed(settings) is None
