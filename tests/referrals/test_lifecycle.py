"""The lifecycle of DESIGN §5, checked exhaustively: for every type, current and next status, and actor."""

from __future__ import annotations

import pytest

from referral.core.errors import Conflict, Forbidden
from referral.referrals.documents import DocumentType, Status
from referral.referrals.lifecycle import (
    Actor,
    InvalidTransition,
    WrongActor,
    allowed_transitions,
    check_transition,
    is_open,
    is_terminal,
)

# The expected tables, written out by hand from DESIGN §5 and not derived from the code under test.
# One line per transition: current status, next status, the one actor who may make it.
REFERRAL_AND_REMOVAL_ORDER = """
submitted           delivered           server
submitted           acknowledged        provider
submitted           withdrawn           authority
delivered           acknowledged        provider
delivered           withdrawn           authority
acknowledged        in_review           provider
acknowledged        action_taken        provider
acknowledged        partially_actioned  provider
acknowledged        no_action           provider
acknowledged        info_requested      provider
acknowledged        withdrawn           authority
in_review           action_taken        provider
in_review           partially_actioned  provider
in_review           no_action           provider
in_review           info_requested      provider
in_review           withdrawn           authority
info_requested      info_provided       authority
info_requested      no_action           provider
info_requested      withdrawn           authority
info_provided       in_review           provider
info_provided       action_taken        provider
info_provided       partially_actioned  provider
info_provided       no_action           provider
info_provided       info_requested      provider
info_provided       withdrawn           authority
action_taken        contested           provider
partially_actioned  contested           provider
contested           upheld              provider
contested           reinstated          provider
"""

PRESERVATION_REQUEST = """
submitted               delivered               server
submitted               acknowledged            provider
submitted               withdrawn               authority
delivered               acknowledged            provider
delivered               withdrawn               authority
acknowledged            preserved               provider
acknowledged            no_action               provider
acknowledged            info_requested          provider
acknowledged            withdrawn               authority
info_requested          info_provided           authority
info_requested          no_action               provider
info_requested          withdrawn               authority
info_provided           preserved               provider
info_provided           no_action               provider
info_provided           info_requested          provider
info_provided           withdrawn               authority
preserved               preservation_extended   provider
preserved               preservation_released   provider
preserved               expired                 server
preserved               withdrawn               authority
preservation_extended   preservation_extended   provider
preservation_extended   preservation_released   provider
preservation_extended   expired                 server
preservation_extended   withdrawn               authority
"""

ALL_STATUSES = [
    "submitted",
    "delivered",
    "acknowledged",
    "in_review",
    "info_requested",
    "info_provided",
    "action_taken",
    "partially_actioned",
    "no_action",
    "preserved",
    "preservation_extended",
    "preservation_released",
    "expired",
    "withdrawn",
    "contested",
    "upheld",
    "reinstated",
]
ALL_ACTORS = ["authority", "provider", "server"]
OPEN = {
    "submitted",
    "delivered",
    "acknowledged",
    "in_review",
    "info_requested",
    "info_provided",
    "preserved",
    "preservation_extended",
}
TERMINAL = {"no_action", "upheld", "reinstated", "withdrawn", "preservation_released", "expired"}


def parse(table: str) -> dict[str, dict[str, str]]:
    """{current: {next: actor}} from the lines of a table."""
    transitions: dict[str, dict[str, str]] = {}
    for line in table.strip().splitlines():
        current, following, actor = line.split()
        assert following not in transitions.get(current, {}), f"duplicate line {line!r}"
        transitions.setdefault(current, {})[following] = actor
    return transitions


EXPECTED = {
    "referral": parse(REFERRAL_AND_REMOVAL_ORDER),
    "removal_order": parse(REFERRAL_AND_REMOVAL_ORDER),
    "preservation_request": parse(PRESERVATION_REQUEST),
}
CASES = [(kind, current) for kind in EXPECTED for current in ALL_STATUSES]


def test_the_tables_name_only_known_statuses_and_actors() -> None:
    assert sorted(ALL_STATUSES) == sorted(status.value for status in Status)
    assert sorted(ALL_ACTORS) == sorted(actor.value for actor in Actor)
    assert sorted(EXPECTED) == sorted(kind.value for kind in DocumentType)
    for transitions in EXPECTED.values():
        for current, following in transitions.items():
            assert current in ALL_STATUSES
            assert set(following) <= set(ALL_STATUSES)
            assert set(following.values()) <= set(ALL_ACTORS)


@pytest.mark.parametrize(("kind", "current"), CASES)
def test_allowed_transitions_match_the_table(kind: str, current: str) -> None:
    expected = {following: {actor} for following, actor in EXPECTED[kind].get(current, {}).items()}
    assert allowed_transitions(DocumentType(kind), Status(current)) == expected


@pytest.mark.parametrize(("kind", "current"), CASES)
def test_check_transition_for_every_next_status_and_actor(kind: str, current: str) -> None:
    expected = EXPECTED[kind].get(current, {})
    allowed_next = sorted(expected)
    mismatches = []
    for following in ALL_STATUSES:
        for actor in ALL_ACTORS:
            outcome: tuple[str, list[str] | None]
            try:
                check_transition(DocumentType(kind), Status(current), Status(following), Actor(actor))
            except InvalidTransition as refusal:
                outcome = ("invalid", refusal.allowed)
            except WrongActor as refusal:
                outcome = ("wrong actor", refusal.allowed_actors)
            else:
                outcome = ("ok", None)
            if following not in expected:
                wanted: tuple[str, list[str] | None] = ("invalid", allowed_next)
            elif expected[following] != actor:
                wanted = ("wrong actor", [expected[following]])
            else:
                wanted = ("ok", None)
            if outcome != wanted:
                mismatches.append(f"{current} -> {following} by {actor}: got {outcome}, expected {wanted}")
    assert mismatches == []


@pytest.mark.parametrize("status", ALL_STATUSES)
def test_open_and_terminal_statuses(status: str) -> None:
    assert is_open(Status(status)) is (status in OPEN)
    assert is_terminal(Status(status)) is (status in TERMINAL)


def test_terminal_statuses_lead_nowhere_and_open_ones_can_be_withdrawn() -> None:
    for kind, transitions in EXPECTED.items():
        for status in TERMINAL:
            assert allowed_transitions(DocumentType(kind), Status(status)) == {}
        for status, following in transitions.items():
            if status in OPEN:
                assert following["withdrawn"] == "authority", (kind, status)


def test_an_invalid_transition_is_a_409_problem_listing_the_allowed_next_statuses() -> None:
    with pytest.raises(InvalidTransition) as refusal:
        check_transition(DocumentType.REMOVAL_ORDER, Status.DELIVERED, Status.ACTION_TAKEN, Actor.PROVIDER)
    problem = refusal.value
    assert isinstance(problem, Conflict)
    assert problem.status == 409
    assert problem.type_uri == "https://referral.dev/problems/invalid-transition"
    assert problem.detail == "'action_taken' cannot follow 'delivered'; allowed next: acknowledged, withdrawn"
    body = problem.body(instance="/v1/referrals/x/statuses", request_id="r-1")
    assert body["allowed"] == ["acknowledged", "withdrawn"]
    assert body["current_status"] == "delivered"
    assert body["requested_status"] == "action_taken"


def test_nothing_follows_a_final_status() -> None:
    with pytest.raises(InvalidTransition, match=r"allowed next: none \(it is final\)") as refusal:
        check_transition(DocumentType.REFERRAL, Status.WITHDRAWN, Status.ACKNOWLEDGED, Actor.PROVIDER)
    assert refusal.value.allowed == []


def test_the_wrong_party_is_a_403_problem_naming_who_may() -> None:
    with pytest.raises(WrongActor) as refusal:
        check_transition(DocumentType.REFERRAL, Status.IN_REVIEW, Status.WITHDRAWN, Actor.PROVIDER)
    problem = refusal.value
    assert isinstance(problem, Forbidden)
    assert problem.status == 403
    assert problem.type_uri == "https://referral.dev/problems/wrong-actor"
    assert problem.detail == "the provider cannot set 'withdrawn' after 'in_review'; only the authority can"
    assert problem.body(instance=None, request_id=None)["allowed_actors"] == ["authority"]


def test_allowed_transitions_returns_a_copy() -> None:
    allowed = allowed_transitions(DocumentType.REFERRAL, Status.SUBMITTED)
    allowed[Status.SUBMITTED] = {Actor.SERVER}
    allowed[Status.DELIVERED].add(Actor.AUTHORITY)
    assert allowed_transitions(DocumentType.REFERRAL, Status.SUBMITTED) == {
        Status.DELIVERED: {Actor.SERVER},
        Status.ACKNOWLEDGED: {Actor.PROVIDER},
        Status.WITHDRAWN: {Actor.AUTHORITY},
    }
