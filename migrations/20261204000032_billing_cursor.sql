-- Billing stops rewriting the snapshots it bills (issue 17: tagging each billed snapshot with
-- its invoice was the largest cost of a million-snapshot invoice run: a new row version and two
-- unique-index entries per snapshot).
--
-- * A snapshot is billed when its line item exists: the line's primary key is the snapshot's
--   id, as it always was. The snapshot's own `invoice_id` and `billed_at` are dropped; readers
--   take both from the line (`billed_at` was the run's `now()`, which is the line's
--   `created_at`). Every snapshot tagged so far has its line, so nothing is lost.
-- * Every snapshot gets a sequence number `seq`, assigned when it is inserted, and each
--   customer a billing cursor: every snapshot of the customer whose `seq` is at or below the
--   cursor is billed. A run reads the snapshots above the cursor (`usage_snapshots_billing_idx`),
--   bills the settled ones that have no line, and moves the cursor to just below the first
--   snapshot it had to leave (`tranche_core::billing::next_cursor`). It looks for lines only up
--   to the highest `seq` billed so far (`high_seq`): nothing above it can have one.
-- * The cursor is only sound if no snapshot can commit with a `seq` below one a run has already
--   seen. So writers of a customer's snapshots hold the customer's billing lock in shared mode
--   (advisory, key space "BILL" = 1112099916) from before they read until they commit, and a
--   billing run holds it exclusively: a run sees no writer in flight, and a writer never changes
--   a snapshot a run is billing. The insert trigger below takes the shared lock before it
--   assigns `seq`, so even an insert written by hand keeps the rule; the application's writer
--   (`postgres::usage::record_in`) takes it before it reads the snapshots it may update.
-- * Nodes of the previous release tag snapshots and read the dropped columns: upgrade every
--   node together (their billing and usage writes fail on the missing columns until then;
--   nothing is billed twice, the line's key forbids it).

create sequence usage_snapshots_seq as bigint;

alter table usage_snapshots add column seq bigint;
update usage_snapshots set seq = nextval('usage_snapshots_seq');
alter table usage_snapshots alter column seq set not null;
alter sequence usage_snapshots_seq owned by usage_snapshots.seq;

create function tranche_usage_snapshot_seq() returns trigger language plpgsql as $$
begin
    perform pg_advisory_xact_lock_shared(1112099916, (new.customer_id % 2147483647)::int4);
    new.seq := nextval('usage_snapshots_seq');
    return new;
end;
$$;
create trigger usage_snapshots_seq before insert on usage_snapshots
    for each row execute function tranche_usage_snapshot_seq();

drop index usage_snapshots_unbilled_idx;
create index usage_snapshots_billing_idx on usage_snapshots (customer_id, seq);
alter table usage_snapshots drop column invoice_id, drop column billed_at;

create table billing_cursors (
    customer_id bigint constraint billing_cursors_pkey primary key
                constraint billing_cursors_customer_id_fkey references customers (id) on delete cascade,
    -- Every snapshot of the customer with `seq` at or below this is billed.
    seq         bigint not null constraint billing_cursors_seq_check check (seq >= 0),
    -- The highest `seq` billed so far: no snapshot above it has a line, so a run looks for
    -- lines only between the cursor and this.
    high_seq    bigint not null default 0,
    updated_at  timestamptz not null default now()
);
