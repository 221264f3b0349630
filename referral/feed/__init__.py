"""Events for the parties: the outbox written with every change, and the feed that serves it (pull)."""
