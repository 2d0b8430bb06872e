-- Failover drills and maintenance windows (issue 14).

-- A drill: an operator moves a domain's traffic to its backup until `ends_at`; the engine ramps
-- it back as after a storm, but no storm is opened (drills are never billed as storm time).
-- `began_at`/`finished_at` are set by the engine when traffic actually moved and when the
-- domain left the drill; `outcome` says how it ended.
create table drills (
    id            uuid constraint drills_pkey primary key default gen_random_uuid(),
    customer_id   bigint not null,
    service_id    bigint not null
                  constraint drills_service_id_fkey references services (id) on delete cascade,
    domain_id     bigint not null
                  constraint drills_domain_id_fkey references service_domains (id) on delete cascade,
    reason        text not null,
    requested_by  text not null,
    requested_at  timestamptz not null default now(),
    ends_at       timestamptz not null,
    cancelled_at  timestamptz,
    cancelled_by  text,
    began_at      timestamptz,
    finished_at   timestamptz,
    outcome       text constraint drills_outcome_check
                  check (outcome in ('completed', 'cancelled', 'storm', 'backup_unhealthy', 'expired')),
    constraint drills_ends_after_request_check check (ends_at > requested_at)
);
create index drills_domain_idx on drills (domain_id, requested_at desc);
create index drills_open_idx on drills (domain_id) where finished_at is null;

-- A maintenance window over a whole service (`domain_id` null) or one of its domains: probes
-- run and are shown, but no storm opens and nothing is alerted on.
create table maintenance_windows (
    id            uuid constraint maintenance_windows_pkey primary key default gen_random_uuid(),
    customer_id   bigint not null,
    service_id    bigint not null
                  constraint maintenance_windows_service_id_fkey references services (id) on delete cascade,
    domain_id     bigint
                  constraint maintenance_windows_domain_id_fkey references service_domains (id) on delete cascade,
    starts_at     timestamptz not null,
    ends_at       timestamptz not null,
    reason        text not null,
    created_by    text not null,
    created_at    timestamptz not null default now(),
    cancelled_at  timestamptz,
    cancelled_by  text,
    constraint maintenance_windows_order_check check (ends_at > starts_at)
);
create index maintenance_windows_service_idx on maintenance_windows (service_id, ends_at desc);

alter table domain_states drop constraint domain_states_state_check;
alter table domain_states add constraint domain_states_state_check
    check (state in ('healthy', 'storm', 'recovering', 'backup_unhealthy', 'unknown', 'drill'));

-- Both wake the engine like any configuration change.
create trigger drills_notify after insert or update or delete on drills
    for each statement execute function tranche_notify_config();
create trigger maintenance_windows_notify after insert or update or delete on maintenance_windows
    for each statement execute function tranche_notify_config();
