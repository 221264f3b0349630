"""Tamper-evident audit log: Merkle tree hashing and proofs (RFC 9162), signed notes and checkpoints."""
