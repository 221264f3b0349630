"""The SDK drives a whole removal order through a live service: authority and provider, receipts, audit."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jwcrypto import jwk, jws

from referral.client import (
    AuthenticationError,
    ConflictError,
    EntryProof,
    NotFoundError,
    NotSequencedError,
    PermissionDeniedError,
    ReferralClient,
    ValidationFailedError,
    VerificationError,
)
from referral.client.audit import verify_checkpoint
from tests.client.conftest import (
    FAST_RETRY,
    LiveService,
    Party,
    eventually,
    register_party,
    removal_order,
    sdk,
)


async def prove(client: ReferralClient, entry_id: str, **options: str) -> EntryProof:
    """The entry's proof once the in-process sequencer has put it in a signed checkpoint."""

    async def attempt() -> EntryProof:
        try:
            return await client.prove_entry(entry_id, **options)
        except NotSequencedError as exc:
            raise AssertionError("not sequenced yet") from exc

    proof: EntryProof = await eventually(attempt)
    return proof


async def test_removal_order_lifecycle_through_the_sdk(
    live: LiveService, authority: Party, provider: Party
) -> None:
    async with sdk(live, authority) as issuer, sdk(live, provider) as host:
        submission = await issuer.submit(removal_order(provider.party_id, case_reference="SDK-1"))
        assert submission.created
        referral_id = submission.referral_id
        assert submission.referral["status"] == "submitted"
        assert submission.receipt.referral_id == referral_id
        assert submission.receipt.jws_sha256 == hashlib.sha256(submission.compact.encode()).hexdigest()

        # The document on the wire: the party's kid and typ, an RFC 8785 payload, checked by jwcrypto.
        token = jws.JWS()
        token.deserialize(submission.compact)
        key = jwk.JWK(**authority.credentials.signing_key.public_jwk())  # type: ignore[union-attr]
        token.verify(key)
        header = token.jose_header
        assert (header["typ"], header["kid"], header["alg"]) == ("referral+jws", key["kid"], "EdDSA")
        claims = json.loads(token.payload)
        assert (
            token.payload
            == json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        )
        assert claims["iss"] == authority.party_id
        assert claims["case_reference"] == "SDK-1"

        # Sending the same signed bytes again is an idempotent repeat; the same jti with other bytes is not.
        repeat = await issuer.submit(submission.compact)
        assert not repeat.created
        assert repeat.referral_id == referral_id
        with pytest.raises(ConflictError) as conflict:
            await issuer.submit(removal_order(provider.party_id, jti=claims["jti"], case_reference="other"))
        assert conflict.value.slug == "jti-conflict"
        assert conflict.value.request_id

        batch = await issuer.submit_batch(
            [
                removal_order(provider.party_id, case_reference="SDK-2"),
                removal_order(provider.party_id, items=[]),
                removal_order(provider.party_id, case_reference="SDK-3"),
            ]
        )
        assert [result.status for result in batch] == [201, 422, 201]
        refused = batch[1].problem
        assert isinstance(refused, ValidationFailedError)
        assert refused.errors[0]["loc"] == ["payload", "items"]
        accepted = [result.submission for result in batch if result.submission is not None]
        assert all(item.receipt.referral_id == item.referral_id for item in accepted)

        # The provider lists (which delivers), reads, acknowledges and reports the action.
        listed = [referral async for referral in host.iter_referrals(type="removal_order", limit=2)]
        assert {referral["id"] for referral in listed} == {referral_id, *(s.referral_id for s in accepted)}
        assert {referral["status"] for referral in listed} == {"delivered"}
        detail = await host.get_referral(referral_id)
        assert detail["jws"] == submission.compact
        assert detail["receipt"] == submission.receipt.compact

        acknowledged = await host.post_status(referral_id, "acknowledged")
        assert acknowledged.created
        assert acknowledged.referral["status"] == "acknowledged"
        assert acknowledged.receipt.claims["status"] == "acknowledged"
        effective = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        actioned = await host.post_status(
            referral_id,
            "action_taken",
            items=[
                {"index": 0, "outcome": "removed"},
                {"index": 1, "outcome": "account_suspended"},
                {"index": 2, "outcome": "access_disabled", "territories": ["DE", "AT"]},
            ],
            effective_at=effective,
        )
        assert actioned.referral["status"] == "action_taken"
        assert actioned.status["previous_status"] == "acknowledged"
        with pytest.raises(ConflictError) as invalid:
            await host.post_status(referral_id, "in_review")
        assert invalid.value.extensions["allowed"] == ["contested"]
        with pytest.raises(PermissionDeniedError) as wrong_actor:
            await issuer.post_status(accepted[0].referral_id, "acknowledged")
        assert wrong_actor.value.slug == "wrong-actor"

        # Both parties can check the receipts later against the service's published keys.
        again = await issuer.verify_receipt(actioned.receipt.compact, document=actioned.compact)
        assert again.claims["status_id"] == actioned.status["id"]
        with pytest.raises(VerificationError):
            await issuer.verify_receipt(actioned.receipt.compact, document=submission.compact)
        forged = (
            actioned.receipt.compact.rsplit(".", 1)[0] + "." + acknowledged.receipt.compact.rsplit(".", 1)[1]
        )
        with pytest.raises(VerificationError):
            await issuer.verify_receipt(forged)

        # The submission's audit entry is proven to be in the log under a checkpoint signed by the service.
        vkey = await issuer.audit_vkey()
        proof = await prove(issuer, submission.receipt.audit_entry_id, vkey=vkey)
        assert proof.entry["action"] == "referral.submitted"
        assert proof.entry["subject_id"] == referral_id
        assert proof.entry["digest"] == submission.receipt.jws_sha256
        assert proof.leaf_index < proof.checkpoint.size
        assert proof.checkpoint.origin == live.settings.audit_origin
        status_proof = await prove(host, actioned.receipt.audit_entry_id)
        assert status_proof.entry["action"] == "status.recorded"
        assert status_proof.entry["digest"] == actioned.receipt.jws_sha256
        assert (await host.checkpoint(vkey=vkey)).size >= status_proof.checkpoint.size

        # A checkpoint does not verify with another log's key, nor a proof for another leaf.
        with pytest.raises(VerificationError):
            verify_checkpoint(
                proof.note, "other.example/log+00000000+" + base64.b64encode(bytes(33)).decode()
            )
        with pytest.raises(NotFoundError):
            await host.prove_entry("01a20000-0000-7000-8000-000000000000")


async def test_refusals_arrive_as_typed_problems(
    live: LiveService, authority: Party, provider: Party, tmp_path: Path
) -> None:
    other_provider = await register_party(live, tmp_path, kind="provider")
    async with (
        ReferralClient.from_profile(authority.profile, retry=FAST_RETRY) as issuer,
        sdk(live, provider) as host,
        sdk(live, other_provider) as other,
    ):
        submission = await issuer.submit(removal_order(provider.party_id))
        with pytest.raises(PermissionDeniedError) as refused:
            await host.submit(removal_order(provider.party_id))
        assert refused.value.status == 403
        assert refused.value.extensions["required_scope"] == "referrals:write"
        with pytest.raises(ValidationFailedError) as invalid:
            await issuer.submit(removal_order(str(uuid.uuid4())))
        assert invalid.value.errors[0]["loc"] == ["payload", "addressee"]
        # Another provider is told the referral does not exist.
        with pytest.raises(NotFoundError):
            await other.get_referral(submission.referral_id)
    # A client assertion signed with another client's key is refused at the token endpoint.
    impostor = replace(provider.credentials, client_key=authority.credentials.client_key)
    async with ReferralClient(live.url, impostor, retry=FAST_RETRY) as client:
        with pytest.raises(AuthenticationError) as unauthenticated:
            await client.get_referral(submission.referral_id)
    assert unauthenticated.value.status == 401
    assert unauthenticated.value.extensions["error"] == "invalid_client"
