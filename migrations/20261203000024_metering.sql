-- Event-level metering (issue 15): usage events deduplicated per (customer, source, id),
-- per-minute rollups, per-period totals against monthly quotas, and the markers that make each
-- quota threshold announce itself once per period.
--
-- Every accepted event is written by one transaction of a node's metering batcher together with
-- its rollup, its period total, the fold queue entry of its hour and any threshold marker it
-- crosses; the request is acknowledged only after that transaction commits.
--
-- The hot tables (events, rollups, totals) carry no foreign keys: the batcher writes tens of
-- thousands of rows a second and the API has checked the customer and service already. Their
-- rows go with the retention sweep (events) or stay as history (rollups, totals).

-- A customer's metering cycle: monthly periods from `billing_day` (1–28) at local midnight in
-- `time_zone` (an IANA name). Absent: day 1, UTC.
create table metering_accounts (
    customer_id  bigint constraint metering_accounts_pkey primary key
                 constraint metering_accounts_customer_id_fkey references customers (id) on delete cascade,
    billing_day  integer not null default 1
                 constraint metering_accounts_billing_day_check check (billing_day between 1 and 28),
    time_zone    text not null default 'UTC'
                 constraint metering_accounts_time_zone_check check (length(time_zone) between 1 and 64),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);
create trigger metering_accounts_set_updated_at before update on metering_accounts
    for each row execute function tranche_set_updated_at();

-- A customer's metrics: the built-in ones (`primary_bytes`, `backup_bytes`, `requests`) may
-- have a row for their quota; a custom metric exists only as a row here (declared). `quota`
-- null: no limit. `over_quota`: `notify` (accept and announce) or `reject` (refuse with 429).
create table metering_quotas (
    customer_id  bigint not null
                 constraint metering_quotas_customer_id_fkey references customers (id) on delete cascade,
    metric       text not null
                 constraint metering_quotas_metric_check check (metric ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    quota        numeric constraint metering_quotas_quota_check check (quota >= 0),
    over_quota   text not null default 'notify'
                 constraint metering_quotas_over_quota_check check (over_quota in ('notify', 'reject')),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    constraint metering_quotas_pkey primary key (customer_id, metric)
);
create trigger metering_quotas_set_updated_at before update on metering_quotas
    for each row execute function tranche_set_updated_at();

-- Accepted events, kept at least 32 days after receipt for deduplication (the batcher's prune
-- deletes older ones). The key is the event's identity: a replay finds it.
create table usage_events (
    customer_id  bigint not null,
    -- Byte-wise ("C") comparison: identities are opaque strings, and the key's index is the
    -- hottest in the batcher's transaction.
    source       text collate "C" not null,
    event_id     text collate "C" not null,
    service_id   bigint not null,
    metric       text not null,
    quantity     numeric not null constraint usage_events_quantity_check check (quantity >= 0),
    occurred_at  timestamptz not null,
    received_at  timestamptz not null default now(),
    constraint usage_events_pkey primary key (customer_id, source, event_id)
);
-- Rows arrive in receipt order: a block-range index serves the retention sweep at almost no
-- cost per insert.
create index usage_events_received_at_idx on usage_events using brin (received_at);

-- The sum of a service's events per metric and minute (of `occurred_at`).
create table usage_rollups (
    customer_id  bigint not null,
    metric       text not null,
    service_id   bigint not null,
    minute       timestamptz not null
                 constraint usage_rollups_minute_check check (minute = date_trunc('minute', minute, 'UTC')),
    quantity     numeric not null constraint usage_rollups_quantity_check check (quantity >= 0),
    events       bigint not null constraint usage_rollups_events_check check (events >= 0),
    constraint usage_rollups_pkey primary key (customer_id, metric, service_id, minute)
);

-- The customer's total per metric and metering period (all services): what quotas are
-- checked against. Its row lock serialises the batches (of any node) that add to it.
create table usage_period_totals (
    customer_id  bigint not null,
    metric       text not null,
    period_start timestamptz not null,
    period_end   timestamptz not null,
    quantity     numeric not null constraint usage_period_totals_quantity_check check (quantity >= 0),
    events       bigint not null constraint usage_period_totals_events_check check (events >= 0),
    updated_at   timestamptz not null default now(),
    constraint usage_period_totals_pkey primary key (customer_id, metric, period_start),
    constraint usage_period_totals_period_check check (period_end > period_start)
);

-- A quota threshold (80, 100 %) a period's total crossed: written in the transaction that
-- crossed it, with its `quota.threshold_crossed` event, at most once per period.
create table quota_threshold_markers (
    customer_id  bigint not null
                 constraint quota_threshold_markers_customer_id_fkey references customers (id) on delete cascade,
    metric       text not null,
    period_start timestamptz not null,
    threshold    integer not null constraint quota_threshold_markers_threshold_check check (threshold in (80, 100)),
    period_end   timestamptz not null,
    quota        numeric not null,
    total        numeric not null,
    node_id      text not null,
    crossed_at   timestamptz not null default now(),
    constraint quota_threshold_markers_pkey primary key (customer_id, metric, period_start, threshold)
);

-- Hours of billed metrics (`primary_bytes`, `backup_bytes`) whose rollups changed since they
-- were last folded into the hourly `usage_snapshots` (source `events`). The batcher upserts a
-- row (waiting for a fold that holds it); the fold deletes the rows it folded, in the same
-- transaction as the snapshots, so no change is folded twice or missed.
create table usage_fold_queue (
    customer_id  bigint not null,
    service_id   bigint not null,
    hour         timestamptz not null
                 constraint usage_fold_queue_hour_check check (hour = date_trunc('hour', hour, 'UTC')),
    touched_at   timestamptz not null default now(),
    constraint usage_fold_queue_pkey primary key (customer_id, service_id, hour)
);
