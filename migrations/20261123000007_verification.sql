-- Domain ownership verification: a DomainVerifier actor looks up the TXT challenge of pending
-- domains (with backoff, until a deadline) and re-checks verified ones. Zone actors steer only
-- verified domains. Lookups never happen inside a transaction: results are written with a
-- condition on the state they were made for.

alter table service_domains
    add column verification_checked_at timestamptz,
    add column verification_error      text,
    add column verification_attempts   integer not null default 0,
    -- When the verifier looks next (null: as soon as it can).
    add column verification_next_at    timestamptz,
    -- A verified domain whose challenge has disappeared: flagged, still steered (un-steering a
    -- domain mid-storm because a TXT record was cleaned up would be worse).
    add column verification_lost_at    timestamptz;

create index service_domains_verification_due_idx
    on service_domains (shard, verification_next_at) where deleted_at is null;

-- Domains steered before verification existed (dev mode) count as verified.
update service_domains set verification_status = 'verified', verified_at = coalesce(verified_at, now())
 where steering_enabled and verification_status = 'pending';
