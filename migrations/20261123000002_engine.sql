-- The actor engine: probe settings per domain, sharding, per-domain storm state, per-minute
-- probe aggregates, cluster membership and shard leases (fencing).

alter table service_domains
    add column probe_scheme      text not null default 'https'
        constraint service_domains_probe_scheme_check check (probe_scheme in ('http', 'https')),
    add column expected_statuses text not null default '200-399',
    add column probe_timeout_ms  integer not null default 5000
        constraint service_domains_probe_timeout_ms_check check (probe_timeout_ms between 100 and 60000),
    -- The DNS zone the hostname is steered in (sharding key: a zone and its domains live on one node).
    add column dns_zone          text,
    -- shard_of(dns_zone) in [0, 256), computed by the application at insert.
    add column shard             smallint not null default 0
        constraint service_domains_shard_check check (shard between 0 and 255);
create index service_domains_shard_idx on service_domains (shard) where deleted_at is null;

-- What the storm machine decided for a domain: state and desired weights. Written only in the
-- transaction that records the decision (with its storm event), under the shard's fencing epoch.
create table domain_states (
    domain_id              bigint constraint domain_states_pkey primary key
                           constraint domain_states_domain_id_fkey references service_domains (id) on delete cascade,
    state                  text not null default 'healthy'
                           constraint domain_states_state_check check (state in ('healthy', 'storm', 'recovering', 'backup_unhealthy')),
    state_since            timestamptz not null default now(),
    desired_primary_weight smallint not null default 100,
    desired_backup_weight  smallint not null default 0,
    -- Availabilities (ratios) of the windows that triggered the last decision.
    trigger_primary_avail  numeric,
    trigger_backup_avail   numeric,
    decided_by_node        text,
    created_at             timestamptz not null default now(),
    updated_at             timestamptz not null default now(),
    constraint domain_states_weights_check check (
        desired_primary_weight between 0 and 100 and desired_backup_weight between 0 and 100
        and desired_primary_weight + desired_backup_weight = 100)
);
create trigger domain_states_set_updated_at before update on domain_states
    for each row execute function tranche_set_updated_at();

-- Latest observations per domain (soft state, written in batches): window availability and
-- the last probe result per CDN, for the state API.
create table domain_observations (
    domain_id      bigint constraint domain_observations_pkey primary key
                   constraint domain_observations_domain_id_fkey references service_domains (id) on delete cascade,
    node_id        text not null,
    observed_at    timestamptz not null,
    primary_avail  numeric,
    backup_avail   numeric,
    primary_last   jsonb,
    backup_last    jsonb
);

-- Per domain, per CDN, per minute: the only probe history kept (no raw samples).
create table probe_minutes (
    domain_id      bigint not null
                   constraint probe_minutes_domain_id_fkey references service_domains (id) on delete cascade,
    cdn            text not null constraint probe_minutes_cdn_check check (cdn in ('primary', 'backup')),
    minute         timestamptz not null,
    attempts       integer not null,
    successes      integer not null,
    latency_sum_ms bigint not null,
    latency_max_ms integer not null,
    constraint probe_minutes_pkey primary key (domain_id, cdn, minute),
    constraint probe_minutes_counts_check check (successes between 0 and attempts)
);

create table cluster_nodes (
    node_id      text constraint cluster_nodes_pkey primary key,
    started_at   timestamptz not null default now(),
    heartbeat_at timestamptz not null default now(),
    -- Shards the node held at its last heartbeat (informational; the advisory locks are the truth).
    shards       smallint[] not null default '{}'
);

-- Fencing tokens: every acquisition of a shard's advisory lock bumps its epoch. Writes that
-- must not happen twice check, in their transaction, that the writer's epoch is still current,
-- so a stalled node that lost its lock cannot act on stale beliefs.
create table shard_leases (
    shard       smallint constraint shard_leases_pkey primary key
                constraint shard_leases_shard_check check (shard between 0 and 255),
    epoch       bigint not null,
    node_id     text not null,
    acquired_at timestamptz not null default now()
);

alter table storm_events add column opened_by_node text;
alter table storm_events add column closed_by_node text;
create index storm_events_open_idx on storm_events (service_id) where ended_at is null;

-- Config changes wake the engine (LISTEN tranche_config); periodic reconciliation repairs a
-- missed notification.
create function tranche_notify_config() returns trigger
language plpgsql as $$
begin
    perform pg_notify('tranche_config', tg_table_name);
    return null;
end;
$$;
create trigger service_domains_notify after insert or update or delete on service_domains
    for each statement execute function tranche_notify_config();
create trigger storm_policies_notify after insert or update or delete on storm_policies
    for each statement execute function tranche_notify_config();
create trigger services_notify after update on services
    for each statement execute function tranche_notify_config();
