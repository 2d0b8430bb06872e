-- DNS steering: which domains are steered, what the provider last confirmed, and the audit log
-- of every attempt.

-- Only verified domains are steered; until verification exists this flag decides (the API sets
-- it in dev mode).
alter table service_domains add column steering_enabled boolean not null default false;

-- Per steered domain: the weights the provider last confirmed (desired weights live in
-- domain_states). The zone actor converges desired → applied.
create table dns_records (
    domain_id              bigint constraint dns_records_pkey primary key
                           constraint dns_records_domain_id_fkey references service_domains (id) on delete cascade,
    zone                   text not null,
    provider               text not null,
    -- Null until the provider first confirmed a change for the domain.
    applied_primary_weight smallint,
    applied_backup_weight  smallint,
    applied_at             timestamptz,
    last_change_id         uuid,
    -- A permanent failure for this domain (cleared by the next successful change).
    last_error             text,
    failed_at              timestamptz,
    updated_at             timestamptz not null default now(),
    constraint dns_records_weights_check check (applied_primary_weight + applied_backup_weight = 100)
);
create trigger dns_records_set_updated_at before update on dns_records
    for each row execute function tranche_set_updated_at();

-- Every attempt to change a zone: written before the provider is called (status submitted),
-- then updated with the provider's answer.
create table dns_changes (
    id                 uuid constraint dns_changes_pkey primary key default gen_random_uuid(),
    zone               text not null,
    provider           text not null,
    domain_ids         bigint[] not null,
    -- [{domain_id, name, from: {primary, backup} | null, to: {primary, backup}, reason}]
    changes            jsonb not null,
    status             text not null
                       constraint dns_changes_status_check check (status in ('submitted', 'insync', 'failed')),
    attempt            integer not null default 1,
    provider_change_id text,
    error              text,
    node_id            text not null,
    submitted_at       timestamptz not null default now(),
    insync_at          timestamptz,
    failed_at          timestamptz
);
create index dns_changes_submitted_at_idx on dns_changes (submitted_at desc);
create index dns_changes_domain_ids_idx on dns_changes using gin (domain_ids);
