-- Usage and billing: usage snapshots (pushed by metering pipelines, pulled from CDN analytics),
-- invoices and their line items, and the record of every billing run.
--
-- Money columns are numeric: whole US cents (`*_cents`, scale 0) and the unrounded amounts
-- (`*_exact`) they were rounded from. Byte counts are bigint (up to 2^63 - 1); every product of
-- them is computed in the application with rust_decimal, never here.
--
-- Exactly-once billing is guarded three times: the billing transaction checks the customer
-- shard's fencing epoch, locks the snapshots it bills (`for update skip locked`) and tags them
-- only where `invoice_id is null`, and a snapshot can be on at most one line item (the line's
-- primary key is the snapshot's id).

create table invoices (
    id              uuid constraint invoices_pkey primary key default gen_random_uuid(),
    customer_id     bigint not null
                    constraint invoices_customer_id_fkey references customers (id) on delete cascade,
    -- The billing period [period_start, period_end), aligned to the configured period length.
    period_start    timestamptz not null,
    period_end      timestamptz not null,
    -- draft: the period may still receive (late) usage; finalized: immutable.
    status          text not null default 'draft'
                    constraint invoices_status_check check (status in ('draft', 'finalized')),
    currency        text not null default 'USD' constraint invoices_currency_check check (currency = 'USD'),
    subtotal_cents  numeric not null default 0 constraint invoices_subtotal_cents_check check (subtotal_cents = trunc(subtotal_cents)),
    discount_cents  numeric not null default 0 constraint invoices_discount_cents_check check (discount_cents = trunc(discount_cents)),
    total_cents     numeric not null default 0 constraint invoices_total_cents_check check (total_cents = subtotal_cents - discount_cents),
    line_count      integer not null default 0,
    -- Node and run that created the invoice.
    created_by_node text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    finalized_at    timestamptz,
    constraint invoices_period_check check (period_end > period_start),
    -- One invoice per customer and period, whichever node bills it.
    constraint invoices_customer_id_period_start_key unique (customer_id, period_start)
);
create index invoices_customer_id_created_at_idx on invoices (customer_id, period_start desc);
create index invoices_draft_idx on invoices (customer_id) where status = 'draft';
create trigger invoices_set_updated_at before update on invoices
    for each row execute function tranche_set_updated_at();

create table usage_snapshots (
    id            uuid constraint usage_snapshots_pkey primary key default gen_random_uuid(),
    service_id    bigint not null
                  constraint usage_snapshots_service_id_fkey references services (id) on delete cascade,
    -- Denormalised from the service, for the billing query's index.
    customer_id   bigint not null
                  constraint usage_snapshots_customer_id_fkey references customers (id) on delete cascade,
    window_start  timestamptz not null,
    window_end    timestamptz not null,
    primary_bytes bigint not null constraint usage_snapshots_primary_bytes_check check (primary_bytes >= 0),
    backup_bytes  bigint not null constraint usage_snapshots_backup_bytes_check check (backup_bytes >= 0),
    -- Who reported it: `cloudflare`, `api`, a metering pipeline's name.
    source        text not null constraint usage_snapshots_source_check check (length(source) between 1 and 64),
    -- 0: the report itself. n > 0: an adjustment, the usage reported for this window after
    -- revisions 0..n-1 were invoiced (an invoiced snapshot is never changed).
    revision      integer not null default 0 constraint usage_snapshots_revision_check check (revision >= 0),
    -- The invoice it is billed on. Written only by the billing transaction, together with the
    -- snapshot's line item (whose foreign key holds the invoice); no second key check here,
    -- since billing tags a million snapshots a run.
    invoice_id    uuid,
    billed_at     timestamptz,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now(),
    constraint usage_snapshots_window_check check (window_end > window_start),
    constraint usage_snapshots_key unique (service_id, window_start, window_end, source, revision)
);
create index usage_snapshots_unbilled_idx on usage_snapshots (customer_id, window_end) where invoice_id is null;
-- No updated_at trigger here: the two statements that update snapshots (recording usage,
-- tagging them billed) set updated_at themselves, and billing tags a million rows a run.
-- (The key above also serves per-service listings by window.)

create table invoice_line_items (
    -- A snapshot is on at most one line, whichever node and run billed it: the line's key.
    -- (Lines are written only by the billing transaction, from the snapshots it has locked;
    -- no per-line foreign-key check back to them.)
    snapshot_id            uuid constraint invoice_line_items_pkey primary key,
    invoice_id             uuid not null
                           constraint invoice_line_items_invoice_id_fkey references invoices (id) on delete cascade,
    service_id             bigint not null,
    window_start           timestamptz not null,
    window_end             timestamptz not null,
    source                 text not null,
    -- Usage of a window whose earlier report was already invoiced.
    adjustment             boolean not null default false,
    primary_bytes          bigint not null,
    backup_bytes           bigint not null,
    -- Rates in force when the line was computed.
    rate_cents_per_gb      numeric not null,
    discount_rate          numeric not null,
    -- Seconds of the window inside the union of the service's storms; the largest
    -- max_coverage_factor of its policies; coverage = min(overlap × factor / window, factor).
    storm_overlap_seconds  numeric not null,
    max_coverage_factor    numeric not null,
    coverage               numeric not null,
    primary_charge_exact   numeric not null,
    primary_charge_cents   numeric not null,
    backup_charge_exact    numeric not null,
    backup_charge_cents    numeric not null,
    subtotal_cents         numeric not null,
    discount_exact         numeric not null,
    discount_cents         numeric not null,
    total_cents            numeric not null,
    -- The storms whose intervals produced the discount.
    storm_ids              uuid[] not null default '{}',
    created_at             timestamptz not null default now(),
    constraint invoice_line_items_total_check check (total_cents = subtotal_cents - discount_cents)
);
create index invoice_line_items_invoice_id_idx on invoice_line_items (invoice_id, window_start);

-- One row per billing run that billed snapshots, finalized an invoice, or failed (a run that
-- finds nothing to do writes nothing), kept for the retention period.
create table billing_runs (
    id                  uuid constraint billing_runs_pkey primary key default gen_random_uuid(),
    customer_id         bigint not null
                        constraint billing_runs_customer_id_fkey references customers (id) on delete cascade,
    node_id             text not null,
    started_at          timestamptz not null,
    finished_at         timestamptz not null,
    invoices_touched    integer not null default 0,
    invoices_created    integer not null default 0,
    invoices_finalized  integer not null default 0,
    snapshots_billed    integer not null default 0,
    error               text
);
create index billing_runs_customer_id_started_at_idx on billing_runs (customer_id, started_at desc);
-- Records are pruned after a retention period (90 days by default).
create index billing_runs_finished_at_idx on billing_runs (finished_at);
