"""Parties, their registered public signing keys (JWKS) and their API clients (DESIGN.md §3)."""
