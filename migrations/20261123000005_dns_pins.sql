-- Operator pins: fixed DNS weights for a domain (e.g. during a migration) that win over the
-- storm machine until released. Every pin and release is kept in dns_pin_events.
create table dns_pins (
    domain_id      bigint constraint dns_pins_pkey primary key
                   constraint dns_pins_domain_id_fkey references service_domains (id) on delete cascade,
    primary_weight smallint not null
                   constraint dns_pins_primary_weight_check check (primary_weight between 0 and 100),
    reason         text not null constraint dns_pins_reason_check check (length(reason) between 1 and 500),
    pinned_by      text not null,
    pinned_at      timestamptz not null default now()
);

create table dns_pin_events (
    id             uuid constraint dns_pin_events_pkey primary key default gen_random_uuid(),
    domain_id      bigint not null
                   constraint dns_pin_events_domain_id_fkey references service_domains (id) on delete cascade,
    action         text not null constraint dns_pin_events_action_check check (action in ('pin', 'release')),
    primary_weight smallint,
    reason         text,
    actor          text not null,
    at             timestamptz not null default now()
);
create index dns_pin_events_domain_id_idx on dns_pin_events (domain_id, at desc);

-- A pin or release wakes the engine like any configuration change.
create trigger dns_pins_notify after insert or update or delete on dns_pins
    for each statement execute function tranche_notify_config();
