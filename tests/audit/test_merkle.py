"""Merkle hashing and proofs: transparency-dev/merkle vectors, an RFC-literal reference, and properties."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from referral.audit.merkle import (
    EMPTY_ROOT,
    CompactTree,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "merkle_vectors.json").read_text())
LEAF_INPUTS = [bytes.fromhex(value) for value in VECTORS["leaf_inputs"]]
NODE_HASHES = [[bytes.fromhex(value) for value in level] for level in VECTORS["node_hashes"]]
ROOTS = [bytes.fromhex(value) for value in VECTORS["root_hashes"]]
LEAVES = NODE_HASHES[0]
SOME_HASH = bytes.fromhex(VECTORS["some_hash"])
EMPTY_TREE_HASH = bytes.fromhex(VECTORS["empty_root"])

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- RFC 9162 §2.1, written as literally as possible, to compare against -----------------------------


def _split(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes, recursively as in the RFC."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) as in the RFC."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) as in the RFC."""
    if m == len(leaves):
        return [] if complete else [ref_mth(leaves)]
    k = _split(len(leaves))
    if m <= k:
        return [*ref_subproof(m, leaves[:k], complete), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def ref_path_length(m: int, n: int) -> int:
    """len(PATH(m, D[n])), which depends on the shape only."""
    if n == 1:
        return 0
    k = _split(n)
    return 1 + (ref_path_length(m, k) if m < k else ref_path_length(m - k, n - k))


def make_leaves(count: int, salt: bytes = b"") -> list[bytes]:
    """Distinct leaf hashes for a test tree."""
    return [leaf_hash(salt + index.to_bytes(4, "big")) for index in range(count)]


def rejects(check: Callable[..., None], *args: Any) -> bool:
    """Whether the verifier raised ProofError (any other exception propagates and fails the test)."""
    try:
        check(*args)
    except ProofError:
        return True
    return False


# --- Hashing and roots --------------------------------------------------------------------------------


def test_leaf_hashes_match_vectors() -> None:
    assert [leaf_hash(data) for data in LEAF_INPUTS] == LEAVES


def test_node_hashes_match_vectors() -> None:
    for lower, upper in itertools.pairwise(NODE_HASHES):
        assert [node_hash(lower[i], lower[i + 1]) for i in range(0, len(lower), 2)] == upper


def test_empty_root() -> None:
    assert EMPTY_ROOT == EMPTY_TREE_HASH == ROOTS[0]
    assert root_from_leaf_hashes([]) == EMPTY_ROOT


@pytest.mark.parametrize("size", range(9))
def test_roots_match_vectors(size: int) -> None:
    assert root_from_leaf_hashes(LEAVES[:size]) == ROOTS[size]


def test_hash_prefixes_separate_leaves_from_nodes() -> None:
    left, right = LEAVES[0], LEAVES[1]
    assert leaf_hash(left + right) != node_hash(left, right)
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()


def test_root_of_a_large_tree() -> None:
    leaves = make_leaves(100_003)
    level = leaves
    # Level by level, the last odd node carried up: an independent way to reach the same root.
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = paired + ([level[-1]] if len(level) % 2 else [])
    assert root_from_leaf_hashes(leaves) == level[0]


@pytest.mark.parametrize("size", range(40))
def test_root_matches_reference(size: int) -> None:
    leaves = make_leaves(size)
    assert root_from_leaf_hashes(leaves) == ref_mth(leaves)


# --- CompactTree --------------------------------------------------------------------------------------


def test_compact_tree_matches_vectors() -> None:
    tree = CompactTree()
    for size, coordinates in enumerate(VECTORS["compact_trees_as_node_coordinates"]):
        expected = [NODE_HASHES[level][index] for level, index in coordinates]
        assert tree.size == size
        assert tree.to_hashes() == expected
        assert tree.root() == ROOTS[size]
        restored = CompactTree.from_hashes(size, expected)
        restored.extend(LEAVES[size:])
        assert restored.root() == ROOTS[8]
        if size < 8:
            tree.append(LEAVES[size])


def test_compact_tree_copy_is_independent() -> None:
    tree = CompactTree()
    tree.extend(LEAVES[:5])
    trial = tree.copy()
    trial.extend(LEAVES[5:])
    assert trial.root() == ROOTS[8]
    assert tree.size == 5
    assert tree.root() == ROOTS[5]


@pytest.mark.parametrize(
    ("size", "hashes"),
    [
        (-1, []),
        (2**64, []),
        (3, [LEAVES[0]]),
        (1, [LEAVES[0], LEAVES[1]]),
        (1, [LEAVES[0][:31]]),
        (0, [LEAVES[0]]),
    ],
)
def test_compact_tree_from_hashes_rejects_bad_state(size: int, hashes: list[bytes]) -> None:
    with pytest.raises(ValueError, match=r"range|right-edge"):
        CompactTree.from_hashes(size, hashes)


def test_compact_tree_rejects_bad_leaf_hash() -> None:
    tree = CompactTree()
    with pytest.raises(ValueError, match="32 bytes"):
        tree.append(b"short")
    assert tree.size == 0


# --- Proof generation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["inclusion_proofs"], ids=lambda v: f"{v['index']}-of-{v['size']}")
def test_inclusion_proof_matches_vectors(vector: dict[str, Any]) -> None:
    proof = [bytes.fromhex(value) for value in vector["proof"]]
    assert vector["index"] == vector["leaf"] - 1
    assert inclusion_proof(LEAVES[: vector["size"]], vector["index"]) == proof


@pytest.mark.parametrize(
    "vector", VECTORS["consistency_proofs"], ids=lambda v: f"{v['size1']}-to-{v['size2']}"
)
def test_consistency_proof_matches_vectors(vector: dict[str, Any]) -> None:
    proof = [bytes.fromhex(value) for value in vector["proof"]]
    assert consistency_proof(LEAVES, vector["size1"], vector["size2"]) == proof


@pytest.mark.parametrize("size", range(1, 34))
def test_proofs_match_reference(size: int) -> None:
    leaves = make_leaves(size)
    for index in range(size):
        assert inclusion_proof(leaves, index) == ref_path(index, leaves)
    for first in range(1, size + 1):
        assert consistency_proof(leaves, first, size) == ref_subproof(first, leaves, True)


def test_proof_generation_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="out of range"):
        inclusion_proof(LEAVES, 8)
    with pytest.raises(ValueError, match="out of range"):
        inclusion_proof(LEAVES, -1)
    with pytest.raises(ValueError, match="out of range"):
        inclusion_proof([], 0)
    for first, second in [(0, 4), (5, 4), (1, 9), (-1, 3)]:
        with pytest.raises(ValueError, match="no consistency proof"):
            consistency_proof(LEAVES, first, second)
    with pytest.raises(ValueError, match="32 bytes"):
        inclusion_proof([*LEAVES[:3], b"short"], 0)


# --- Verification: the Go vectors and their corruptions -----------------------------------------------


def corrupt_inclusion(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, int, int, bytes, list[bytes], bytes]]:
    """Port of corruptInclusionProof in transparency-dev/merkle proof/verify_test.go."""
    probes = [
        ("index - 1", index - 1, size, leaf, proof, root),
        ("index + 1", index + 1, size, leaf, proof, root),
        ("index ^ 2", index ^ 2, size, leaf, proof, root),
        ("size * 2", index, size * 2, leaf, proof, root),
        ("size / 2", index, size // 2, leaf, proof, root),
        ("wrong leaf", index, size, b"WrongLeaf", proof, root),
        ("empty root", index, size, leaf, proof, EMPTY_TREE_HASH),
        ("random root", index, size, leaf, proof, SOME_HASH),
        ("trailing garbage", index, size, leaf, [*proof, b""], root),
        ("trailing root", index, size, leaf, [*proof, root], root),
        ("preceding garbage", index, size, leaf, [b"", *proof], root),
        ("preceding root", index, size, leaf, [root, *proof], root),
    ]
    for position in range(len(proof)):
        wrong = list(proof)
        wrong[position] = bytes([wrong[position][0] ^ 8]) + wrong[position][1:]
        probes.append((f"modified proof[{position}] bit 3", index, size, leaf, wrong, root))
    if proof:
        probes.append(("removed component", index, size, leaf, proof[:-1], root))
    if len(proof) > 1:
        probes.append(("inserted component", index, size, leaf, [proof[0], SOME_HASH, *proof[1:]], root))
    return probes


def corrupt_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> list[tuple[str, int, int, list[bytes], bytes, bytes]]:
    """Port of corruptConsistencyProof in transparency-dev/merkle proof/verify_test.go."""
    probes = [
        ("size1 - 1", size1 - 1, size2, proof, root1, root2),
        ("size1 + 1", size1 + 1, size2, proof, root1, root2),
        ("size1 ^ 2", size1 ^ 2, size2, proof, root1, root2),
        ("size2 * 2", size1, size2 * 2, proof, root1, root2),
        ("size2 / 2", size1, size2 // 2, proof, root1, root2),
        ("wrong root1", size1, size2, proof, b"WrongRoot", root2),
        ("wrong root2", size1, size2, proof, root1, b"WrongRoot"),
        ("swapped roots", size1, size2, proof, root2, root1),
        ("empty proof", size1, size2, [], root1, root2),
        ("trailing garbage", size1, size2, [*proof, b""], root1, root2),
        ("trailing root1", size1, size2, [*proof, root1], root1, root2),
        ("trailing root2", size1, size2, [*proof, root2], root1, root2),
        ("preceding garbage", size1, size2, [b"", *proof], root1, root2),
        ("preceding root1", size1, size2, [root1, *proof], root1, root2),
        ("preceding root2", size1, size2, [root2, *proof], root1, root2),
        ("preceding proof[0]", size1, size2, [proof[0], *proof], root1, root2),
    ]
    if proof:
        probes.append(("truncated proof", size1, size2, proof[:-1], root1, root2))
    for position in range(len(proof)):
        wrong = list(proof)
        wrong[position] = bytes([wrong[position][0] ^ 16]) + wrong[position][1:]
        probes.append((f"modified proof[{position}] bit 4", size1, size2, wrong, root1, root2))
    return probes


@pytest.mark.parametrize("vector", VECTORS["inclusion_proofs"], ids=lambda v: f"{v['index']}-of-{v['size']}")
def test_verify_inclusion_vectors_and_corruptions(vector: dict[str, Any]) -> None:
    index, size = vector["index"], vector["size"]
    proof = [bytes.fromhex(value) for value in vector["proof"]]
    verify_inclusion(index, size, LEAVES[index], proof, ROOTS[size])
    accepted = [
        description
        for description, i, n, leaf, p, root in corrupt_inclusion(
            index, size, proof, ROOTS[size], LEAVES[index]
        )
        if not rejects(verify_inclusion, i, n, leaf, p, root)
    ]
    assert accepted == []


@pytest.mark.parametrize(
    "vector", VECTORS["consistency_proofs"], ids=lambda v: f"{v['size1']}-to-{v['size2']}"
)
def test_verify_consistency_vectors_and_corruptions(vector: dict[str, Any]) -> None:
    size1, size2 = vector["size1"], vector["size2"]
    proof = [bytes.fromhex(value) for value in vector["proof"]]
    verify_consistency(size1, size2, proof, ROOTS[size1], ROOTS[size2])
    if not proof:
        return
    accepted = [
        description
        for description, s1, s2, p, r1, r2 in corrupt_consistency(
            size1, size2, ROOTS[size1], ROOTS[size2], proof
        )
        if not rejects(verify_consistency, s1, s2, p, r1, r2)
    ]
    assert accepted == []


@pytest.mark.parametrize("name", sorted(VECTORS["probe_files"]))
def test_go_probe_files(name: str) -> None:
    probe = VECTORS["probe_files"][name]

    def b64(value: str) -> bytes:
        return base64.b64decode(value, validate=True)

    proof = [b64(value) for value in probe["proof"] or []]

    def check() -> None:
        if name.startswith("inclusion/"):
            verify_inclusion(
                probe["leafIdx"], probe["treeSize"], b64(probe["leafHash"]), proof, b64(probe["root"])
            )
        else:
            verify_consistency(
                probe["size1"], probe["size2"], proof, b64(probe["root1"]), b64(probe["root2"])
            )

    assert rejects(check) == probe["wantErr"]


def test_every_small_proof_verifies() -> None:
    for size in range(1, 9):
        for index in range(size):
            verify_inclusion(index, size, LEAVES[index], inclusion_proof(LEAVES[:size], index), ROOTS[size])
        for first in range(1, size + 1):
            verify_consistency(first, size, consistency_proof(LEAVES, first, size), ROOTS[first], ROOTS[size])


# --- Verification: the edge cases of TestVerifyInclusionSingleEntry / TestVerifyInclusion / Consistency --


def test_verify_inclusion_single_entry() -> None:
    only = leaf_hash(b"data")
    verify_inclusion(0, 1, only, [], only)
    for leaf, root in [(only, b""), (b"", only), (b"", b"")]:
        assert rejects(verify_inclusion, 0, 1, leaf, [], root)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (0, 1), (1, 0), (2, 1)])
def test_verify_inclusion_rejects_nonsense(index: int, size: int) -> None:
    assert rejects(verify_inclusion, index, size, SOME_HASH, [], b"")
    assert rejects(verify_inclusion, index, size, b"", [], EMPTY_TREE_HASH)
    assert rejects(verify_inclusion, index, size, SOME_HASH, [], EMPTY_TREE_HASH)


def test_verify_inclusion_range_checks() -> None:
    proof = inclusion_proof(LEAVES, 5)
    assert rejects(verify_inclusion, -1, 8, LEAVES[5], proof, ROOTS[8])
    assert rejects(verify_inclusion, 8, 8, LEAVES[5], proof, ROOTS[8])
    assert rejects(verify_inclusion, 5, 2**64, LEAVES[5], proof, ROOTS[8])


def test_verify_rejects_proof_hashes_of_the_wrong_size() -> None:
    inclusion = inclusion_proof(LEAVES, 5)
    consistency = consistency_proof(LEAVES, 6, 8)
    for position in range(3):
        for length in (31, 33):
            # Refused for its length before any hashing, not merely because the root comes out wrong.
            wrong = list(inclusion)
            wrong[position] = (wrong[position] + b"\x00")[:length]
            with pytest.raises(ProofError, match="proof hash must be 32 bytes"):
                verify_inclusion(5, 8, LEAVES[5], wrong, ROOTS[8])
            wrong = list(consistency)
            wrong[position] = (wrong[position] + b"\x00")[:length]
            with pytest.raises(ProofError, match="proof hash must be 32 bytes"):
                verify_consistency(6, 8, wrong, ROOTS[6], ROOTS[8])


ROOT_A = hashlib.sha256(b"don't care 1").digest()
ROOT_B = hashlib.sha256(b"don't care 2").digest()


@pytest.mark.parametrize(
    ("size1", "size2", "root1", "root2", "proof", "valid"),
    [
        # From TestVerifyConsistency, with the roots made 32 bytes long.
        (0, 0, ROOT_A, ROOT_B, [], False),
        (1, 1, ROOT_A, ROOT_B, [], False),
        (1, 1, ROOT_B, ROOT_B, [], True),
        (1, 0, ROOT_A, ROOT_B, [], False),
        (2, 1, ROOT_A, ROOT_B, [], False),
        (1, 2, ROOT_A, ROOT_B, [], False),
        (0, 0, EMPTY_TREE_HASH, ROOT_B, [], False),
        (1, 1, EMPTY_TREE_HASH, ROOT_B, [], False),
        (0, 0, EMPTY_TREE_HASH, EMPTY_TREE_HASH, [EMPTY_TREE_HASH], False),
        (0, 1, EMPTY_TREE_HASH, EMPTY_TREE_HASH, [EMPTY_TREE_HASH], False),
        (1, 1, EMPTY_TREE_HASH, EMPTY_TREE_HASH, [EMPTY_TREE_HASH], False),
        # Go accepts these two (any tree extends the empty one); this port refuses size1 == 0 outright.
        (0, 0, ROOT_A, ROOT_A, [], False),
        (0, 1, ROOT_A, ROOT_B, [], False),
        # Go accepts equal roots of any length at equal sizes; this port insists on 32-byte hashes.
        (1, 1, b"don't care 2", b"don't care 2", [], False),
        (3, 2**64, ROOT_A, ROOT_B, [], False),
    ],
)
def test_verify_consistency_edge_cases(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes], valid: bool
) -> None:
    assert rejects(verify_consistency, size1, size2, proof, root1, root2) != valid


def test_proof_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="does not match"):
        verify_inclusion(0, 8, LEAVES[1], inclusion_proof(LEAVES, 0), ROOTS[8])


# --- Properties ---------------------------------------------------------------------------------------


def mutations(proof: list[bytes], data: st.DataObject) -> list[tuple[str, list[bytes]]]:
    """Ways to damage a proof: every one must be rejected."""
    damaged = [("appended hash", [*proof, SOME_HASH]), ("prepended hash", [SOME_HASH, *proof])]
    if proof:
        position = data.draw(st.integers(0, len(proof) - 1), label="position")
        byte = data.draw(st.integers(0, 31), label="byte")
        bit = data.draw(st.integers(0, 7), label="bit")
        flipped = list(proof)
        value = bytearray(flipped[position])
        value[byte] ^= 1 << bit
        flipped[position] = bytes(value)
        damaged += [
            ("flipped bit", flipped),
            ("dropped last", proof[:-1]),
            ("dropped first", proof[1:]),
            ("dropped one", proof[:position] + proof[position + 1 :]),
            ("duplicated one", [*proof[: position + 1], *proof[position:]]),
        ]
    if len(proof) > 1:
        damaged.append(("reversed", proof[::-1]))
    return [(name, p) for name, p in damaged if p != proof]


@PROPERTY_SETTINGS
@given(size=st.integers(1, 2000), salt=st.binary(max_size=4), data=st.data())
def test_property_inclusion_proofs(size: int, salt: bytes, data: st.DataObject) -> None:
    leaves = make_leaves(size, salt)
    root = root_from_leaf_hashes(leaves)
    indices = data.draw(
        st.lists(st.integers(0, size - 1), min_size=1, max_size=4, unique=True), label="indices"
    )
    for index in indices:
        proof = inclusion_proof(leaves, index)
        assert len(proof) == ref_path_length(index, size)
        verify_inclusion(index, size, leaves[index], proof, root)
        for name, damaged in mutations(proof, data):
            assert rejects(verify_inclusion, index, size, leaves[index], damaged, root), name
        if size > 1:
            other = (index + data.draw(st.integers(1, size - 1), label="offset")) % size
            # Another position in the same tree never shares a path shape, so only a collision could pass.
            assert rejects(verify_inclusion, other, size, leaves[index], proof, root)
            assert rejects(verify_inclusion, index, size, leaves[other], proof, root)
        wrong_size = data.draw(st.integers(1, 4096).filter(size.__ne__), label="wrong size")
        if index >= wrong_size or ref_path_length(index, wrong_size) != len(proof):
            assert rejects(verify_inclusion, index, wrong_size, leaves[index], proof, root)
        assert rejects(verify_inclusion, index, size, leaves[index], proof, SOME_HASH)


@PROPERTY_SETTINGS
@given(size2=st.integers(2, 2000), salt=st.binary(max_size=4), data=st.data())
def test_property_consistency_proofs(size2: int, salt: bytes, data: st.DataObject) -> None:
    leaves = make_leaves(size2, salt)
    root2 = root_from_leaf_hashes(leaves)
    firsts = data.draw(
        st.lists(st.integers(1, size2 - 1), min_size=1, max_size=4, unique=True), label="size1s"
    )
    for size1 in firsts:
        root1 = root_from_leaf_hashes(leaves[:size1])
        proof = consistency_proof(leaves, size1, size2)
        verify_consistency(size1, size2, proof, root1, root2)
        verify_consistency(size1, size1, [], root1, root1)
        for name, damaged in mutations(proof, data):
            assert rejects(verify_consistency, size1, size2, damaged, root1, root2), name
        assert rejects(verify_consistency, size1, size2, proof, root2, root1)
        assert rejects(verify_consistency, size1, size2, proof, SOME_HASH, root2)
        assert rejects(verify_consistency, size1, size2, proof, root1, SOME_HASH)
        assert rejects(verify_consistency, size2, size1, proof, root2, root1)
        assert rejects(verify_consistency, 0, size2, proof, root1, root2)
        assert rejects(verify_consistency, size1, size2, [], root1, root2)


@PROPERTY_SETTINGS
@given(
    batches=st.lists(st.integers(0, 300), min_size=1, max_size=8),
    start=st.integers(0, 300),
    salt=st.binary(max_size=4),
)
def test_property_compact_tree_batches(batches: list[int], start: int, salt: bytes) -> None:
    leaves = make_leaves(start + sum(batches), salt)
    tree = CompactTree()
    tree.extend(leaves[:start])
    size = start
    for batch in batches:
        # What a sequencer does: reload the stored right edge, append the batch, publish the root.
        stored_size, stored_hashes = tree.size, tree.to_hashes()
        assert len(stored_hashes) == stored_size.bit_count()
        tree = CompactTree.from_hashes(stored_size, stored_hashes)
        tree.extend(leaves[size : size + batch])
        size += batch
        assert tree.size == size
        assert tree.root() == root_from_leaf_hashes(leaves[:size])
    assert tree.root() == ref_mth(leaves)


@PROPERTY_SETTINGS
@given(size=st.integers(1, 64), salt=st.binary(max_size=4), data=st.data())
def test_property_small_trees_match_reference(size: int, salt: bytes, data: st.DataObject) -> None:
    leaves = make_leaves(size, salt)
    assert root_from_leaf_hashes(leaves) == ref_mth(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    assert inclusion_proof(leaves, index) == ref_path(index, leaves)
    first = data.draw(st.integers(1, size), label="first")
    assert consistency_proof(leaves, first, size) == ref_subproof(first, leaves, True)
