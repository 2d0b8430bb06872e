-- Notifications: webhook endpoints per customer, the events that happen to a customer, and a
-- durable outbox of deliveries (one row per event and subscribed endpoint).
--
-- Events are emitted by triggers on the tables holding the facts they report (storms, domain
-- states, verification, DNS changes, invoices), so an event and its deliveries are written in
-- the same transaction as the fact: never one without the other, whatever crashes.

create table webhook_endpoints (
    id           bigint generated always as identity constraint webhook_endpoints_pkey primary key,
    customer_id  bigint not null
                 constraint webhook_endpoints_customer_id_fkey references customers (id) on delete cascade,
    url          text not null constraint webhook_endpoints_url_check check (length(url) between 8 and 2000),
    -- Shared secret for the HMAC-SHA256 signature (kept: signing needs it).
    secret       text not null constraint webhook_endpoints_secret_check check (length(secret) between 16 and 200),
    -- Subscribed event types; empty: all.
    event_types  text[] not null default '{}',
    format       text not null default 'json' constraint webhook_endpoints_format_check check (format in ('json', 'slack')),
    enabled      boolean not null default true,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);
create index webhook_endpoints_customer_id_idx on webhook_endpoints (customer_id);
create trigger webhook_endpoints_set_updated_at before update on webhook_endpoints
    for each row execute function tranche_set_updated_at();

create table events (
    id           uuid constraint events_pkey primary key default gen_random_uuid(),
    customer_id  bigint not null
                 constraint events_customer_id_fkey references customers (id) on delete cascade,
    type         text not null,
    occurred_at  timestamptz not null default now(),
    payload      jsonb not null
);
create index events_customer_id_occurred_at_idx on events (customer_id, occurred_at desc);

create table webhook_deliveries (
    id               uuid constraint webhook_deliveries_pkey primary key default gen_random_uuid(),
    -- Delivery order per endpoint.
    seq              bigint generated always as identity,
    endpoint_id      bigint not null
                     constraint webhook_deliveries_endpoint_id_fkey references webhook_endpoints (id) on delete cascade,
    event_id         uuid not null
                     constraint webhook_deliveries_event_id_fkey references events (id) on delete cascade,
    customer_id      bigint not null,
    status           text not null default 'pending'
                     constraint webhook_deliveries_status_check check (status in ('pending', 'delivered', 'failed')),
    attempts         integer not null default 0,
    next_attempt_at  timestamptz not null default now(),
    last_attempt_at  timestamptz,
    last_status_code integer,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz not null default now()
);
create index webhook_deliveries_pending_idx on webhook_deliveries (customer_id, endpoint_id, seq) where status = 'pending';
create index webhook_deliveries_endpoint_id_seq_idx on webhook_deliveries (endpoint_id, seq desc);

-- Records an event for a customer and queues it for every enabled endpoint subscribed to its
-- type (or only for `p_endpoint`, e.g. a test ping). Call it inside the transaction of the fact.
create function tranche_emit(p_customer bigint, p_type text, p_payload jsonb, p_endpoint bigint default null)
returns uuid language plpgsql as $$
declare
    ev uuid;
begin
    insert into events (customer_id, type, payload) values (p_customer, p_type, p_payload)
    returning id into ev;
    insert into webhook_deliveries (endpoint_id, event_id, customer_id)
    select e.id, ev, p_customer
      from webhook_endpoints e
     where e.customer_id = p_customer
       and (case when p_endpoint is null
                 then e.enabled and (cardinality(e.event_types) = 0 or p_type = any(e.event_types))
                 else e.id = p_endpoint end)
     order by e.id;
    return ev;
end;
$$;

create function tranche_storm_events_emit() returns trigger language plpgsql as $$
declare
    c bigint;
    host text;
begin
    select s.customer_id into c from services s where s.id = new.service_id;
    select d.hostname into host from service_domains d where d.id = new.domain_id;
    if tg_op = 'INSERT' then
        perform tranche_emit(c, 'storm.started', jsonb_build_object(
            'storm_id', new.id, 'service_id', new.service_id, 'domain_id', new.domain_id,
            'domain', host, 'kind', new.kind, 'started_at', new.started_at, 'trigger', new.trigger));
    elsif old.ended_at is null and new.ended_at is not null then
        perform tranche_emit(c, 'storm.ended', jsonb_build_object(
            'storm_id', new.id, 'service_id', new.service_id, 'domain_id', new.domain_id,
            'domain', host, 'kind', new.kind, 'started_at', new.started_at,
            'ended_at', new.ended_at));
    end if;
    return null;
end;
$$;
create trigger storm_events_emit after insert or update of ended_at on storm_events
    for each row execute function tranche_storm_events_emit();

create function tranche_domain_states_emit() returns trigger language plpgsql as $$
declare
    c bigint;
    sid bigint;
    host text;
begin
    if new.state = 'backup_unhealthy' and (tg_op = 'INSERT' or old.state <> new.state) then
        select s.customer_id, s.id, d.hostname into c, sid, host
          from service_domains d join services s on s.id = d.service_id where d.id = new.domain_id;
        perform tranche_emit(c, 'storm.backup_unhealthy', jsonb_build_object(
            'service_id', sid, 'domain_id', new.domain_id, 'domain', host,
            'since', new.state_since,
            'primary_availability', new.trigger_primary_avail,
            'backup_availability', new.trigger_backup_avail));
    end if;
    return null;
end;
$$;
create trigger domain_states_emit after insert or update of state on domain_states
    for each row execute function tranche_domain_states_emit();

create function tranche_verification_emit() returns trigger language plpgsql as $$
declare
    c bigint;
begin
    if new.verification_status is distinct from old.verification_status
       and new.verification_status in ('verified', 'failed') then
        select s.customer_id into c from services s where s.id = new.service_id;
        perform tranche_emit(c,
            case new.verification_status when 'verified' then 'domain.verified'
                 else 'domain.verification_failed' end,
            jsonb_build_object('service_id', new.service_id, 'domain_id', new.id,
                               'domain', new.hostname, 'error', new.verification_error));
    end if;
    return null;
end;
$$;
create trigger service_domains_verification_emit after update of verification_status on service_domains
    for each row execute function tranche_verification_emit();

create function tranche_dns_changes_emit() returns trigger language plpgsql as $$
declare
    c bigint;
begin
    if new.status is distinct from old.status and new.status in ('insync', 'failed') then
        for c in select distinct s.customer_id
                   from service_domains d join services s on s.id = d.service_id
                  where d.id = any(new.domain_ids)
        loop
            perform tranche_emit(c,
                case new.status when 'insync' then 'dns.change_applied' else 'dns.change_failed' end,
                jsonb_build_object('change_id', new.id, 'zone', new.zone, 'provider', new.provider,
                    'changes', (select coalesce(jsonb_agg(x), '[]'::jsonb)
                                  from jsonb_array_elements(new.changes) x
                                 where (x->>'domain_id')::bigint in (
                                       select d.id from service_domains d join services s on s.id = d.service_id
                                        where s.customer_id = c)),
                    'error', new.error));
        end loop;
    end if;
    return null;
end;
$$;
create trigger dns_changes_emit after update of status on dns_changes
    for each row execute function tranche_dns_changes_emit();

create function tranche_invoices_emit() returns trigger language plpgsql as $$
begin
    perform tranche_emit(new.customer_id, 'invoice.created', jsonb_build_object(
        'invoice_id', new.id, 'period_start', new.period_start, 'period_end', new.period_end,
        'status', new.status));
    return null;
end;
$$;
create trigger invoices_emit after insert on invoices
    for each row execute function tranche_invoices_emit();
