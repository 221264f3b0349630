"""An in-process revocation generation: bumped whenever a key is revoked or a client disabled here.

Caches of trusted things (parsed party keys, verified access tokens) remember the generation they were
filled at and drop entries from an older one. This covers revocations committed by this process at once;
revocations committed elsewhere (the CLI, other processes or hosts) are covered by each cache's short TTL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

_generation = 0


def generation() -> int:
    """The current revocation generation of this process."""
    return _generation


def bump() -> None:
    """Invalidate every cached trust decision of this process."""
    global _generation  # noqa: PLW0603 - one process-wide counter is the whole point
    _generation += 1


def bump_after_commit(session: AsyncSession) -> None:
    """Invalidate caches now and once more after ``session`` commits.

    The second bump matters: a concurrent request may re-read the not-yet-committed (still valid) row
    between the first bump and the commit and cache it under the new generation.
    """
    bump()

    def after_commit(_session: Any) -> None:
        bump()

    event.listen(session.sync_session, "after_commit", after_commit, once=True)
