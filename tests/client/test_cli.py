"""The user commands drive a referral end to end against a live service, as a person at a terminal would."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from referral.demo import seed
from tests.client.conftest import EXAMPLES, LiveService, Party, removal_order, run_cli


@pytest.fixture(autouse=True)
def no_default_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No profile of the machine's user, and no REFERRAL_* credentials, leak into these tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for variable in ("REFERRAL_PROFILE", "REFERRAL_URL", "REFERRAL_PARTY_ID", "REFERRAL_CLIENT_ID"):
        monkeypatch.delenv(variable, raising=False)


async def onboard(live: LiveService, directory: Path, *, kind: str, key_type: str) -> Path:
    """Make keys with ``referral keygen``, register them with the operator commands, write a TOML profile."""
    settings = live.settings
    keys = {}
    for role, kind_of_key in (("signing", key_type), ("client", "ed25519")):
        generated = await run_cli(
            settings,
            "keygen",
            "--type",
            kind_of_key,
            "--out",
            str(directory / f"{kind}-{role}.jwk"),
            "--json",
        )
        assert generated.status == 0, generated.err
        keys[role] = generated.json()
        assert stat.S_IMODE((directory / f"{kind}-{role}.jwk").stat().st_mode) == 0o600
        assert "d" not in keys[role]["public_jwk"]
        assert '"d"' not in generated.out
    party = await run_cli(
        settings, "parties", "add", "--kind", kind, "--name", f"{kind} one", "--country", "FR"
    )
    party_id = json.loads(party.out)["id"]
    added = await run_cli(
        settings, "keys", "add", "--party", party_id, "--jwk", keys["signing"]["public_key_file"]
    )
    assert json.loads(added.out) == {"kid": keys["signing"]["kid"]}
    client = await run_cli(
        settings, "clients", "add", "--party", party_id, "--jwk", keys["client"]["public_key_file"]
    )
    client_id = json.loads(client.out)["client_id"]
    profile = directory / f"{kind}.toml"
    profile.write_text(
        f'url = "{live.url}"\nparty_id = "{party_id}"\nclient_id = "{client_id}"\n'
        f'client_key_file = "{kind}-client.jwk"\nsigning_key_file = "{kind}-signing.jwk"\n',
        encoding="utf-8",
    )
    return profile


async def test_a_referral_from_keygen_to_audit_proof(live: LiveService, tmp_path: Path) -> None:
    settings = live.settings
    authority = await onboard(live, tmp_path, kind="authority", key_type="ed25519")
    provider = await onboard(live, tmp_path, kind="provider", key_type="p256")
    as_authority, as_provider = ["--profile", str(authority)], ["--profile", str(provider)]

    # The authority names the provider as the directory does; the CLI signs and verifies the receipt.
    order = tmp_path / "order.json"
    order.write_text(json.dumps(removal_order("to be replaced", case_reference="CLI-1")), encoding="utf-8")
    submitted = await run_cli(settings, "submit", str(order), "--addressee", "provider one", *as_authority)
    assert submitted.status == 0, submitted.err
    result = submitted.json()
    referral_id = result["referral"]["id"]
    assert result["created"] is True
    assert result["receipt_claims"]["referral_id"] == referral_id
    assert "jws" not in result  # the signed payload is not echoed back
    (tmp_path / "submitted.json").write_text(submitted.out, encoding="utf-8")

    batch = tmp_path / "batch.json"
    provider_id = result["referral"]["addressee"]
    batch.write_text(
        json.dumps(
            [removal_order(provider_id, case_reference="CLI-2"), removal_order(provider_id, items=[])]
        ),
        encoding="utf-8",
    )
    batched = await run_cli(settings, "submit", str(batch), *as_authority, "--json")
    assert batched.status == 1  # one of the two was refused
    assert [item["status"] for item in batched.json()["results"]] == [201, 422]
    assert batched.json()["results"][1]["error"]["errors"][0]["loc"] == ["payload", "items"]

    # The provider lists, reads, acknowledges and reports what it did, item by item.
    listed = await run_cli(settings, "referrals", "list", "--type", "removal_order", *as_provider, "--json")
    assert {referral["case_reference"] for referral in listed.json()["referrals"]} == {"CLI-1", "CLI-2"}
    shown = await run_cli(settings, "referrals", "show", referral_id, *as_provider, "--human")
    assert shown.status == 0, shown.err
    assert "https://video.example.com/watch?v=Zk3pQ9xT2bA" in shown.out
    assert "delivered" in shown.out
    acknowledged = await run_cli(settings, "status", referral_id, "--set", "acknowledged", *as_provider)
    assert acknowledged.json()["referral"]["status"] == "acknowledged"
    actioned = await run_cli(
        settings,
        "status",
        referral_id,
        "--set",
        "action_taken",
        "--item",
        "*=removed",
        "--item",
        "1=access_disabled:DE,AT",
        *as_provider,
        "--human",
    )
    assert actioned.status == 0, actioned.err
    assert "recorded: action_taken" in actioned.out
    history = (await run_cli(settings, "referrals", "show", referral_id, *as_provider)).json()["history"]
    assert history[-1]["document"]["items"] == [
        {"index": 0, "outcome": "removed"},
        {"index": 1, "outcome": "access_disabled", "territories": ["DE", "AT"]},
        {"index": 2, "outcome": "removed"},
    ]
    refused = await run_cli(settings, "status", referral_id, "--set", "in_review", *as_provider, "--human")
    assert refused.status == 1
    assert "allowed next: contested" in refused.err

    # Anyone can check the receipt; a party can also check the service stores what it covers.
    verified = await run_cli(
        settings, "receipt", "verify", str(tmp_path / "submitted.json"), "--url", live.url
    )
    assert verified.status == 0, verified.err
    assert verified.json()["claims"]["referral_id"] == referral_id
    checked = await run_cli(
        settings, "receipt", "verify", result["receipt"], "--check-referral", *as_provider, "--human"
    )
    assert checked.status == 0, checked.err
    assert "matches the document the service stores" in checked.out
    forged = result["receipt"][:-4] + ("AAAA" if not result["receipt"].endswith("AAAA") else "BBBB")
    assert (await run_cli(settings, "receipt", "verify", forged, "--url", live.url)).status == 1

    # The submission's audit entry is proven in the log, with a pinned verifier key.
    vkey = await run_cli(settings, "audit", "prove", result["receipt_claims"]["audit_entry_id"], *as_provider)
    assert vkey.status == 0, vkey.err
    proof: dict[str, Any] = vkey.json()
    assert proof["ok"] is True
    assert proof["entry"]["subject_id"] == referral_id
    assert proof["leaf_index"] < proof["tree_size"]
    pinned = await run_cli(
        settings, "audit", "prove", proof["entry"]["id"], "--vkey", proof["vkey"], *as_authority, "--human"
    )
    assert pinned.status == 0, pinned.err
    assert "checkpoint signature and inclusion proof" in pinned.out
    other_log = proof["vkey"].replace(live.settings.audit_origin, "other.example/log")
    wrong = await run_cli(settings, "audit", "prove", proof["entry"]["id"], "--vkey", other_log, *as_provider)
    assert wrong.status == 1
    assert "does not verify" in wrong.err


async def test_the_demo_credentials_are_profiles(live: LiveService, tmp_path: Path) -> None:
    settings = live.settings
    await seed(settings)
    demo = settings.var_dir / "demo"
    # No --url: the demo files name none, and the CLI falls back to the service's public URL setting.
    listed = await run_cli(settings, "referrals", "list", "--profile", str(demo / "provider.json"))
    assert listed.status == 0, listed.err
    assert len(listed.json()["referrals"]) == 4

    # The example is content from another party and day: the CLI signs it as the demo authority, now;
    # its confidentiality date lies before today, which the service refuses with the field named.
    example = EXAMPLES / "removal_order.json"
    options = ["--profile", str(demo / "authority.json"), "--addressee", "Demo Video Platform", "--human"]
    stale = await run_cli(settings, "submit", str(example), *options)
    assert stale.status == 1
    assert "confidentiality.do_not_inform_until must not be before the day of iat" in stale.err
    current = tmp_path / "removal_order.json"
    document = json.loads(example.read_text(encoding="utf-8"))
    document.pop("confidentiality")
    current.write_text(json.dumps(document), encoding="utf-8")
    submitted = await run_cli(settings, "submit", str(current), *options)
    assert submitted.status == 0, submitted.err
    assert submitted.out.startswith("accepted: removal_order ")

    nobody = await run_cli(settings, "submit", str(current), "--addressee", "No Such Host", *options[:2])
    assert nobody.status == 2
    assert "Demo Video Platform" in nobody.err


async def test_missing_or_exposed_credentials_are_refused_before_any_request(
    live: LiveService, authority: Party, tmp_path: Path
) -> None:
    settings = live.settings
    missing = await run_cli(settings, "referrals", "list", "--url", live.url, "--human")
    assert missing.status == 2
    assert "no credentials" in missing.err
    authority.profile.chmod(0o644)
    exposed = await run_cli(settings, "referrals", "list", "--profile", str(authority.profile), "--human")
    assert exposed.status == 2
    assert "chmod 600" in exposed.err
    # Nothing secret reaches the terminal, even in errors.
    private = json.loads(authority.profile.read_text())["client_key"]["d"]
    assert private not in exposed.err + exposed.out
