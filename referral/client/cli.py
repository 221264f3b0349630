"""The user commands of ``referral``, on top of the SDK: keygen, submit, referrals, status, feed, receipt,
audit prove.

Credentials come from a profile (``--profile FILE``, ``$REFERRAL_PROFILE`` or ``~/.config/referral/
profile.json``; the files ``referral demo`` writes work as they are) and ``REFERRAL_*`` variables; see
``referral.client.profile``. Results are printed for people on a terminal and as JSON otherwise or with
``--json``; errors and progress go to stderr. Tokens, private keys and signed payloads are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from referral.config import Settings

if TYPE_CHECKING:
    from referral.client.client import ReferralClient
    from referral.client.profile import Profile

COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
EXIT_FAILED = 1
EXIT_CONFIGURATION = 2
EXIT_INTERRUPTED = 130
DOCUMENT_TYPES = ("referral", "removal_order", "preservation_request")
OUTCOMES = ("removed", "access_disabled", "account_suspended", "restricted", "not_found", "no_action")


@dataclass
class Context:
    """What a command runs with: its arguments, the settings, the output mode and the streams."""

    args: argparse.Namespace
    settings: Settings
    as_json: bool
    out: TextIO
    err: TextIO
    _profile: Profile | None = field(default=None, init=False)

    @classmethod
    def of(cls, args: argparse.Namespace, settings: Settings) -> Context:
        """The context of a parsed command line."""
        output = getattr(args, "output", None)
        as_json = output == "json" or (output is None and not sys.stdout.isatty())
        return cls(args=args, settings=settings, as_json=as_json, out=sys.stdout, err=sys.stderr)

    def profile(self) -> Profile:
        """The profile named by ``--profile`` or the environment, with ``--url`` on top."""
        if self._profile is None:
            from referral.client.profile import load_profile

            self._profile = load_profile(
                getattr(self.args, "profile", None), url=getattr(self.args, "url", None)
            )
        return self._profile

    def client(self, *, credentials: bool = True) -> ReferralClient:
        """An SDK client for the profile's service, as the profile's party."""
        from referral.client.client import ReferralClient
        from referral.client.errors import ConfigurationError

        profile = self.profile()
        if credentials and profile.credentials is None:
            raise ConfigurationError(
                "no credentials: pass --profile FILE (e.g. var/demo/authority.json) or set REFERRAL_PROFILE"
            )
        return ReferralClient(profile.url or self.settings.public_url, profile.credentials)

    def emit(self, document: Any, human: Iterable[str]) -> None:
        """Print a result: ``document`` as JSON, or the ``human`` lines."""
        if self.as_json:
            print(json.dumps(document, ensure_ascii=False), file=self.out, flush=True)
        else:
            for line in human:
                print(line, file=self.out)
            self.out.flush()

    def note(self, message: str) -> None:
        """Progress for people, on stderr."""
        print(message, file=self.err, flush=True)


Body = Callable[[Context], Coroutine[Any, Any, int]]


def _error_lines(exc: Exception) -> list[str]:
    from referral.client.errors import ProblemError

    lines = [f"error: {exc}"]
    if isinstance(exc, ProblemError):
        for item in exc.errors:
            location = ".".join(str(part) for part in item.get("loc", []))
            lines.append(f"  {location}: {item.get('msg')}")
    return lines


def _error_document(exc: Exception) -> dict[str, Any]:
    from referral.client.errors import ProblemError

    if isinstance(exc, ProblemError):
        problem = {
            "type": exc.type,
            "title": exc.title,
            "status": exc.status,
            "detail": exc.detail,
            "request_id": exc.request_id,
            **({"errors": exc.errors} if exc.errors else {}),
            **exc.extensions,
        }
        return {"error": problem}
    return {"error": {"title": type(exc).__name__, "detail": str(exc)}}


def _command(body: Body) -> Callable[[argparse.Namespace, Settings], int]:
    """Run an async command body; SDK errors become a message on stderr and an exit status."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        from referral.client.errors import ConfigurationError, ReferralClientError

        context = Context.of(args, settings)
        try:
            return asyncio.run(body(context))
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except ReferralClientError as exc:
            if context.as_json:
                print(json.dumps(_error_document(exc), ensure_ascii=False), file=context.err)
            else:
                for line in _error_lines(exc):
                    print(line, file=context.err)
            return EXIT_CONFIGURATION if isinstance(exc, ConfigurationError) else EXIT_FAILED

    return run


def _read_json_file(path: str) -> Any:
    from referral.client.errors import ConfigurationError

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not valid JSON: {exc}") from exc


# -- keygen ------------------------------------------------------------------------------------------------


def _write_private(path: Path, document: Mapping[str, Any], *, force: bool) -> None:
    from referral.client.errors import ConfigurationError

    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise ConfigurationError(f"{path} exists; pass --force to replace it") from exc
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")
    os.chmod(path, 0o600)


async def _keygen(context: Context) -> int:
    from referral.client.errors import ConfigurationError
    from referral.client.keys import generate_key

    args = context.args
    private_path = Path(args.out)
    public_path = Path(args.public_out) if args.public_out else private_path.with_suffix(".pub.json")
    if public_path == private_path:
        raise ConfigurationError("the public key needs another file than the private key")
    key = generate_key(args.type, kid=args.kid)
    _write_private(private_path, key.private_jwk(), force=args.force)
    public_path.write_text(json.dumps(key.public_jwk(), indent=2) + "\n", encoding="utf-8")
    context.emit(
        {
            "kid": key.kid,
            "alg": key.alg,
            "private_key_file": str(private_path),
            "public_key_file": str(public_path),
            "public_jwk": key.public_jwk(),
        },
        [
            f"{key.alg} key {key.kid}",
            f"  private key  {private_path} (mode 600; keep it secret)",
            f"  public key   {public_path}",
            f"register it with the operator: referral keys add --party PARTY_ID --jwk {public_path}",
            f"  (or, for an API client:       referral clients add --party PARTY_ID --jwk {public_path})",
        ],
    )
    return 0


# -- submit ------------------------------------------------------------------------------------------------


async def _addressee(client: ReferralClient, wanted: str) -> str:
    """The provider id for ``wanted``: an id as it is, or the exact name of one provider in the directory."""
    from referral.client.errors import ConfigurationError

    providers = [party for party in await client.parties() if party.get("kind") == "provider"]
    if any(party["id"] == wanted for party in providers):
        return wanted
    named = [party for party in providers if party.get("name") == wanted]
    if len(named) == 1:
        return str(named[0]["id"])
    known = ", ".join(f"{party['name']} ({party['id']})" for party in providers) or "none"
    raise ConfigurationError(f"no single provider is called or has the id {wanted!r}; providers: {known}")


def _prepared(document: Any, context: Context, party_id: str, addressee: str | None) -> dict[str, Any]:
    """The document as it will be signed: by this party, now, with a fresh jti unless --jti is given."""
    from referral.client.errors import ConfigurationError
    from referral.client.signing import new_jti

    if not isinstance(document, dict):
        raise ConfigurationError("each document must be a JSON object")
    args = context.args
    prepared = dict(document)
    # The file is the content; who signs and when is decided now (a template's own iss/iat/jti are replaced).
    prepared.update(iss=party_id, iat=int(time.time()), jti=getattr(args, "jti", None) or new_jti())
    if args.type:
        prepared["type"] = args.type
    if addressee:
        prepared["addressee"] = addressee
    return prepared


def _submission_json(submission: Any) -> dict[str, Any]:
    return {
        "referral": submission.referral,
        "created": submission.created,
        "receipt": submission.receipt.compact,
        "receipt_claims": submission.receipt.claims,
    }


def _submission_lines(submission: Any, prefix: str = "") -> list[str]:
    referral = submission.referral
    state = "accepted" if submission.created else "already accepted (same document sent before)"
    return [
        f"{prefix}{state}: {referral['type']} {referral['id']}",
        f"{prefix}  addressee  {referral['addressee']}",
        f"{prefix}  status     {referral['status']}",
        f"{prefix}  deadline   {referral.get('deadline') or '-'}",
        f"{prefix}  receipt    verified (service key {submission.receipt.kid}), "
        f"audit entry {submission.receipt.audit_entry_id}",
    ]


async def _submit(context: Context) -> int:
    from referral.client.errors import ConfigurationError

    args = context.args
    content = _read_json_file(args.file)
    documents = content if isinstance(content, list) else [content]
    if not documents:
        raise ConfigurationError(f"{args.file} holds no documents")
    if args.jti and len(documents) > 1:
        raise ConfigurationError("--jti names one document; the file holds several")
    async with context.client() as client:
        credentials = client.credentials
        assert credentials is not None
        addressee = await _addressee(client, args.addressee) if args.addressee else None
        prepared = [_prepared(document, context, credentials.party_id, addressee) for document in documents]
        if not isinstance(content, list):
            submission = await client.submit(prepared[0], idempotency_key=args.idempotency_key)
            context.emit(_submission_json(submission), _submission_lines(submission))
            return 0
        results = []
        for start in range(0, len(prepared), 100):
            results.extend(await client.submit_batch(prepared[start : start + 100]))
    refused = 0
    documents_json: list[dict[str, Any]] = []
    lines: list[str] = []
    for offset, result in enumerate(results):
        if result.submission is not None:
            documents_json.append(
                {"index": offset, "status": result.status, **_submission_json(result.submission)}
            )
            lines.extend(_submission_lines(result.submission, prefix=f"[{offset}] "))
        else:
            refused += 1
            assert result.problem is not None
            documents_json.append(
                {"index": offset, "status": result.status, **_error_document(result.problem)}
            )
            lines.extend(f"[{offset}] {line}" for line in _error_lines(result.problem))
    context.emit({"results": documents_json}, lines)
    return EXIT_FAILED if refused else 0


# -- referrals list / show ---------------------------------------------------------------------------------


async def _list(context: Context) -> int:
    args = context.args
    filters: dict[str, Any] = {"type": args.type, "status": args.status, "limit": args.limit}
    if args.overdue is not None:
        filters["overdue"] = args.overdue
    async with context.client() as client:
        if args.all:
            referrals = [referral async for referral in client.iter_referrals(**filters)]
            next_cursor = None
        else:
            page = await client.list_referrals(after=args.after, **filters)
            referrals, next_cursor = page.referrals, page.next
    lines = [
        f"{'ID':36}  {'TYPE':20}  {'STATUS':18}  {'DEADLINE':27}  CASE",
        *(
            f"{referral['id']:36}  {referral['type']:20}  {referral['status']:18}  "
            f"{(referral.get('deadline') or '-') + (' OVERDUE' if referral.get('overdue') else ''):27}  "
            f"{referral.get('case_reference') or ''}"
            for referral in referrals
        ),
    ]
    if next_cursor:
        lines.append(f"more: --after {next_cursor}")
    context.emit({"referrals": referrals, "next": next_cursor}, lines)
    return 0


def _item_line(position: int, item: Mapping[str, Any]) -> str:
    target = " ".join(str(item[name]) for name in ("url", "account") if item.get(name))
    description = f" — {item['description']}" if item.get("description") else ""
    return f"  [{position}] {target}{description}"


async def _show(context: Context) -> int:
    async with context.client() as client:
        referral = await client.get_referral(context.args.referral_id)
    document = referral.get("document") or {}
    legal_basis = document.get("legal_basis") or {}
    lines = [
        f"{referral['type']} {referral['id']}  ({referral['status']}"
        + (", OVERDUE)" if referral.get("overdue") else ")"),
        f"  issuer        {referral['issuer']}",
        f"  addressee     {referral['addressee']}",
        f"  category      {referral.get('category')}",
        f"  received      {referral['received_at']}",
        f"  deadline      {referral.get('deadline') or '-'}",
        f"  case          {referral.get('case_reference') or '-'}",
        f"  legal basis   {', '.join(f'{key}: {value}' for key, value in legal_basis.items()) or '-'}",
        f"  audit entry   {referral.get('audit_entry_id')}",
        f"  items ({referral.get('item_count')}):",
        *(_item_line(position, item) for position, item in enumerate(document.get("items", []))),
        "  history:",
        *(
            f"    {entry['recorded_at']}  {entry['status']:22}  by {entry.get('actor') or 'the service'}"
            for entry in referral.get("history", [])
        ),
    ]
    context.emit(referral, lines)
    return 0


# -- status ------------------------------------------------------------------------------------------------


def _parse_item(text: str) -> tuple[str, dict[str, Any]]:
    """``INDEX=OUTCOME[:TERRITORY,...]`` (``*`` for every item) as (index, outcome without index)."""
    from referral.client.errors import ConfigurationError

    index, separator, rest = text.partition("=")
    outcome, _, territories = rest.partition(":")
    if not separator or not (index == "*" or index.isdigit()) or outcome not in OUTCOMES:
        raise ConfigurationError(
            f"--item {text!r}: expected INDEX=OUTCOME[:TERRITORIES] with INDEX a number or *, OUTCOME one of "
            + ", ".join(OUTCOMES)
        )
    parsed: dict[str, Any] = {"outcome": outcome}
    if territories:
        parsed["territories"] = [
            territory.strip() for territory in territories.split(",") if territory.strip()
        ]
    return index, parsed


async def _status(context: Context) -> int:
    args = context.args
    parsed = [_parse_item(text) for text in args.item or []]
    async with context.client() as client:
        items: list[dict[str, Any]] = []
        if any(index == "*" for index, _ in parsed):
            count = int((await client.get_referral(args.referral_id))["item_count"])
            specific = {int(index) for index, _ in parsed if index != "*"}
            for index, outcome in parsed:
                if index == "*":
                    items.extend(
                        {"index": position, **outcome}
                        for position in range(count)
                        if position not in specific
                    )
        items.extend({"index": int(index), **outcome} for index, outcome in parsed if index != "*")
        recorded = await client.post_status(
            args.referral_id,
            args.set,
            items=sorted(items, key=lambda item: int(item["index"])) or None,
            reason=args.reason,
            reason_text=args.reason_text,
            message=args.message,
            preserved_until=args.preserved_until,
            effective_at=args.effective_at,
            idempotency_key=args.idempotency_key,
        )
    referral = recorded.referral
    context.emit(
        {
            "referral": referral,
            "status": {
                name: value for name, value in recorded.status.items() if name not in {"jws", "document"}
            },
            "created": recorded.created,
            "receipt": recorded.receipt.compact,
            "receipt_claims": recorded.receipt.claims,
        },
        [
            f"{'recorded' if recorded.created else 'already recorded'}: {recorded.status['status']} on "
            f"{referral['type']} {referral['id']} (now {referral['status']})",
            f"  receipt verified (service key {recorded.receipt.kid}), audit entry "
            f"{recorded.receipt.audit_entry_id}",
        ],
    )
    return 0


# -- feed --------------------------------------------------------------------------------------------------


async def _feed(context: Context) -> int:
    from referral.client.feed import MAX_WAIT_SECONDS, FileCursorStore, MemoryCursorStore

    args = context.args
    wait = args.wait if args.wait is not None else (MAX_WAIT_SECONDS if args.follow else 0)
    store = FileCursorStore(args.cursor_file) if args.cursor_file else MemoryCursorStore(args.after)
    if args.after and args.cursor_file:
        store.save(args.after)

    def emit(event: Any) -> None:
        print(json.dumps(event.to_json(), ensure_ascii=False), file=context.out, flush=True)

    async with context.client() as client:
        if not args.follow:
            page = await client.feed_page(after=store.load(), limit=args.limit, wait=wait)
            for event in page.events:
                emit(event)
            if page.next_cursor:
                store.save(page.next_cursor)
            context.note(f"{len(page.events)} events; next cursor {page.next_cursor or '-'}")
            return 0

        def on_retry(failures: int, delay: float, error: Exception) -> None:
            context.note(f"feed unavailable ({error}); reconnecting in {delay:.1f} s (attempt {failures})")

        context.note(f"following the feed from {store.load() or 'the beginning'}; Ctrl-C stops")
        count = 0
        events = client.follow_feed(store, wait=wait, limit=args.limit, on_retry=on_retry)
        async with contextlib.aclosing(events):
            async for event in events:
                emit(event)
                # Printed is handled: saved now, so neither --max-events nor Ctrl-C prints it twice.
                store.save(event.cursor)
                count += 1
                if args.max_events and count >= args.max_events:
                    break
    return 0


# -- receipt verify ----------------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    from referral.client.errors import ConfigurationError

    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc


def _receipt_input(value: str) -> str:
    """The compact receipt in ``value``: itself, or a file (or ``-``) holding it or JSON with ``receipt``."""
    from referral.client.errors import ConfigurationError

    if COMPACT_JWS.fullmatch(value.strip()):
        return value.strip()
    try:
        text = sys.stdin.read() if value == "-" else Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{value} is neither a compact receipt nor a readable file") from exc
    text = text.strip()
    if text.startswith("{"):
        document = json.loads(text)
        if not isinstance(document, dict) or not isinstance(document.get("receipt"), str):
            raise ConfigurationError(f'{value} holds JSON without a "receipt" member')
        return str(document["receipt"])
    return text


async def _receipt_verify(context: Context) -> int:
    from referral.client.errors import VerificationError
    from referral.client.receipts import document_sha256

    args = context.args
    receipt_text = _receipt_input(args.receipt)
    document = _read_text(args.jws).strip() if args.jws else None
    async with context.client(credentials=args.check_referral) as client:
        receipt = await client.verify_receipt(receipt_text, document=document)
        checks = ["signature by a published service key"]
        if document is not None:
            checks.append(f"covers the document in {args.jws}")
        if args.check_referral:
            referral = await client.get_referral(receipt.referral_id)
            status_id = receipt.claims.get("status_id")
            if status_id is None:
                stored = referral["jws"]
            else:
                stored = next(
                    (entry["jws"] for entry in referral["history"] if entry["id"] == status_id), None
                )
            if stored is None or document_sha256(stored) != receipt.jws_sha256:
                raise VerificationError("the service's stored document is not the one the receipt covers")
            checks.append("matches the document the service stores")
    context.emit(
        {"ok": True, "kid": receipt.kid, "claims": receipt.claims, "checks": checks},
        [
            f"receipt valid: {', '.join(checks)}",
            f"  {'service key':15} {receipt.kid}",
            *(f"  {name:15} {value}" for name, value in receipt.claims.items()),
        ],
    )
    return 0


# -- audit prove -------------------------------------------------------------------------------------------


async def _audit_prove(context: Context) -> int:
    from referral.client.errors import NotSequencedError

    args = context.args
    vkey = args.vkey or context.profile().vkey
    deadline = time.monotonic() + args.wait
    async with context.client() as client:
        while True:
            try:
                proof = await client.prove_entry(args.entry_id, vkey=vkey)
                break
            except NotSequencedError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.5)
        if vkey is None:
            vkey = await client.audit_vkey()

    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")

    entry = proof.entry
    context.emit(
        {
            "ok": True,
            "entry": entry,
            "leaf_index": proof.leaf_index,
            "leaf_hash": b64(proof.leaf_hash),
            "origin": proof.checkpoint.origin,
            "tree_size": proof.checkpoint.size,
            "root_hash": b64(proof.checkpoint.root_hash),
            "proof": [b64(value) for value in proof.proof],
            "vkey": vkey,
            "vkey_pinned": bool(args.vkey or context.profile().vkey),
        },
        [
            f"entry {entry['id']} is in the log: {entry['action']} of {entry['subject_type']} "
            f"{entry['subject_id']}",
            f"  leaf          {proof.leaf_index} of {proof.checkpoint.size} in {proof.checkpoint.origin}",
            f"  root hash     {b64(proof.checkpoint.root_hash)}",
            f"  verified      checkpoint signature and inclusion proof ({len(proof.proof)} hashes)",
            f"  verifier key  {vkey}"
            + ("" if args.vkey or context.profile().vkey else " (as published now; pin it with --vkey)"),
        ],
    )
    return 0


# -- registration ------------------------------------------------------------------------------------------


Parent = argparse.ArgumentParser


def _output_options() -> argparse.ArgumentParser:
    output = argparse.ArgumentParser(add_help=False)
    formats = output.add_mutually_exclusive_group()
    formats.add_argument(
        "--json",
        dest="output",
        action="store_const",
        const="json",
        help="print JSON (default off a terminal)",
    )
    formats.add_argument(
        "--human",
        dest="output",
        action="store_const",
        const="human",
        help="print for people (default on one)",
    )
    return output


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, parents=[_output_options()])
    group = common.add_argument_group("service")
    group.add_argument(
        "--profile",
        help="profile file, e.g. var/demo/authority.json (default: $REFERRAL_PROFILE, then "
        "~/.config/referral/profile.json)",
    )
    group.add_argument(
        "--url",
        help="the service's base URL (default: $REFERRAL_URL, the profile's, then $REFERRAL_PUBLIC_URL)",
    )
    return common


def _boolean(text: str) -> bool:
    if text not in {"true", "false"}:
        raise argparse.ArgumentTypeError("use true or false")
    return text == "true"


def add_prove_command(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``prove`` to the ``referral audit`` group."""
    prove = actions.add_parser(
        "prove",
        parents=[_common_options()],
        help="prove an audit entry is in the log: checkpoint signature and inclusion proof",
    )
    prove.add_argument(
        "entry_id", metavar="ENTRY_ID", help="the audit entry (e.g. a receipt's audit_entry_id)"
    )
    prove.add_argument(
        "--vkey", help="the log's verifier key (default: the profile's vkey, else as published)"
    )
    prove.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds to wait for the entry's batch to be signed (default 30)",
    )
    prove.set_defaults(run=_command(_audit_prove))


def _register_keygen(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: Parent) -> None:
    keygen = commands.add_parser(
        "keygen", parents=[_output_options()], help="make a private signing JWK (0600) and its public JWK"
    )
    keygen.add_argument(
        "--type", choices=["ed25519", "p256"], default="ed25519", help="key type (default ed25519)"
    )
    keygen.add_argument("--kid", help="key id (default: the RFC 7638 thumbprint)")
    keygen.add_argument("--out", required=True, help="file for the private JWK (written 0600)")
    keygen.add_argument("--public-out", help="file for the public JWK (default: OUT with .pub.json)")
    keygen.add_argument("--force", action="store_true", help="replace an existing private key file")
    keygen.set_defaults(run=_command(_keygen))


def _register_submit(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: Parent) -> None:
    submit = commands.add_parser(
        "submit",
        parents=[common],
        help="sign and submit a document (a JSON object) or a batch (a JSON array); receipts are verified",
    )
    submit.add_argument("file", metavar="FILE.json", help="the document's claims (- for stdin)")
    submit.add_argument("--type", choices=DOCUMENT_TYPES, help="set the document type")
    submit.add_argument("--addressee", help="the provider: its party id or its exact name in the directory")
    submit.add_argument("--jti", help="the document id (default: a fresh UUID)")
    submit.add_argument("--idempotency-key", help="Idempotency-Key of the request (default: a fresh one)")
    submit.set_defaults(run=_command(_submit))


def _register_referrals(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: Parent
) -> None:
    referrals = commands.add_parser("referrals", help="list and read referrals")
    actions = referrals.add_subparsers(dest="referrals_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="this party's referrals, newest first")
    listing.add_argument("--type", choices=DOCUMENT_TYPES)
    listing.add_argument("--status")
    listing.add_argument("--overdue", type=_boolean, metavar="true|false")
    listing.add_argument("--limit", type=int, help="page size (1 to 200; default 50)")
    listing.add_argument("--after", help="cursor of the page to show (from a previous listing)")
    listing.add_argument("--all", action="store_true", help="every page")
    listing.set_defaults(run=_command(_list))
    show = actions.add_parser(
        "show", parents=[common], help="one referral with its items and history (an audited read)"
    )
    show.add_argument("referral_id", metavar="ID")
    show.set_defaults(run=_command(_show))


def _register_status(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: Parent) -> None:
    status = commands.add_parser(
        "status", parents=[common], help="sign and record a status update on a referral"
    )
    status.add_argument("referral_id", metavar="ID")
    status.add_argument(
        "--set", required=True, metavar="STATUS", help="e.g. acknowledged, action_taken, no_action"
    )
    status.add_argument(
        "--item",
        action="append",
        metavar="INDEX=OUTCOME[:TERRITORIES]",
        help="an item's outcome, e.g. 0=removed, 1=access_disabled:DE,AT, *=removed (repeatable)",
    )
    status.add_argument("--reason", help="why not (all) actioned, e.g. not_illegal, content_not_found")
    status.add_argument("--reason-text", help="explanation (required for --reason other)")
    status.add_argument("--message", help="question, answer, grounds of a complaint, or a note")
    status.add_argument("--preserved-until", metavar="RFC3339", help="for preserved / preservation_extended")
    status.add_argument("--effective-at", metavar="RFC3339", help="when the action took effect")
    status.add_argument("--idempotency-key", help="Idempotency-Key of the request (default: a fresh one)")
    status.set_defaults(run=_command(_status))


def _register_feed(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: Parent) -> None:
    feed = commands.add_parser(
        "feed", parents=[common], help="print this party's events as JSON lines (--follow: for ever)"
    )
    feed.add_argument(
        "--follow", action="store_true", help="keep following; progress and reconnects on stderr"
    )
    feed.add_argument("--cursor-file", help="where the cursor is kept, to resume after a restart")
    feed.add_argument("--after", help="start after this cursor (stored in --cursor-file if given)")
    feed.add_argument(
        "--wait", type=int, help="long-poll seconds per request, 0 to 30 (default: 30 with --follow, else 0)"
    )
    feed.add_argument("--limit", type=int, help="events per request")
    feed.add_argument("--max-events", type=int, metavar="N", help="stop after N events")
    feed.set_defaults(run=_command(_feed))


def _register_receipt(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: Parent) -> None:
    receipt = commands.add_parser("receipt", help="check receipts the service signed")
    actions = receipt.add_subparsers(dest="receipt_command", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify", parents=[common], help="verify a receipt's signature against the service's published keys"
    )
    verify.add_argument(
        "receipt",
        metavar="RECEIPT",
        help="a compact receipt, or a file holding one (or submit --json output)",
    )
    verify.add_argument("--jws", help="file with the signed document (compact JWS) the receipt should cover")
    verify.add_argument(
        "--check-referral",
        action="store_true",
        help="also fetch the referral and check the service stores the document the receipt covers",
    )
    verify.set_defaults(run=_command(_receipt_verify))


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the user commands: keygen, submit, referrals, status, feed, receipt (audit prove: see audit)."""
    common = _common_options()
    for register_command in (
        _register_keygen,
        _register_submit,
        _register_referrals,
        _register_status,
        _register_feed,
        _register_receipt,
    ):
        register_command(commands, common)


__all__ = ["add_prove_command", "register"]
