"""Referrals, removal orders and preservation requests: signed documents, lifecycle rules."""
