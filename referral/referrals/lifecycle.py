"""Which status may follow which, and who may set it (DESIGN §5): pure rules, no I/O.

Referrals and removal orders::

    submitted                        → delivered (server), acknowledged (provider)
    delivered                        → acknowledged (provider)
    acknowledged, info_provided      → in_review, action_taken, partially_actioned, no_action, info_requested
                                       (provider)
    in_review                        → action_taken, partially_actioned, no_action, info_requested (provider)
    info_requested                   → info_provided (authority), no_action (provider)
    action_taken, partially_actioned → contested (provider, on the content owner's complaint)
    contested                        → upheld, reinstated (provider)

Preservation requests: as above up to ``acknowledged``, then::

    acknowledged, info_provided      → preserved, no_action, info_requested (provider)
    info_requested                   → info_provided (authority), no_action (provider)
    preserved, preservation_extended → preservation_extended, preservation_released (provider),
                                       expired (server)

The authority may withdraw from every open status. ``acknowledged`` may also follow ``submitted`` directly: a
provider's webhook receiver may sign its acknowledgement before it answers the webhook 2xx that would have
recorded ``delivered``, and refusing that race would punish the fastest integrations. Such an acknowledgement
is also the delivery: the service should record both at once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from referral.core.errors import Conflict, Forbidden
from referral.referrals.documents import DocumentType, Status


class Actor(StrEnum):
    """Who makes a transition: the issuing authority, the addressed provider, or the service itself."""

    AUTHORITY = "authority"
    PROVIDER = "provider"
    SERVER = "server"


# The request is still in force: the authority may withdraw it, and its deadline or preservation is running.
OPEN_STATUSES: Final = frozenset(
    {
        Status.SUBMITTED,
        Status.DELIVERED,
        Status.ACKNOWLEDGED,
        Status.IN_REVIEW,
        Status.INFO_REQUESTED,
        Status.INFO_PROVIDED,
        Status.PRESERVED,
        Status.PRESERVATION_EXTENDED,
    }
)
# Nothing may follow. action_taken, partially_actioned and contested are neither open nor terminal: the
# provider has decided, but the content owner may still contest the decision or the contest is pending.
TERMINAL_STATUSES: Final = frozenset(
    {
        Status.NO_ACTION,
        Status.UPHELD,
        Status.REINSTATED,
        Status.WITHDRAWN,
        Status.PRESERVATION_RELEASED,
        Status.EXPIRED,
    }
)

_DECISIONS = (Status.ACTION_TAKEN, Status.PARTIALLY_ACTIONED, Status.NO_ACTION)
_PRESERVATION_ONGOING = {
    Status.PRESERVATION_EXTENDED: Actor.PROVIDER,
    Status.PRESERVATION_RELEASED: Actor.PROVIDER,
    Status.EXPIRED: Actor.SERVER,
}
_RECEIPT: dict[Status, dict[Status, Actor]] = {
    Status.SUBMITTED: {Status.DELIVERED: Actor.SERVER, Status.ACKNOWLEDGED: Actor.PROVIDER},
    Status.DELIVERED: {Status.ACKNOWLEDGED: Actor.PROVIDER},
}
# From info_requested the provider may still close with no_action: an authority that never answers must not
# hold the request open forever (TCO Annex III: "insufficient information").
_INFO_REQUESTED = {Status.INFO_PROVIDED: Actor.AUTHORITY, Status.NO_ACTION: Actor.PROVIDER}

_REVIEW_STEPS = dict.fromkeys((Status.IN_REVIEW, *_DECISIONS, Status.INFO_REQUESTED), Actor.PROVIDER)
_REVIEW_TRANSITIONS: dict[Status, dict[Status, Actor]] = {
    **_RECEIPT,
    Status.ACKNOWLEDGED: _REVIEW_STEPS,
    Status.IN_REVIEW: {
        status: actor for status, actor in _REVIEW_STEPS.items() if status is not Status.IN_REVIEW
    },
    Status.INFO_REQUESTED: _INFO_REQUESTED,
    Status.INFO_PROVIDED: _REVIEW_STEPS,
    Status.ACTION_TAKEN: {Status.CONTESTED: Actor.PROVIDER},
    Status.PARTIALLY_ACTIONED: {Status.CONTESTED: Actor.PROVIDER},
    Status.CONTESTED: {Status.UPHELD: Actor.PROVIDER, Status.REINSTATED: Actor.PROVIDER},
}
# Preservation has no in_review: data is frozen first and assessed later, under a separate disclosure order.
_PRESERVATION_STEPS = {
    Status.PRESERVED: Actor.PROVIDER,
    Status.NO_ACTION: Actor.PROVIDER,
    Status.INFO_REQUESTED: Actor.PROVIDER,
}
_PRESERVATION_TRANSITIONS: dict[Status, dict[Status, Actor]] = {
    **_RECEIPT,
    Status.ACKNOWLEDGED: _PRESERVATION_STEPS,
    Status.INFO_REQUESTED: _INFO_REQUESTED,
    Status.INFO_PROVIDED: _PRESERVATION_STEPS,
    Status.PRESERVED: _PRESERVATION_ONGOING,
    Status.PRESERVATION_EXTENDED: _PRESERVATION_ONGOING,
}
_TRANSITIONS: Final = {
    DocumentType.REFERRAL: _REVIEW_TRANSITIONS,
    DocumentType.REMOVAL_ORDER: _REVIEW_TRANSITIONS,
    DocumentType.PRESERVATION_REQUEST: _PRESERVATION_TRANSITIONS,
}


class InvalidTransition(Conflict):
    """The next status cannot follow the current one for this kind of request (409, with the allowed ones)."""

    slug = "invalid-transition"
    title = "Invalid status transition"

    def __init__(self, current: Status, requested: Status, allowed: list[str]) -> None:
        self.current = current
        self.requested = requested
        self.allowed = allowed
        super().__init__(
            f"{requested.value!r} cannot follow {current.value!r}; "
            f"allowed next: {', '.join(allowed) or 'none (it is final)'}",
            current_status=current.value,
            requested_status=requested.value,
            allowed=allowed,
        )


class WrongActor(Forbidden):
    """The transition exists, but another party makes it (403, with who may)."""

    slug = "wrong-actor"
    title = "Not this party's transition"

    def __init__(self, current: Status, requested: Status, actor: Actor, allowed_actors: list[str]) -> None:
        self.current = current
        self.requested = requested
        self.actor = actor
        self.allowed_actors = allowed_actors
        super().__init__(
            f"the {actor.value} cannot set {requested.value!r} after {current.value!r}; "
            f"only the {' or the '.join(allowed_actors)} can",
            current_status=current.value,
            requested_status=requested.value,
            allowed_actors=allowed_actors,
        )


def is_open(status: Status) -> bool:
    """Whether the request is still in force: withdrawable, with its deadline or preservation running."""
    return status in OPEN_STATUSES


def is_terminal(status: Status) -> bool:
    """Whether no status can follow."""
    return status in TERMINAL_STATUSES


def allowed_transitions(referral_type: DocumentType, current: Status) -> dict[Status, set[Actor]]:
    """Each status that may follow ``current`` for this type of request, with the actors who may set it."""
    transitions = _TRANSITIONS[referral_type]
    allowed = {status: {actor} for status, actor in transitions.get(current, {}).items()}
    # A status this type never reaches (in_review of a preservation, preserved of a referral) leads nowhere.
    if is_open(current) and current in transitions:
        allowed[Status.WITHDRAWN] = {Actor.AUTHORITY}
    return allowed


def check_transition(referral_type: DocumentType, current: Status, next_status: Status, actor: Actor) -> None:
    """Refuse a transition that does not exist (InvalidTransition) or is not ``actor``'s (WrongActor)."""
    allowed = allowed_transitions(referral_type, current)
    if next_status not in allowed:
        raise InvalidTransition(current, next_status, sorted(status.value for status in allowed))
    if actor not in allowed[next_status]:
        raise WrongActor(
            current, next_status, actor, sorted(allowed_actor.value for allowed_actor in allowed[next_status])
        )
