"""Signed notes and checkpoints against the golang.org/x/mod/sumdb/note and C2SP examples."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from referral.audit.note import (
    Checkpoint,
    Ed25519NoteSigner,
    Ed25519NoteVerifier,
    NoteError,
    format_checkpoint,
    parse_checkpoint,
    sign_note,
    verify_note,
)

# golang.org/x/mod sumdb/note/note_test.go (TestNewVerifier, TestNewSigner, TestSign, TestOpen) and the
# package documentation in note.go; the same PeterNeumann key is the C2SP signed-note example key.
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = (
    "\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)
PETER_NOTE = TEXT + "\n" + PETER_SIG

# c2sp.org/signed-note and c2sp.org/tlog-checkpoint: examples whose public keys the specs do not give.
QUASIMODO_NOTE = (
    "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u00e8 subito sera.\n\n"
    "\u2014 quasimodo.example/salvatore "
    "NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
)
SOFA_CHECKPOINT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SOFA_SIG = (
    "\u2014 example.com/behind-the-sofa "
    "Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)


def peter_signer() -> Ed25519NoteSigner:
    """The signer behind PETER_SKEY: its key data is 0x01 followed by the Ed25519 seed."""
    key_data = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert key_data[0] == 1
    return Ed25519NoteSigner("PeterNeumann", Ed25519PrivateKey.from_private_bytes(key_data[1:]))


def fresh_signer(name: str = "log.example/test") -> Ed25519NoteSigner:
    return Ed25519NoteSigner(name, Ed25519PrivateKey.generate())


# --- Keys ---------------------------------------------------------------------------------------------


def test_signer_reproduces_the_known_verifier_key() -> None:
    signer = peter_signer()
    assert signer.key_id == 0xC74F20A3
    assert signer.vkey() == PETER_VKEY
    assert signer.verifier().vkey() == PETER_VKEY


def test_verifier_keys_parse() -> None:
    peter = Ed25519NoteVerifier.from_vkey(PETER_VKEY)
    assert (peter.name, peter.key_id) == ("PeterNeumann", 0xC74F20A3)
    assert peter.vkey() == PETER_VKEY
    enoch = Ed25519NoteVerifier.from_vkey(ENOCH_VKEY)
    assert (enoch.name, enoch.key_id) == ("EnochRoot", 0xAF0CFE78)


def test_mangled_verifier_keys_are_rejected() -> None:
    # As TestNewVerifier: every proper substring, and every single-character change, must fail.
    mangled = {
        PETER_VKEY[start:end]
        for start in range(len(PETER_VKEY) + 1)
        for end in range(start + 1, len(PETER_VKEY) + 1)
        if (start, end) != (0, len(PETER_VKEY))
    }
    mangled |= {
        PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1 :] for i in range(len(PETER_VKEY))
    }
    mangled |= {
        # Wrong key length and unknown algorithm, each with a key hash adjusted to match.
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        PETER_VKEY.replace("c74f20a3", "C74F20A3"),
        PETER_VKEY + "\n",
        "",
    }
    accepted = []
    for vkey in mangled:
        try:
            Ed25519NoteVerifier.from_vkey(vkey)
        except NoteError:
            continue
        accepted.append(vkey)
    assert accepted == []


@pytest.mark.parametrize(
    "name", ["", "has space", "has+plus", "tab\there", "nbsp\u00a0here", "line\u2028sep"]
)
def test_invalid_key_names_are_rejected(name: str) -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(NoteError, match="invalid key name"):
        Ed25519NoteSigner(name, key)
    with pytest.raises(NoteError, match="invalid key name"):
        Ed25519NoteVerifier(name, key.public_key())


# --- Signing ------------------------------------------------------------------------------------------


def test_sign_reproduces_the_known_note() -> None:
    assert peter_signer().sign(TEXT) == PETER_NOTE


def test_sign_note_with_several_signers() -> None:
    other = fresh_signer()
    note = sign_note(TEXT, [peter_signer(), other])
    assert note.startswith(PETER_NOTE)
    assert verify_note(note, other.verifier()) == TEXT
    assert verify_note(note, Ed25519NoteVerifier.from_vkey(PETER_VKEY)) == TEXT


@pytest.mark.parametrize(
    "text", ["abc", "", "no newline\n\tat the end", "bell\x07\n", "cr\r\n", "lone \ud800\n"]
)
def test_sign_rejects_texts_that_cannot_be_notes(text: str) -> None:
    with pytest.raises(NoteError):
        peter_signer().sign(text)


def test_sign_note_needs_a_signer() -> None:
    with pytest.raises(ValueError, match="at least one signer"):
        sign_note(TEXT, [])


# --- Verifying ----------------------------------------------------------------------------------------


def test_verify_the_known_note() -> None:
    assert verify_note(PETER_NOTE, Ed25519NoteVerifier.from_vkey(PETER_VKEY)) == TEXT


def test_signatures_by_other_keys_are_ignored() -> None:
    peter = Ed25519NoteVerifier.from_vkey(PETER_VKEY)
    enoch = Ed25519NoteVerifier.from_vkey(ENOCH_VKEY)
    both = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert verify_note(both, peter) == TEXT
    assert verify_note(both, enoch) == TEXT
    assert verify_note(both, peter, enoch) == TEXT
    assert verify_note(TEXT + "\n" + ENOCH_SIG + PETER_SIG, peter) == TEXT


def test_note_without_a_known_signature_is_rejected() -> None:
    with pytest.raises(NoteError, match="no signature from a known key"):
        verify_note(PETER_NOTE, Ed25519NoteVerifier.from_vkey(ENOCH_VKEY))
    with pytest.raises(NoteError, match="no signature from a known key"):
        verify_note(PETER_NOTE, fresh_signer("PeterNeumann").verifier())
    # Same key, other name: the name is part of the key's identity.
    misnamed = PETER_NOTE.replace("PeterNeumann", "CarmenSandiego")
    with pytest.raises(NoteError, match="no signature from a known key"):
        verify_note(misnamed, Ed25519NoteVerifier.from_vkey(PETER_VKEY))
    # Other key ID (first base64 characters changed), same name.
    with pytest.raises(NoteError, match="no signature from a known key"):
        verify_note(PETER_NOTE.replace("x08g", "xxxx"), Ed25519NoteVerifier.from_vkey(PETER_VKEY))


def test_bad_signature_from_a_known_key_is_rejected() -> None:
    peter = Ed25519NoteVerifier.from_vkey(PETER_VKEY)
    corrupted = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        verify_note(TEXT + "\n" + corrupted, peter)
    # One good signature does not excuse a bad one by the same key.
    with pytest.raises(NoteError, match="invalid signature"):
        verify_note(TEXT + "\n" + PETER_SIG + corrupted, peter)
    with pytest.raises(NoteError, match="invalid signature"):
        verify_note(PETER_NOTE.replace("cryptography", "cryptograph"), peter)
    truncated = PETER_SIG.replace("x08go/ZJkuBS9UG/", "x08go/ZJ")
    with pytest.raises(NoteError):
        verify_note(TEXT + "\n" + truncated, peter)


@pytest.mark.parametrize(
    "note",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        "\ud800" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name").rstrip("\n"),
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG.replace("\u2014", "-"),
        TEXT + "\n" + PETER_SIG.replace("\u2014 ", "\u2014"),
        TEXT + "\n" + PETER_SIG.replace("=\n", "\n"),
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann ", "Peter+Neumann "),
        TEXT + "\n" + "\u2014 PeterNeumann \n",
        TEXT + "\n" + "\u2014 PeterNeumann AQIDBA==\n",
        TEXT + "\n" + PETER_SIG * 101,
        TEXT.replace("\n", "\r\n") + "\r\n" + PETER_SIG,
    ],
)
def test_malformed_notes_are_rejected(note: str) -> None:
    with pytest.raises(NoteError):
        verify_note(note, Ed25519NoteVerifier.from_vkey(PETER_VKEY))


def test_sixteen_signatures_are_accepted() -> None:
    others = [fresh_signer(f"witness{i}.example") for i in range(15)]
    note = sign_note(TEXT, [*others, peter_signer()])
    assert verify_note(note, Ed25519NoteVerifier.from_vkey(PETER_VKEY)) == TEXT


def test_ambiguous_verifiers_are_refused() -> None:
    peter = Ed25519NoteVerifier.from_vkey(PETER_VKEY)
    impostor = fresh_signer("PeterNeumann").verifier()
    impostor.key_id = peter.key_id
    with pytest.raises(NoteError, match="ambiguous key"):
        verify_note(PETER_NOTE, peter, impostor)
    # The same key listed twice is not ambiguous.
    assert verify_note(PETER_NOTE, peter, Ed25519NoteVerifier.from_vkey(PETER_VKEY)) == TEXT


def test_verify_note_needs_a_verifier() -> None:
    with pytest.raises(ValueError, match="at least one verifier"):
        verify_note(PETER_NOTE)


def test_spec_examples_parse_but_have_no_known_key() -> None:
    stranger = fresh_signer("quasimodo.example/salvatore").verifier()
    with pytest.raises(NoteError, match="no signature from a known key"):
        verify_note(QUASIMODO_NOTE, stranger)
    with pytest.raises(NoteError, match="no signature from a known key"):
        verify_note(SOFA_CHECKPOINT + "\n" + SOFA_SIG, stranger)


def test_text_with_blank_lines_round_trips() -> None:
    signer = fresh_signer()
    for text in ["\n", "a\n\nb\n", "a\n\n", "\n\n\n", "\u2014 looks like a signature\n"]:
        assert verify_note(signer.sign(text), signer.verifier()) == text


@settings(max_examples=50, deadline=None, database=None)
@given(
    lines=st.lists(
        st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), max_size=40),
        min_size=1,
        max_size=6,
    )
)
def test_property_sign_verify_round_trip(lines: list[str]) -> None:
    signer = peter_signer()
    text = "\n".join(lines) + "\n"
    note = signer.sign(text)
    verifier = Ed25519NoteVerifier.from_vkey(PETER_VKEY)
    assert verify_note(note, verifier) == text
    tampered = "x" + note if not note.startswith("x") else "y" + note[1:]
    with pytest.raises(NoteError):
        verify_note(tampered, verifier)


# --- Checkpoints --------------------------------------------------------------------------------------


def test_parse_the_spec_checkpoint() -> None:
    checkpoint = parse_checkpoint(SOFA_CHECKPOINT)
    assert checkpoint == Checkpoint(
        origin="example.com/behind-the-sofa",
        size=20852163,
        root_hash=bytes.fromhex("0ac5186a91863e8e1d90c808014aa89bf5da8e3ee1d9f07630f0378f68f1ab62"),
    )
    assert format_checkpoint(checkpoint.origin, checkpoint.size, checkpoint.root_hash) == SOFA_CHECKPOINT


def test_checkpoint_round_trip_through_a_signed_note() -> None:
    signer = fresh_signer("referral.example/audit")
    root = bytes(range(32))
    text = format_checkpoint("referral.example/audit", 0, root)
    assert text == "referral.example/audit\n0\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    assert parse_checkpoint(verify_note(signer.sign(text), signer.verifier())) == Checkpoint(
        "referral.example/audit", 0, root
    )


def test_checkpoint_extension_lines_are_kept() -> None:
    text = format_checkpoint("o.example", 2**64 - 1, bytes(32), ["ext one", "ext two"])
    assert text.endswith("\next one\next two\n")
    assert parse_checkpoint(text).extensions == ("ext one", "ext two")
    assert parse_checkpoint(text).size == 2**64 - 1


@pytest.mark.parametrize(
    "size_line", ["007", "00", "+1", "-1", "1_000", " 1", "1 ", "\u0661", "0x10", "", "18446744073709551616"]
)
def test_checkpoint_size_must_be_plain_decimal(size_line: str) -> None:
    with pytest.raises(NoteError, match="size"):
        parse_checkpoint(f"o.example\n{size_line}\n{base64.b64encode(bytes(32)).decode()}\n")


@pytest.mark.parametrize(
    "text",
    [
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=",
        "example.com/behind-the-sofa\n20852163\n",
        "\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2J=\n",
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I\n",
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n",
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\next\n\n",
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jx\n",
        "example.com/behind-the-sofa\n20852163\nAAAA" + "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "origin\twith tab\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
    ],
)
def test_malformed_checkpoints_are_rejected(text: str) -> None:
    with pytest.raises(NoteError):
        parse_checkpoint(text)


@pytest.mark.parametrize(
    ("origin", "size", "root", "extensions"),
    [
        ("", 1, bytes(32), ()),
        ("a\nb", 1, bytes(32), ()),
        ("o", -1, bytes(32), ()),
        ("o", 2**64, bytes(32), ()),
        ("o", 1, bytes(31), ()),
        ("o", 1, bytes(32), ("",)),
        ("o", 1, bytes(32), ("two\nlines",)),
    ],
)
def test_format_checkpoint_rejects_bad_fields(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        format_checkpoint(origin, size, root, extensions)
