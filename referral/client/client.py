"""``ReferralClient``: the whole protocol for an authority's or a provider's integration, over aiohttp."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import structlog

from referral import __version__
from referral.client import audit, feed
from referral.client.errors import (
    ConfigurationError,
    NotSequencedError,
    ProblemError,
    ReferralClientError,
    TransportError,
    UnknownKeyError,
    VerificationError,
    problem_from_response,
)
from referral.client.keys import Credentials, PrivateJwk
from referral.client.profile import load_profile
from referral.client.receipts import Receipt, verify_receipt
from referral.client.retry import RetryPolicy, Sleep, parse_retry_after
from referral.client.signing import REFERRAL_TYP, STATUS_TYP, complete_claims, sign_document
from referral.client.tokens import AccessToken, TokenCache, token_request_body

log = structlog.get_logger("referral.client")

JOSE = "application/jose"
FORM = "application/x-www-form-urlencoded"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Methods whose repetition has no further effect (RFC 9110 §9.2.2): retried even when the connection broke.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 503})
MAX_BATCH = 100
_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)


@dataclass(frozen=True)
class Response:
    """A successful answer: status, headers and the body as received."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ReferralClientError(
                f"the service answered {self.status} with a body that is not JSON"
            ) from exc

    def text(self) -> str:
        """The body as UTF-8 text."""
        return self.body.decode("utf-8")


@dataclass(frozen=True)
class Submission:
    """An accepted document: the referral as stored, the verified receipt, and the JWS that was sent."""

    referral: dict[str, Any]
    receipt: Receipt
    created: bool
    compact: str

    @property
    def referral_id(self) -> str:
        """The id the service gave the referral."""
        return str(self.referral["id"])


@dataclass(frozen=True)
class BatchResult:
    """The outcome of one document of a batch: a submission, or the problem that refused it."""

    index: int
    status: int
    submission: Submission | None = None
    problem: ProblemError | None = None


@dataclass(frozen=True)
class StatusRecorded:
    """A recorded status update: the referral after it, the status entry, and the verified receipt."""

    referral: dict[str, Any]
    status: dict[str, Any]
    receipt: Receipt
    created: bool
    compact: str


@dataclass(frozen=True)
class ReferralPage:
    """A page of referral summaries, newest first, and the cursor of the next page."""

    referrals: list[dict[str, Any]]
    next: str | None


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError("the service sent a hash that is not base64") from exc


def _query_time(moment: datetime | str | None) -> str | None:
    if moment is None or isinstance(moment, str):
        return moment
    if moment.tzinfo is None:
        raise ValueError("filter times need a time zone")
    return moment.isoformat()


class ReferralClient:
    """An async client of one referral service, acting as one party (an authority or a provider).

    Use it as an async context manager. Access tokens are obtained with ``private_key_jwt`` and refreshed
    before they expire (and once more on a 401); 429 and 503 answers are retried with back-off honouring
    ``Retry-After``; broken connections are retried only for idempotent methods and for POSTs carrying an
    ``Idempotency-Key``, which every state-changing call of this client sends. Errors are raised as
    ``ProblemError`` subclasses mapped from the service's problem+json answers.
    """

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None = None,
        *,
        audience: str | None = None,
        scope: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """A client of the service at ``base_url``; ``audience`` of assertions defaults to its token URL."""
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.token_url = f"{self.base_url}/oauth/token"
        self.audience = audience or self.token_url
        self.scope = scope
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._session = session
        self._owns_session = session is None
        self._sleep = sleep
        self._tokens = TokenCache(self._fetch_token)
        self._jwks: dict[str, Any] | None = None

    @classmethod
    def from_profile(cls, path: Path | str | None = None, **options: Any) -> Self:
        """A client for a profile file (or ``$REFERRAL_PROFILE`` and the other ``REFERRAL_*`` variables)."""
        profile = load_profile(path)
        if not profile.url:
            raise ConfigurationError("the profile names no url (set it, or REFERRAL_URL)")
        return cls(profile.url, profile.credentials, **options)

    async def __aenter__(self) -> Self:
        self._http()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client opened it."""
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": f"referral-client/{__version__}"},
            )
        return self._session

    def _credentials(self) -> Credentials:
        if self.credentials is None:
            raise ConfigurationError("this call needs credentials (party id, client id and client key)")
        return self.credentials

    def _signing_key(self) -> PrivateJwk:
        key = self._credentials().signing_key
        if key is None:
            raise ConfigurationError("signing documents needs the party's private signing key")
        return key

    # -- HTTP ------------------------------------------------------------------------------------------

    async def _fetch_token(self) -> AccessToken:
        credentials = self._credentials()
        response = await self._send(
            "POST",
            self.token_url,
            body=lambda: token_request_body(credentials, audience=self.audience, scope=self.scope),
            content_type=FORM,
            authenticated=False,
            # Each attempt carries a fresh single-use assertion, and issuing a token changes nothing else.
            resend_after_disconnect=True,
        )
        document = response.json()
        try:
            return AccessToken.issued(
                str(document["access_token"]),
                expires_in=float(document["expires_in"]),
                scope=document.get("scope"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReferralClientError(
                "the token endpoint answered without access_token and expires_in"
            ) from exc

    async def access_token(self) -> str:
        """A current access token for this client's credentials (fetched or refreshed when needed)."""
        return await self._tokens.get()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        idempotency_key: str | None = None,
        authenticated: bool = True,
        time_limit: float | None = None,
    ) -> Response:
        """Send one API request with authentication and retries; the answer, or a ``ProblemError``."""
        if json_body is not None:
            data = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
            content_type = content_type or "application/json"
        body = data
        return await self._send(
            method,
            f"{self.base_url}{path}",
            params=params,
            body=(lambda: body) if body is not None else None,
            content_type=content_type,
            idempotency_key=idempotency_key,
            authenticated=authenticated,
            time_limit=time_limit,
        )

    async def _send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Callable[[], bytes] | None = None,
        content_type: str | None = None,
        idempotency_key: str | None = None,
        authenticated: bool = True,
        time_limit: float | None = None,
        resend_after_disconnect: bool = False,
    ) -> Response:
        resend_safe = resend_after_disconnect or method in IDEMPOTENT_METHODS or idempotency_key is not None
        # aiohttp reads timeout=None as "no time limit", so the session's default is kept by not passing one.
        options: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=time_limit)} if time_limit else {}
        refreshed = False
        attempt = 0
        while True:
            headers: dict[str, str] = {}
            if content_type:
                headers["Content-Type"] = content_type
            if idempotency_key:
                headers[IDEMPOTENCY_HEADER] = idempotency_key
            token = await self._tokens.get() if authenticated else None
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            try:
                async with self._http().request(
                    method,
                    url,
                    params=params,
                    data=body() if body is not None else None,
                    headers=headers,
                    **options,
                ) as answer:
                    payload = await answer.read()
                    status, reason, answer_headers = answer.status, answer.reason, answer.headers
            except _CONNECTION_ERRORS as exc:
                attempt += 1
                if not resend_safe or attempt >= self.retry.attempts:
                    raise TransportError(f"{method} {url} failed: {exc!r}") from exc
                delay = self.retry.delay(attempt - 1)
                log.debug("request_retry", method=method, url=url, error=type(exc).__name__, delay=delay)
                await self._sleep(delay)
                continue

            if status == 401 and token is not None and not refreshed:
                # The token may have been revoked or the service's key rotated: one fresh token, one retry.
                self._tokens.invalidate(token)
                refreshed = True
                continue
            if status < 400:
                return Response(status=status, headers=answer_headers, body=payload)
            retry_after = parse_retry_after(answer_headers.get("Retry-After"))
            attempt += 1
            # A 409 with Retry-After on an idempotent POST means "the first try is still running".
            retryable = status in RETRY_STATUSES or (
                status == 409 and idempotency_key is not None and retry_after is not None
            )
            if (
                retryable
                and attempt < self.retry.attempts
                and (retry_after is None or retry_after <= self.retry.max_delay)
            ):
                delay = self.retry.delay(attempt - 1, retry_after)
                log.debug("request_retry", method=method, url=url, status=status, delay=delay)
                await self._sleep(delay)
                continue
            raise problem_from_response(
                status,
                payload,
                reason=reason,
                request_id=answer_headers.get("X-Request-ID"),
                retry_after=retry_after,
            )

    # -- signing and receipts --------------------------------------------------------------------------

    def sign_referral(self, claims: Mapping[str, Any]) -> str:
        """Sign a referral, removal order or preservation request (``iss``, ``iat``, ``jti`` filled in)."""
        completed = complete_claims(claims, issuer=self._credentials().party_id)
        return sign_document(completed, key=self._signing_key(), typ=REFERRAL_TYP)

    def sign_status(self, claims: Mapping[str, Any]) -> str:
        """Sign a status update (``iss``, ``iat``, ``jti`` filled in)."""
        completed = complete_claims(claims, issuer=self._credentials().party_id)
        return sign_document(completed, key=self._signing_key(), typ=STATUS_TYP)

    async def service_jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        """The service's published signing keys (``/.well-known/jwks.json``), cached."""
        if self._jwks is None or refresh:
            document = (await self.request("GET", "/.well-known/jwks.json", authenticated=False)).json()
            if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
                raise ReferralClientError("the service's JWKS is not a JWK Set")
            self._jwks = document
        return self._jwks

    async def verify_receipt(self, receipt: str, *, document: str | None = None) -> Receipt:
        """Verify a receipt against the service's keys (re-fetched once for a key not seen before)."""
        try:
            return verify_receipt(receipt, await self.service_jwks(), document=document)
        except UnknownKeyError:
            # A key rotated in since the JWKS was cached: fetch it once more.
            return verify_receipt(receipt, await self.service_jwks(refresh=True), document=document)

    # -- referrals -------------------------------------------------------------------------------------

    async def _submission(self, body: Mapping[str, Any], compact: str, *, created: bool) -> Submission:
        receipt = await self.verify_receipt(str(body["receipt"]), document=compact)
        referral = dict(body["referral"])
        if receipt.referral_id != referral.get("id"):
            raise VerificationError("the receipt names another referral than the one returned")
        return Submission(referral=referral, receipt=receipt, created=created, compact=compact)

    def _compact(self, document: Mapping[str, Any] | str) -> str:
        return document.strip() if isinstance(document, str) else self.sign_referral(document)

    async def submit(
        self, document: Mapping[str, Any] | str, *, idempotency_key: str | None = None
    ) -> Submission:
        """Submit one document (claims to sign, or a compact JWS already signed); its receipt is verified."""
        compact = self._compact(document)
        response = await self.request(
            "POST",
            "/v1/referrals",
            data=compact.encode("ascii"),
            content_type=JOSE,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
        )
        return await self._submission(response.json(), compact, created=response.status == 201)

    async def submit_batch(
        self, documents: Sequence[Mapping[str, Any] | str], *, idempotency_key: str | None = None
    ) -> list[BatchResult]:
        """Submit up to 100 documents in one request; each is accepted or refused on its own."""
        if not 1 <= len(documents) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} documents")
        compacts = [self._compact(document) for document in documents]
        response = await self.request(
            "POST",
            "/v1/referrals:batch",
            json_body={"documents": compacts},
            idempotency_key=idempotency_key or str(uuid.uuid4()),
        )
        results = []
        for item in response.json()["results"]:
            index, status = int(item["index"]), int(item["status"])
            if "problem" in item:
                problem = problem_from_response(status, json.dumps(item["problem"]).encode())
                results.append(BatchResult(index=index, status=status, problem=problem))
                continue
            submission = await self._submission(item, compacts[index], created=status == 201)
            results.append(BatchResult(index=index, status=status, submission=submission))
        return results

    async def list_referrals(
        self,
        *,
        type: str | None = None,
        status: str | None = None,
        overdue: bool | None = None,
        received_from: datetime | str | None = None,
        received_to: datetime | str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> ReferralPage:
        """One page of this party's referrals, newest first (a provider's listing marks them delivered)."""
        query = {
            "type": type,
            "status": status,
            "overdue": None if overdue is None else str(overdue).lower(),
            "from": _query_time(received_from),
            "to": _query_time(received_to),
            "limit": None if limit is None else str(limit),
            "after": after,
        }
        params = {name: value for name, value in query.items() if value is not None}
        document = (await self.request("GET", "/v1/referrals", params=params)).json()
        return ReferralPage(referrals=list(document["referrals"]), next=document.get("next"))

    async def iter_referrals(self, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        """Every referral matching ``filters`` (as ``list_referrals`` takes them), page after page."""
        after = filters.pop("after", None)
        while True:
            page = await self.list_referrals(after=after, **filters)
            for referral in page.referrals:
                yield referral
            if not page.next:
                return
            after = page.next

    async def get_referral(self, referral_id: str) -> dict[str, Any]:
        """One referral with its original JWS, parsed document, receipt and status history."""
        document: dict[str, Any] = (await self.request("GET", f"/v1/referrals/{referral_id}")).json()
        return document

    async def post_status(
        self,
        referral_id: str,
        status: str,
        *,
        items: Sequence[Mapping[str, Any]] | None = None,
        reason: str | None = None,
        reason_text: str | None = None,
        message: str | None = None,
        preserved_until: str | None = None,
        effective_at: str | None = None,
        idempotency_key: str | None = None,
    ) -> StatusRecorded:
        """Sign and record a status update on a referral; its receipt is verified."""
        claims = {
            "referral_id": referral_id,
            "status": status,
            "items": [dict(item) for item in items] if items else None,
            "reason": reason,
            "reason_text": reason_text,
            "message": message,
            "preserved_until": preserved_until,
            "effective_at": effective_at,
        }
        document = {name: value for name, value in claims.items() if value is not None}
        return await self.post_status_document(referral_id, document, idempotency_key=idempotency_key)

    async def post_status_document(
        self, referral_id: str, document: Mapping[str, Any] | str, *, idempotency_key: str | None = None
    ) -> StatusRecorded:
        """Record a status update given as claims to sign or as a compact JWS already signed."""
        compact = document.strip() if isinstance(document, str) else self.sign_status(document)
        response = await self.request(
            "POST",
            f"/v1/referrals/{referral_id}/statuses",
            data=compact.encode("ascii"),
            content_type=JOSE,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
        )
        body = response.json()
        receipt = await self.verify_receipt(str(body["receipt"]), document=compact)
        if receipt.referral_id != referral_id:
            raise VerificationError("the receipt names another referral than the one updated")
        return StatusRecorded(
            referral=dict(body["referral"]),
            status=dict(body["status"]),
            receipt=receipt,
            created=response.status == 201,
            compact=compact,
        )

    async def parties(self) -> list[dict[str, Any]]:
        """The party directory: every party's id, kind, name, country and current keys."""
        items: list[dict[str, Any]] = (await self.request("GET", "/v1/parties")).json()["items"]
        return items

    # -- audit -----------------------------------------------------------------------------------------

    async def audit_entry(self, entry_id: str) -> dict[str, Any]:
        """An audit entry visible to this party: ``{"entry", "leaf_index", "leaf_hash"}``."""
        document: dict[str, Any] = (await self.request("GET", f"/v1/audit/entries/{entry_id}")).json()
        return document

    async def audit_vkey(self) -> str:
        """The log's verifier key as the service publishes it (pin it to detect a swapped key)."""
        return (await self.request("GET", "/v1/audit/vkey", authenticated=False)).text().strip()

    async def checkpoint(self, *, vkey: str | None = None) -> audit.Checkpoint:
        """The latest checkpoint, its signature checked with ``vkey`` (default: the published one)."""
        vkey = vkey or await self.audit_vkey()
        note = (await self.request("GET", "/v1/audit/checkpoint")).text()
        return audit.verify_checkpoint(note, vkey)

    async def inclusion_proof(self, *, leaf_index: int, tree_size: int) -> list[bytes]:
        """The audit path of a leaf in the tree of ``tree_size`` leaves."""
        params = {"leaf_index": str(leaf_index), "tree_size": str(tree_size)}
        document = (await self.request("GET", "/v1/audit/proof/inclusion", params=params)).json()
        hashes = document.get("hashes") if isinstance(document, dict) else None
        if not isinstance(hashes, list):
            raise VerificationError("the inclusion proof is not a list of hashes")
        return [_b64decode(str(value)) for value in hashes]

    async def prove_entry(self, entry_id: str, *, vkey: str | None = None) -> audit.EntryProof:
        """Prove that an audit entry is in the log: its leaf under a checkpoint signed by ``vkey``.

        Without ``vkey`` the published key is trusted as fetched now; pass a pinned one to catch a swap.
        Raises ``NotSequencedError`` while the entry awaits its batch, ``VerificationError`` on any mismatch.
        """
        found = await self.audit_entry(entry_id)
        entry, leaf_index = found.get("entry"), found.get("leaf_index")
        if not isinstance(entry, dict) or entry.get("id") != entry_id:
            raise VerificationError("the service answered another entry than the one asked for")
        if leaf_index is None:
            raise NotSequencedError(f"audit entry {entry_id} is not in a signed checkpoint yet")
        served_hash = found.get("leaf_hash")
        if served_hash is not None and _b64decode(str(served_hash)) != audit.entry_leaf_hash(entry):
            raise VerificationError("the served leaf hash is not the hash of the served entry")
        vkey = vkey or await self.audit_vkey()
        note = (await self.request("GET", "/v1/audit/checkpoint")).text()
        checkpoint = audit.verify_checkpoint(note, vkey)
        if checkpoint.size <= leaf_index:
            raise NotSequencedError(f"the latest checkpoint does not cover leaf {leaf_index} yet")
        proof = await self.inclusion_proof(leaf_index=int(leaf_index), tree_size=checkpoint.size)
        leaf_hash = audit.verify_entry_inclusion(
            entry, leaf_index=int(leaf_index), proof=proof, checkpoint=checkpoint
        )
        return audit.EntryProof(
            entry=entry,
            leaf_index=int(leaf_index),
            leaf_hash=leaf_hash,
            checkpoint=checkpoint,
            note=note,
            proof=tuple(proof),
        )

    # -- feed (see referral.client.feed) -----------------------------------------------------------------

    async def feed_page(
        self, *, after: str | None = None, limit: int | None = None, wait: int = 0
    ) -> feed.FeedPage:
        """Events after ``after`` (from the start without it), long-polling up to ``wait`` seconds."""
        if not 0 <= wait <= feed.MAX_WAIT_SECONDS:
            raise ValueError(f"wait must be 0 to {feed.MAX_WAIT_SECONDS} seconds")
        query = {"after": after, "limit": None if limit is None else str(limit), "wait": str(wait)}
        params = {name: value for name, value in query.items() if value is not None}
        response = await self.request("GET", "/v1/feed", params=params, time_limit=self.timeout + wait)
        return feed.FeedPage.from_json(response.json())

    def follow_feed(
        self,
        store: feed.CursorStore | None = None,
        *,
        wait: int = feed.MAX_WAIT_SECONDS,
        limit: int | None = None,
        on_retry: feed.OnRetry | None = None,
        poll_interval: float = 1.0,
    ) -> AsyncGenerator[feed.FeedEvent, None]:
        """Every event from the stored cursor on, for ever; the cursor advances once an event is handled.

        Transient failures (connection, 429, 5xx) are retried with back-off for ever, reported to
        ``on_retry(failures, delay, error)``; other problems (401 after refresh, 403) end the iteration.
        """

        async def fetch(cursor: str | None) -> feed.FeedPage:
            return await self.feed_page(after=cursor, limit=limit, wait=wait)

        return feed.follow(
            fetch,
            store if store is not None else feed.MemoryCursorStore(),
            retry=self.retry,
            sleep=self._sleep,
            on_retry=on_retry,
            poll_interval=poll_interval,
            long_polling=wait > 0,
        )
