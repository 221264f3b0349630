"""Push delivery: webhook subscriptions, signed deliveries of outbox events, retries and their record."""
