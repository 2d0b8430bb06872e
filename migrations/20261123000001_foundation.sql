-- Foundation schema: tenants, keys, services, domains, storm policies, storm events.
--
-- Conventions (keep them in later migrations):
--   * configuration rows have bigint identity ids (the public API addresses them as /v1/services/1);
--     event-like rows (storm events, invoices, runs) use uuids;
--   * every constraint is named, so the API maps a violation to a precise 409/422 by name;
--   * created_at / updated_at are maintained by the database (the trigger below), never by callers;
--   * never edit an applied migration: add a new one.

create function tranche_set_updated_at() returns trigger
language plpgsql as $$
begin
    if new is distinct from old then
        new.updated_at := now();
    end if;
    return new;
end;
$$;

create table customers (
    id          bigint generated always as identity constraint customers_pkey primary key,
    name        text not null constraint customers_name_check check (length(btrim(name)) between 1 and 200),
    status      text not null default 'active'
                constraint customers_status_check check (status in ('active', 'suspended')),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
create trigger customers_set_updated_at before update on customers
    for each row execute function tranche_set_updated_at();

create table api_keys (
    id           bigint generated always as identity constraint api_keys_pkey primary key,
    customer_id  bigint not null
                 constraint api_keys_customer_id_fkey references customers (id) on delete cascade,
    name         text not null constraint api_keys_name_check check (length(name) between 1 and 200),
    -- The visible, non-secret part of the key ("tr_0123456789ab"); also the lookup key.
    prefix       text not null constraint api_keys_prefix_key unique,
    -- SHA-256 of the whole key. Keys carry 256 random bits, so a fast hash is the right one.
    secret_hash  bytea not null constraint api_keys_secret_hash_check check (length(secret_hash) = 32),
    scopes       text[] not null default '{read,write,admin}'
                 constraint api_keys_scopes_check check (cardinality(scopes) > 0),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
create index api_keys_customer_id_idx on api_keys (customer_id);
create trigger api_keys_set_updated_at before update on api_keys
    for each row execute function tranche_set_updated_at();

create table services (
    id           bigint generated always as identity constraint services_pkey primary key,
    customer_id  bigint not null
                 constraint services_customer_id_fkey references customers (id) on delete cascade,
    name         text not null constraint services_name_check check (length(btrim(name)) between 1 and 200),
    primary_cdn  text not null constraint services_primary_cdn_check check (length(primary_cdn) between 1 and 64),
    backup_cdn   text not null constraint services_backup_cdn_check check (length(backup_cdn) between 1 and 64),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    deleted_at   timestamptz,
    constraint services_distinct_cdns_check check (primary_cdn <> backup_cdn)
);
-- A customer's live services have distinct names; deleted ones free their name.
create unique index services_customer_id_name_key on services (customer_id, lower(name))
    where deleted_at is null;
create trigger services_set_updated_at before update on services
    for each row execute function tranche_set_updated_at();

create table service_domains (
    id                  bigint generated always as identity constraint service_domains_pkey primary key,
    service_id          bigint not null
                        constraint service_domains_service_id_fkey references services (id) on delete cascade,
    -- Canonical lowercase hostname without trailing dot (validated by the API's Hostname type).
    hostname            text not null
                        constraint service_domains_hostname_check check (hostname = lower(hostname) and length(hostname) between 1 and 253),
    -- Where the domain is reached through each CDN (edge hostname or IP literal); null until configured.
    primary_target      text,
    backup_target       text,
    probe_path          text not null default '/'
                        constraint service_domains_probe_path_check check (left(probe_path, 1) = '/'),
    -- Ownership verification (TXT challenge): the engine steers only verified domains.
    verification_status text not null default 'pending'
                        constraint service_domains_verification_status_check
                        check (verification_status in ('pending', 'verified', 'failed')),
    verification_token  text not null,
    verified_at         timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    -- Soft delete: storm history and billing keep referring to removed domains.
    deleted_at          timestamptz
);
create unique index service_domains_service_id_hostname_key on service_domains (service_id, hostname)
    where deleted_at is null;
create trigger service_domains_set_updated_at before update on service_domains
    for each row execute function tranche_set_updated_at();

create table storm_policies (
    id                     bigint generated always as identity constraint storm_policies_pkey primary key,
    service_id             bigint not null
                           constraint storm_policies_service_id_fkey references services (id) on delete cascade,
    kind                   text not null default 'http_availability'
                           constraint storm_policies_kind_check check (kind in ('http_availability')),
    threshold_avail        numeric not null default 0.90
                           constraint storm_policies_threshold_avail_check check (threshold_avail > 0 and threshold_avail <= 1),
    window_seconds         integer not null default 60
                           constraint storm_policies_window_seconds_check check (window_seconds > 0),
    cooldown_seconds       integer not null default 300
                           constraint storm_policies_cooldown_seconds_check check (cooldown_seconds >= 0),
    max_coverage_factor    numeric not null default 1.5
                           constraint storm_policies_max_coverage_factor_check check (max_coverage_factor >= 1),
    probe_interval_seconds integer not null default 10
                           constraint storm_policies_probe_interval_seconds_check check (probe_interval_seconds >= 1),
    min_samples            integer not null default 3
                           constraint storm_policies_min_samples_check check (min_samples >= 1),
    created_at             timestamptz not null default now(),
    updated_at             timestamptz not null default now(),
    -- One policy per kind and service: two thresholds for the same measurement would disagree.
    constraint storm_policies_service_id_kind_key unique (service_id, kind)
);
create trigger storm_policies_set_updated_at before update on storm_policies
    for each row execute function tranche_set_updated_at();

create table storm_events (
    id          uuid constraint storm_events_pkey primary key default gen_random_uuid(),
    service_id  bigint not null
                constraint storm_events_service_id_fkey references services (id) on delete cascade,
    domain_id   bigint
                constraint storm_events_domain_id_fkey references service_domains (id) on delete cascade,
    kind        text not null,
    started_at  timestamptz not null,
    ended_at    timestamptz,
    -- What triggered the transition (availability of primary and backup, window, policy values).
    trigger     jsonb not null default '{}'::jsonb,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    constraint storm_events_interval_check check (ended_at is null or ended_at >= started_at)
);
-- Never two open storms of one kind for one domain, whatever any node believes.
create unique index storm_events_one_open_key on storm_events (domain_id, kind) where ended_at is null;
create index storm_events_service_id_started_at_idx on storm_events (service_id, started_at);
create trigger storm_events_set_updated_at before update on storm_events
    for each row execute function tranche_set_updated_at();
