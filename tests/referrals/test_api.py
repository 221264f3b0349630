"""Signed referrals end to end through the HTTP API, on both databases, signed with jwcrypto."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from jwcrypto import jwk, jws
from sqlalchemy import func, select

from referral.audit.models import AuditEntry
from referral.config import Settings
from referral.core.appkeys import sessionmaker_key
from referral.core.ids import new_id
from referral.referrals.clock import expire_preservations
from referral.referrals.models import Referral, ReferralItem, ReferralStatus
from tests.auth.factories import TestParty, bearer, make_party, new_key, sign_document
from tests.sqlcapture import sent_statements

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "api" / "examples"


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    return document


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"run_background_tasks": False})


@pytest.fixture
async def authority(client: TestClient[Any, Any]) -> TestParty:
    return await make_party(client, kind="authority", country="DE")


@pytest.fixture
async def provider(client: TestClient[Any, Any]) -> TestParty:
    return await make_party(client, kind="provider", country="IE", key_type="EC")


def referral_claims(
    issuer: TestParty, addressee: TestParty, kind: str = "removal_order", **changes: Any
) -> dict[str, Any]:
    claims = example(kind)
    claims.update(
        iss=issuer.party_id, addressee=addressee.party_id, iat=int(time.time()), jti=uuid.uuid4().hex
    )
    claims.pop("deadline", None)
    if "confidentiality" in claims:
        claims["confidentiality"]["do_not_inform_until"] = (
            (datetime.now(UTC) + timedelta(days=40)).date().isoformat()
        )
    claims.update(changes)
    return claims


def status_claims(party: TestParty, referral_id: str, status: str, **changes: Any) -> dict[str, Any]:
    claims = example(f"status-{status}")
    claims.update(iss=party.party_id, iat=int(time.time()), jti=uuid.uuid4().hex, referral_id=referral_id)
    for time_field in ("preserved_until", "effective_at"):
        if time_field in claims:
            claims[time_field] = (datetime.now(UTC) + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    if "effective_at" in claims:
        claims["effective_at"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    claims.update(changes)
    return claims


async def submit(
    client: TestClient[Any, Any],
    party: TestParty,
    claims: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], str]:
    compact = sign_document(party, claims)
    response = await client.post(
        "/v1/referrals",
        data=compact,
        headers={**(headers or await bearer(client, party)), "Content-Type": "application/jose"},
    )
    return response.status, await response.json(), compact


async def post_status(
    client: TestClient[Any, Any], party: TestParty, referral_id: str, claims: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    response = await client.post(
        f"/v1/referrals/{referral_id}/statuses",
        json={"jws": sign_document(party, claims, typ="status+jws")},
        headers=await bearer(client, party),
    )
    return response.status, await response.json()


async def count(client: TestClient[Any, Any], model: Any) -> int:
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


def verify_receipt(receipt: str, jwks: dict[str, Any]) -> dict[str, Any]:
    token = jws.JWS()
    token.deserialize(receipt)
    keys = jwk.JWKSet.from_json(json.dumps(jwks))
    token.verify(keys)
    assert token.jose_header["typ"] == "receipt+jws"
    claims: dict[str, Any] = json.loads(token.payload)
    return claims


async def test_removal_order_lifecycle(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    status, body, compact = await submit(client, authority, referral_claims(authority, provider))
    assert status == 201, body
    referral = body["referral"]
    assert referral["status"] == "submitted"
    assert referral["type"] == "removal_order"
    received = datetime.fromisoformat(referral["received_at"])
    assert datetime.fromisoformat(referral["deadline"]) == received + timedelta(hours=1)

    jwks = await (await client.get("/.well-known/jwks.json")).json()
    receipt = verify_receipt(body["receipt"], jwks)
    assert receipt == {
        "referral_id": referral["id"],
        "jws_sha256": hashlib.sha256(compact.encode()).hexdigest(),
        "received_at": referral["received_at"],
        "deadline": referral["deadline"],
        "audit_entry_id": referral["audit_entry_id"],
    }
    entry = await client.get(
        f"/v1/audit/entries/{receipt['audit_entry_id']}", headers=await bearer(client, provider)
    )
    entry_body = await entry.json()
    assert entry_body["entry"]["digest"] == receipt["jws_sha256"]
    assert entry_body["entry"]["action"] == "referral.submitted"
    assert sorted(entry_body["entry"]["visible_to"]) == sorted([authority.party_id, provider.party_id])

    # The provider's first fetch delivers it and is audited.
    detail = await client.get(f"/v1/referrals/{referral['id']}", headers=await bearer(client, provider))
    detail_body = await detail.json()
    assert detail.status == 200
    assert detail_body["status"] == "delivered"
    assert detail_body["jws"] == compact
    assert detail_body["history"][0]["status"] == "delivered"
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        audited = list(
            (
                await session.execute(
                    select(AuditEntry.action, AuditEntry.actor_party, AuditEntry.digest).where(
                        AuditEntry.subject_id == referral["id"]
                    )
                )
            ).all()
        )
    # Submission, the server-recorded delivery, and the provider's read of the content (with its digest).
    actions = {row[0]: row[1:] for row in audited}
    assert sorted(actions) == ["referral.delivered", "referral.read", "referral.submitted"]
    assert actions["referral.read"] == (provider.party_id, receipt["jws_sha256"])
    assert actions["referral.delivered"][0] is None  # recorded by the service itself

    for step in ("acknowledged", "action_taken"):
        code, answer = await post_status(
            client, provider, referral["id"], status_claims(provider, referral["id"], step)
        )
        assert code == 201, answer
        assert answer["referral"]["status"] == step
        status_receipt = verify_receipt(answer["receipt"], jwks)
        assert status_receipt["status"] == step

    final = await (
        await client.get(f"/v1/referrals/{referral['id']}", headers=await bearer(client, authority))
    ).json()
    assert [h["status"] for h in final["history"]] == ["delivered", "acknowledged", "action_taken"]
    assert final["decided_at"] is not None
    assert final["overdue"] is False
    assert final["history"][-1]["jws"]


async def test_preservation_request_lifecycle(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    status, body, _ = await submit(
        client, authority, referral_claims(authority, provider, "preservation_request")
    )
    assert status == 201, body
    referral_id = body["referral"]["id"]
    assert body["referral"]["deadline"] is None
    assert body["referral"]["preserved_until"] is not None
    for step in ("acknowledged", "preserved", "preservation_extended", "preservation_released"):
        code, answer = await post_status(
            client, provider, referral_id, status_claims(provider, referral_id, step)
        )
        assert code == 201, answer
    assert answer["referral"]["closed_at"] is not None


async def test_referral_with_information_request_and_no_action(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    _, body, _ = await submit(client, authority, referral_claims(authority, provider, "referral"))
    referral_id = body["referral"]["id"]
    for party, step in (
        (provider, "acknowledged"),
        (provider, "info_requested"),
        (authority, "info_provided"),
        (provider, "in_review"),
        (provider, "no_action"),
    ):
        code, answer = await post_status(client, party, referral_id, status_claims(party, referral_id, step))
        assert code == 201, (step, answer)
    assert answer["referral"]["status"] == "no_action"


async def test_withdrawal_by_the_authority(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    _, body, _ = await submit(client, authority, referral_claims(authority, provider))
    referral_id = body["referral"]["id"]
    code, answer = await post_status(
        client, authority, referral_id, status_claims(authority, referral_id, "withdrawn")
    )
    assert code == 201, answer
    code, answer = await post_status(
        client, provider, referral_id, status_claims(provider, referral_id, "acknowledged")
    )
    assert code == 409
    assert answer["allowed"] == []


async def test_invalid_transition_lists_the_allowed_ones(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    _, body, _ = await submit(client, authority, referral_claims(authority, provider))
    referral_id = body["referral"]["id"]
    code, answer = await post_status(
        client, provider, referral_id, status_claims(provider, referral_id, "upheld")
    )
    assert code == 409
    assert "acknowledged" in answer["allowed"]
    assert await count(client, ReferralStatus) == 0


async def test_status_from_the_wrong_party(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    other_provider = await make_party(client, kind="provider")
    _, body, _ = await submit(client, authority, referral_claims(authority, provider))
    referral_id = body["referral"]["id"]
    code, _ = await post_status(
        client, other_provider, referral_id, status_claims(other_provider, referral_id, "acknowledged")
    )
    assert code == 404
    code, answer = await post_status(
        client, authority, referral_id, status_claims(authority, referral_id, "acknowledged")
    )
    assert code == 403, answer


async def test_a_refused_status_says_nothing_of_whether_an_unseen_referral_exists(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    """The signed status is checked before the referral is looked up: for a referral the caller cannot see
    and for one that does not exist, the same document gets the same answer."""
    other_provider = await make_party(client, kind="provider")
    _, body, _ = await submit(client, authority, referral_claims(authority, provider))
    unseen, missing = body["referral"]["id"], new_id()
    valid = status_claims(other_provider, unseen, "acknowledged")
    # Each document, and the status its refusal has whichever referral it is sent to.
    documents = {
        "valid": (sign_document(other_provider, valid, typ="status+jws"), 404),
        "tampered": (sign_document(other_provider, valid, typ="status+jws")[:-4] + "AAAA", 422),
        "invalid": (
            sign_document(other_provider, {**valid, "status": "no-such-status"}, typ="status+jws"),
            422,
        ),
        "another issuer": (
            sign_document(other_provider, {**valid, "iss": provider.party_id}, typ="status+jws"),
            403,
        ),
        "not a jws": ("not.a.jws", 400),
    }
    headers = await bearer(client, other_provider)
    for name, (document, refused_with) in documents.items():
        answers = []
        for referral_id in (unseen, missing):
            response = await client.post(
                f"/v1/referrals/{referral_id}/statuses", json={"jws": document}, headers=headers
            )
            problem = await response.json()
            answers.append((response.status, problem["type"], problem["title"]))
        assert answers[0] == answers[1], name
        assert answers[0][0] == refused_with, (name, answers[0])


async def test_repeats_and_conflicting_repeats(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    claims = referral_claims(authority, provider)
    compact = sign_document(authority, claims)
    headers = {**await bearer(client, authority), "Content-Type": "application/jose"}
    first = await client.post("/v1/referrals", data=compact, headers=headers)
    again = await client.post("/v1/referrals", data=compact, headers=headers)
    assert (first.status, again.status) == (201, 200)
    assert (await first.json())["receipt"] == (await again.json())["receipt"]
    conflicting = sign_document(authority, {**claims, "case_reference": "another"})
    clash = await client.post("/v1/referrals", data=conflicting, headers=headers)
    assert clash.status == 409
    assert (await clash.json())["type"].endswith("/jti-conflict")
    assert await count(client, Referral) == 1


@pytest.mark.parametrize("tamper", ["payload", "signature"])
async def test_tampered_documents_are_refused(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, tamper: str
) -> None:
    compact = sign_document(authority, referral_claims(authority, provider))
    header, payload, signature = compact.split(".")
    if tamper == "payload":
        forged = json.loads(jws.base64url_decode(payload))
        forged["requested_action"] = "disable_access"
        payload = jws.base64url_encode(json.dumps(forged).encode())
    else:
        signature = signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")
    response = await client.post(
        "/v1/referrals",
        data=f"{header}.{payload}.{signature}",
        headers={**await bearer(client, authority), "Content-Type": "application/jose"},
    )
    assert response.status == 422
    assert (await response.json())["type"].endswith("/bad-signature")
    assert await count(client, Referral) == 0


async def test_keys_of_others_revoked_keys_and_alg_none_are_refused(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    other_authority = await make_party(client, kind="authority")
    claims = referral_claims(authority, provider)
    headers = {**await bearer(client, authority), "Content-Type": "application/jose"}

    # Signed with another party's key and naming that party's kid.
    borrowed = TestParty(
        **{
            **authority.__dict__,
            "signing_key": other_authority.signing_key,
            "signing_kid": other_authority.signing_kid,
        }
    )
    response = await client.post("/v1/referrals", data=sign_document(borrowed, claims), headers=headers)
    assert response.status == 422
    assert (await response.json())["reason"] == "unknown"

    # alg none, and HS256 keyed with public bytes.
    unsigned_header = jws.base64url_encode(
        json.dumps({"alg": "none", "typ": "referral+jws", "kid": "x"}).encode()
    )
    unsigned = f"{unsigned_header}.{jws.base64url_encode(json.dumps(claims).encode())}."
    response = await client.post("/v1/referrals", data=unsigned, headers=headers)
    assert response.status == 400

    hmac_key = jwk.JWK(kty="oct", k=jws.base64url_encode(b"public-key-bytes-public-key-bytes"))
    token = jws.JWS(json.dumps(claims).encode())
    token.add_signature(hmac_key, None, {"alg": "HS256", "typ": "referral+jws", "kid": authority.signing_kid})
    response = await client.post("/v1/referrals", data=token.serialize(compact=True), headers=headers)
    assert response.status == 400

    # A revoked key.
    operator = await make_party(client, kind="operator")
    revoke = await client.delete(
        f"/v1/parties/{authority.party_id}/keys/{authority.signing_kid}",
        json={"reason": "compromised"},
        headers=await bearer(client, operator),
    )
    assert revoke.status in (200, 204), await revoke.text()
    response = await client.post("/v1/referrals", data=sign_document(authority, claims), headers=headers)
    assert response.status == 422
    assert (await response.json())["reason"] == "revoked"
    assert await count(client, Referral) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"unexpected": "field"}, "unexpected"),
        ({"items": [{"url": "javascript:alert(1)"}]}, "items"),
        ({"items": [{"url": "https://user:pw@example.com/x"}]}, "items"),
        ({"statement_of_reasons": "short"}, "statement_of_reasons"),
        ({"items": [{"url": f"https://example.com/{n}"} for n in range(1001)]}, "items"),
        ({"tco_reasons": []}, "tco_reasons"),
    ],
)
async def test_invalid_payloads_list_the_fields_and_leave_nothing(
    client: TestClient[Any, Any],
    authority: TestParty,
    provider: TestParty,
    change: dict[str, Any],
    field: str,
) -> None:
    headers = await bearer(client, authority)
    audit_before = await count(client, AuditEntry)
    status, body, _ = await submit(
        client, authority, referral_claims(authority, provider, **change), headers=headers
    )
    assert status == 422, body
    assert body["type"].endswith("/validation-failed")
    assert any(field in json.dumps(error["loc"]) or field in error["msg"] for error in body["errors"]), body
    assert await count(client, Referral) == 0
    assert await count(client, ReferralItem) == 0
    assert await count(client, AuditEntry) == audit_before  # only token issuance, no referral entry


async def test_addressee_must_be_a_provider_and_iss_the_caller(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    status, body, _ = await submit(client, authority, referral_claims(authority, authority))
    assert status == 422, body
    other_authority = await make_party(client, kind="authority")
    status, body, _ = await submit(
        client, authority, referral_claims(other_authority, provider), headers=await bearer(client, authority)
    )
    assert status == 403


async def test_tenancy_and_listing(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    other_provider = await make_party(client, kind="provider")
    for _ in range(3):
        await submit(client, authority, referral_claims(authority, provider))
    _, body, _ = await submit(client, authority, referral_claims(authority, other_provider, "referral"))
    hidden = body["referral"]["id"]
    assert (await client.get(f"/v1/referrals/{hidden}", headers=await bearer(client, provider))).status == 404

    listing = await (await client.get("/v1/referrals?limit=2", headers=await bearer(client, provider))).json()
    assert len(listing["referrals"]) == 2
    assert all(r["addressee"] == provider.party_id for r in listing["referrals"])
    assert all(r["status"] == "delivered" for r in listing["referrals"])
    rest = await (
        await client.get(
            f"/v1/referrals?limit=2&after={listing['next']}", headers=await bearer(client, provider)
        )
    ).json()
    assert len(rest["referrals"]) == 1
    assert rest["next"] is None
    mine = await (
        await client.get("/v1/referrals?type=referral", headers=await bearer(client, authority))
    ).json()
    assert [r["id"] for r in mine["referrals"]] == [hidden]
    observer = await make_party(client, kind="observer")
    assert (await client.get("/v1/referrals", headers=await bearer(client, observer))).status == 403
    bad = await client.get("/v1/referrals?status=nonsense", headers=await bearer(client, authority))
    assert bad.status == 400


async def test_overdue_removal_orders_are_filterable(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    _, body, _ = await submit(client, authority, referral_claims(authority, provider))
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key].begin() as session:
        referral = await session.get(Referral, body["referral"]["id"])
        assert referral is not None
        referral.deadline = datetime.now(UTC) - timedelta(minutes=1)
    overdue = await (
        await client.get("/v1/referrals?overdue=true", headers=await bearer(client, authority))
    ).json()
    assert [r["id"] for r in overdue["referrals"]] == [body["referral"]["id"]]
    assert overdue["referrals"][0]["overdue"] is True


async def test_batch_submission_answers_per_item(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    documents = [
        sign_document(authority, referral_claims(authority, provider)),
        sign_document(authority, referral_claims(authority, provider, statement_of_reasons="x")),
        sign_document(authority, referral_claims(authority, provider, "referral")),
    ]
    response = await client.post(
        "/v1/referrals:batch", json={"documents": documents}, headers=await bearer(client, authority)
    )
    assert response.status == 200
    results = (await response.json())["results"]
    assert [r["status"] for r in results] == [201, 422, 201]
    assert results[1]["problem"]["type"].endswith("/validation-failed")
    assert await count(client, Referral) == 2


async def test_batch_is_one_transaction_with_repeats_conflicts_and_links(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    stored_claims = referral_claims(authority, provider)
    stored = sign_document(authority, stored_claims)
    status, _body, _ = await submit(client, authority, stored_claims)
    assert status == 201
    url = "https://video.example.com/watch?v=batch-shared"
    repeated_claims = referral_claims(authority, provider, items=[{"url": url}])
    repeated = sign_document(authority, repeated_claims)
    documents = [
        stored,  # an idempotent repeat of a stored document
        sign_document(authority, {**stored_claims, "case_reference": "other"}),  # same jti, other bytes
        repeated,
        repeated,  # the same document twice in one batch: a repeat of the first
        sign_document(authority, {**repeated_claims, "case_reference": "other"}),  # in-batch conflict
        sign_document(authority, referral_claims(authority, provider, items=[{"url": url}])),  # overlaps
    ]
    response = await client.post(
        "/v1/referrals:batch", json={"documents": documents}, headers=await bearer(client, authority)
    )
    assert response.status == 200
    results = (await response.json())["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["status"] for r in results] == [200, 409, 201, 200, 409, 201]
    assert results[3]["referral"]["id"] == results[2]["referral"]["id"]
    assert results[1]["problem"]["type"].endswith("/jti-conflict")
    assert await count(client, Referral) == 3
    # Every new referral has its audit entry; the overlapping pair is linked both ways.
    first, last = results[2]["referral"]["id"], results[5]["referral"]["id"]
    headers = await bearer(client, authority)
    seen = await (await client.get(f"/v1/referrals/{last}", headers=headers)).json()
    assert seen["related"] == [{"referral_id": first, "same_issuer": True}]
    seen = await (await client.get(f"/v1/referrals/{first}", headers=headers)).json()
    assert seen["related"] == [{"referral_id": last, "same_issuer": True}]
    for result in results:
        if result["status"] == 201:
            entry = await client.get(
                f"/v1/audit/entries/{result['referral']['audit_entry_id']}", headers=headers
            )
            assert (await entry.json())["entry"]["subject_id"] == result["referral"]["id"]
    # Each new referral reached the provider's feed once.
    feed = await (await client.get("/v1/feed", headers=await bearer(client, provider))).json()
    submitted = [e["data"]["referral"]["id"] for e in feed["events"] if e["type"] == "referral.submitted"]
    assert sorted(submitted) == sorted([_body["referral"]["id"], first, last])


async def test_overlapping_referrals_are_linked(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    second_authority = await make_party(client, kind="authority", country="FR")
    url = "https://video.example.com/watch?v=shared"
    _, first, _ = await submit(client, authority, referral_claims(authority, provider, items=[{"url": url}]))
    _, second, _ = await submit(
        client,
        second_authority,
        referral_claims(
            second_authority,
            provider,
            items=[{"url": "HTTPS://VIDEO.example.com:443/watch?v=shared#t=10"}],
        ),
    )
    seen_by_first = await (
        await client.get(f"/v1/referrals/{first['referral']['id']}", headers=await bearer(client, authority))
    ).json()
    assert seen_by_first["related"] == [{"referral_id": second["referral"]["id"], "same_issuer": False}]
    seen_by_provider = await (
        await client.get(f"/v1/referrals/{second['referral']['id']}", headers=await bearer(client, provider))
    ).json()
    assert seen_by_provider["related"] == [{"referral_id": first["referral"]["id"], "same_issuer": False}]
    # The other authority's referral itself stays invisible.
    hidden = await client.get(
        f"/v1/referrals/{second['referral']['id']}", headers=await bearer(client, authority)
    )
    assert hidden.status == 404


async def test_overlaps_are_looked_up_per_provider_by_url_and_by_content_hash(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    other_provider = await make_party(client, kind="provider")
    url, digest = "https://video.example.com/watch?v=pair", "ab" * 32
    _, first, _ = await submit(
        client,
        authority,
        referral_claims(authority, provider, items=[{"url": url, "content_sha256": digest}]),
    )
    # The same URL to another provider is another provider's matter.
    _, elsewhere, _ = await submit(
        client, authority, referral_claims(authority, other_provider, items=[{"url": url}])
    )
    # The same content at another URL, to the same provider, overlaps.
    _, same_content, _ = await submit(
        client,
        authority,
        referral_claims(
            authority, provider, items=[{"url": "https://mirror.example.net/copy", "content_sha256": digest}]
        ),
    )
    headers = await bearer(client, authority)

    async def related(body: dict[str, Any]) -> list[str]:
        view = await (await client.get(f"/v1/referrals/{body['referral']['id']}", headers=headers)).json()
        return [link["referral_id"] for link in view["related"]]

    assert await related(elsewhere) == []
    assert await related(same_content) == [first["referral"]["id"]]
    assert await related(first) == [same_content["referral"]["id"]]


async def test_only_open_referrals_are_looked_up_for_overlaps(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    """A withdrawn referral covers nothing any more: a later one with its URL and hash is not linked to it,
    while one still open is (single submissions and batches go through the same look-up)."""
    url, digest = "https://video.example.com/watch?v=closed", "ef" * 32
    items = [{"url": url, "content_sha256": digest}]
    _, withdrawn, _ = await submit(client, authority, referral_claims(authority, provider, items=items))
    withdrawn_id = withdrawn["referral"]["id"]
    status, body = await post_status(
        client, authority, withdrawn_id, status_claims(authority, withdrawn_id, "withdrawn")
    )
    assert status == 201, body
    _, still_open, _ = await submit(client, authority, referral_claims(authority, provider, items=items))
    response = await client.post(
        "/v1/referrals:batch",
        json={"documents": [sign_document(authority, referral_claims(authority, provider, items=items))]},
        headers=await bearer(client, authority),
    )
    (batched,) = (await response.json())["results"]
    headers = await bearer(client, authority)

    async def related(referral_id: str) -> list[str]:
        view = await (await client.get(f"/v1/referrals/{referral_id}", headers=headers)).json()
        return [link["referral_id"] for link in view["related"]]

    assert await related(still_open["referral"]["id"]) == [batched["referral"]["id"]]
    assert await related(batched["referral"]["id"]) == [still_open["referral"]["id"]]
    assert await related(withdrawn_id) == []


async def test_a_batch_to_several_providers_is_linked_by_each_providers_own_urls_and_hashes(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    """A batch's documents to several providers are looked up together: a URL or hash stored for one
    provider never links a document to another provider that happens to be in the same batch."""
    other = await make_party(client, kind="provider")
    first_url, second_url, digest = "https://a.example/1", "https://b.example/2", "ef" * 32
    _, to_first, _ = await submit(
        client, authority, referral_claims(authority, provider, items=[{"url": first_url}])
    )
    _, to_second, _ = await submit(
        client,
        authority,
        referral_claims(authority, other, items=[{"url": second_url, "content_sha256": digest}]),
    )
    documents = [
        # The other provider's URL and hash, to the first provider: nothing of the first's.
        sign_document(
            authority,
            referral_claims(authority, provider, items=[{"url": second_url, "content_sha256": digest}]),
        ),
        # The other provider's hash at a new URL, to the other provider: linked to its referral.
        sign_document(
            authority,
            referral_claims(
                authority, other, items=[{"url": "https://c.example/3", "content_sha256": digest}]
            ),
        ),
        # The first provider's URL, to the first provider: linked to its referral.
        sign_document(authority, referral_claims(authority, provider, items=[{"url": first_url}])),
    ]
    response = await client.post(
        "/v1/referrals:batch", json={"documents": documents}, headers=await bearer(client, authority)
    )
    results = (await response.json())["results"]
    assert [result["status"] for result in results] == [201, 201, 201]
    headers = await bearer(client, authority)

    async def related(referral_id: str) -> list[str]:
        view = await (await client.get(f"/v1/referrals/{referral_id}", headers=headers)).json()
        return [link["referral_id"] for link in view["related"]]

    assert await related(results[0]["referral"]["id"]) == []
    assert await related(results[1]["referral"]["id"]) == [to_second["referral"]["id"]]
    assert await related(results[2]["referral"]["id"]) == [to_first["referral"]["id"]]


async def test_the_sqlite_overlap_look_up_probes_the_item_indexes(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, backend: str
) -> None:
    """Per addressee ``addressee_id = ? AND url IN (...)``: SQLite uses no index for a row-value ``IN
    (VALUES ...)`` and read every referral for each look-up. (PostgreSQL's look-up is ``referral_overlaps``,
    whose plans ``tests/referrals/test_group_commit.py`` checks.)"""
    if backend != "sqlite":
        pytest.skip("the look-up checked here is SQLite's")
    app = client.server.app
    assert app is not None
    engine = app[sessionmaker_key].kw["bind"]
    with sent_statements(engine, "FROM referral_items JOIN referrals") as looked_up:
        items = [{"url": "https://video.example.com/watch?v=1", "content_sha256": "cd" * 32}]
        for _ in range(2):
            status, body, _ = await submit(
                client, authority, referral_claims(authority, provider, items=items)
            )
            assert status == 201, body
    assert len(looked_up) == 4, "a URL and a content hash look-up per submission"
    async with engine.connect() as connection:
        for statement, parameters in looked_up:
            plan = " / ".join(
                str(row[3])
                for row in await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            )
            assert "SCAN" not in plan, plan
            assert "USING INDEX ix_referral_items_addressee_id_" in plan, plan


async def test_unsupported_media_type_and_bad_json(
    client: TestClient[Any, Any], authority: TestParty
) -> None:
    headers = await bearer(client, authority)
    response = await client.post("/v1/referrals", data="x", headers={**headers, "Content-Type": "text/plain"})
    assert response.status == 415
    response = await client.post(
        "/v1/referrals", data="{", headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status == 400
    response = await client.post(
        "/v1/referrals", data="a.b", headers={**headers, "Content-Type": "application/jose"}
    )
    assert response.status == 400


async def test_unauthenticated_and_wrong_kind(client: TestClient[Any, Any], provider: TestParty) -> None:
    assert (await client.post("/v1/referrals", data="x")).status == 401
    response = await client.post(
        "/v1/referrals",
        data="a.b.c",
        headers={**await bearer(client, provider), "Content-Type": "application/jose"},
    )
    assert response.status == 403


def test_new_key_helper_is_independent() -> None:
    assert new_key("EC").get("crv") == "P-256"


async def test_lapsed_preservations_expire(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    _, body, _ = await submit(client, authority, referral_claims(authority, provider, "preservation_request"))
    referral_id = body["referral"]["id"]
    for step in ("acknowledged", "preserved"):
        code, answer = await post_status(
            client, provider, referral_id, status_claims(provider, referral_id, step)
        )
        assert code == 201, answer
    app = client.server.app
    assert app is not None
    preserved_until = datetime.fromisoformat(answer["referral"]["preserved_until"])
    async with app[sessionmaker_key].begin() as session:
        assert await expire_preservations(session, now=preserved_until - timedelta(seconds=1)) == 0
    async with app[sessionmaker_key].begin() as session:
        assert await expire_preservations(session, now=preserved_until) == 1
    detail = await (
        await client.get(f"/v1/referrals/{referral_id}", headers=await bearer(client, authority))
    ).json()
    assert detail["status"] == "expired"
    assert detail["closed_at"] is not None
    assert detail["history"][-1]["status"] == "expired"
    assert detail["history"][-1]["actor"] is None
    async with app[sessionmaker_key]() as session:
        actions = set((await session.execute(select(AuditEntry.action))).scalars())
    assert "referral.expired" in actions
    # A lapsed preservation cannot be extended any more.
    code, _ = await post_status(
        client, provider, referral_id, status_claims(provider, referral_id, "preservation_extended")
    )
    assert code == 409
