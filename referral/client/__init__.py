"""Python SDK of the referral service for authority and provider integrations (async, aiohttp).

::

    from referral.client import ReferralClient, load_profile

    profile = load_profile("var/demo/authority.json")
    async with ReferralClient("http://127.0.0.1:8080", profile.credentials) as client:
        submission = await client.submit({"type": "removal_order", "addressee": provider_id, ...})
        proof = await client.prove_entry(submission.receipt.audit_entry_id)

The SDK imports no server modules beyond the pure ones (canonical JSON, Merkle proofs, signed notes, JOSE
algorithm allow-list), so integrations install the package without needing a database.
"""

from referral.client.audit import Checkpoint, EntryProof
from referral.client.client import (
    BatchResult,
    ReferralClient,
    ReferralPage,
    Response,
    StatusRecorded,
    Submission,
)
from referral.client.errors import (
    AuthenticationError,
    BadRequestError,
    ClientProblemError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    NotSequencedError,
    PermissionDeniedError,
    ProblemError,
    RateLimitedError,
    ReferralClientError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    UnknownKeyError,
    ValidationFailedError,
    VerificationError,
    WebhookVerificationError,
)
from referral.client.feed import CursorStore, FeedEvent, FeedPage, FileCursorStore, MemoryCursorStore
from referral.client.keys import Credentials, PrivateJwk, generate_key
from referral.client.profile import Profile, load_profile
from referral.client.receipts import Receipt, verify_receipt
from referral.client.retry import RetryPolicy
from referral.client.signing import sign_document
from referral.client.webhooks import WebhookMessage, verify_webhook

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BatchResult",
    "Checkpoint",
    "ClientProblemError",
    "ConfigurationError",
    "ConflictError",
    "Credentials",
    "CursorStore",
    "EntryProof",
    "FeedEvent",
    "FeedPage",
    "FileCursorStore",
    "MemoryCursorStore",
    "NotFoundError",
    "NotSequencedError",
    "PermissionDeniedError",
    "PrivateJwk",
    "ProblemError",
    "Profile",
    "RateLimitedError",
    "Receipt",
    "ReferralClient",
    "ReferralClientError",
    "ReferralPage",
    "Response",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "StatusRecorded",
    "Submission",
    "TransportError",
    "UnknownKeyError",
    "ValidationFailedError",
    "VerificationError",
    "WebhookMessage",
    "WebhookVerificationError",
    "generate_key",
    "load_profile",
    "sign_document",
    "verify_receipt",
    "verify_webhook",
]
