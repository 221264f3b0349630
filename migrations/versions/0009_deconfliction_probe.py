"""De-confliction in the statement that stores a group (PostgreSQL only): ``referral_overlaps`` takes the
per-provider de-confliction locks and then returns the items of open referrals to those providers covering
one of the group's (provider, URL) or (provider, content hash) pairs.

It is a PL/pgSQL function, and ``VOLATILE``, because of what it must see: each of its queries takes a fresh
snapshot, so the look-up, run once the locks are held, sees every referral committed before, including by a
transaction that held a lock while this one waited for it. A look-up in the storing statement itself would
see the database as it was when that statement started, before the wait. With the function, a group with
nothing to link is stored by one statement in its own implicit transaction: one round trip, with the locks
held only while PostgreSQL runs it, no longer across the client's round trips; a group that must be linked
needs no statement of its own for the locks either.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CREATE = """
CREATE FUNCTION referral_overlaps(
    lock_namespace integer,
    addressees varchar[],
    url_addressees varchar[],
    urls varchar[],
    hash_addressees varchar[],
    hashes varchar[],
    open_statuses varchar[]
) RETURNS TABLE (
    referral_id varchar, issuer_id varchar, addressee_id varchar, url varchar, content_sha256 varchar
)
LANGUAGE plpgsql VOLATILE
-- Planned at every call, for the table as it is: a plan cached while referral_items was small probes the URLs
-- through the smaller (provider, hash) index and filters every item of the provider by URL.
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    lock_key integer;
BEGIN
    -- In the order of the lock keys, as every transaction that stores referrals takes them: never in a cycle.
    FOR lock_key IN SELECT DISTINCT hashtext(addressee) FROM unnest(addressees) AS addressee ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(lock_namespace, lock_key);
    END LOOP;
    -- The items of open referrals covering one of the pairs: an index probe per pair (OFFSET 0: never a join
    -- that reads the whole table).
    RETURN QUERY
    SELECT DISTINCT probe.referral_id, referral.issuer_id, probe.addressee_id, probe.url, probe.content_sha256
    FROM (
        SELECT found.*
        FROM unnest(url_addressees, urls) AS pair(addressee_id, value)
        CROSS JOIN LATERAL (
            SELECT item.referral_id, item.addressee_id, item.url, item.content_sha256
            FROM referral_items AS item
            WHERE item.addressee_id = pair.addressee_id AND item.url = pair.value OFFSET 0
        ) AS found
        UNION ALL
        SELECT found.*
        FROM unnest(hash_addressees, hashes) AS pair(addressee_id, value)
        CROSS JOIN LATERAL (
            SELECT item.referral_id, item.addressee_id, item.url, item.content_sha256
            FROM referral_items AS item
            WHERE item.addressee_id = pair.addressee_id AND item.content_sha256 = pair.value OFFSET 0
        ) AS found
    ) AS probe
    JOIN referrals AS referral ON referral.id = probe.referral_id
    WHERE referral.status = ANY(open_statuses);
END
$$
"""


def upgrade() -> None:
    """Create ``referral_overlaps``."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(CREATE)


def downgrade() -> None:
    """Drop ``referral_overlaps``."""
    if op.get_bind().dialect.name != "postgresql":
        return
    arrays = ", ".join(["varchar[]"] * 6)
    op.execute(f"DROP FUNCTION referral_overlaps(integer, {arrays})")
