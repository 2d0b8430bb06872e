-- The event payloads follow the typed contract documented in the OpenAPI document
-- (src/api/events.rs): ratios are decimal strings (as in storm triggers), whole days are
-- integers, and dns.change_failed is sent for failures that need a human — records rejected
-- for good, or a transient failure that has lasted 5 attempts — not for every throttled
-- attempt that the zone actor retries anyway.

-- Whether the zone actor will retry a failed attempt (throttling, 5xx, a batch being bisected).
alter table dns_changes add column will_retry boolean not null default false;

create or replace function tranche_dns_changes_emit() returns trigger language plpgsql as $$
declare
    c bigint;
begin
    if new.status is distinct from old.status
       and (new.status = 'insync'
            or (new.status = 'failed' and (not new.will_retry or new.attempt = 5))) then
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
                    'error', new.error,
                    'attempt', new.attempt,
                    'will_retry', new.status = 'failed' and new.will_retry));
        end loop;
    end if;
    return null;
end;
$$;

create or replace function tranche_domain_states_emit() returns trigger language plpgsql as $$
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
            'primary_availability', new.trigger_primary_avail::text,
            'backup_availability', new.trigger_backup_avail::text));
    end if;
    return null;
end;
$$;

create or replace function tranche_certificate_emit() returns trigger language plpgsql as $$
declare
    cdn text;
    last jsonb;
    expires timestamptz;
    c bigint;
    sid bigint;
    host text;
begin
    foreach cdn in array array['primary', 'backup'] loop
        last := case cdn when 'primary' then new.primary_last else new.backup_last end;
        expires := (last ->> 'cert_expires_at')::timestamptz;
        if expires is not null and expires < now() + interval '14 days' then
            insert into certificate_alerts (domain_id, cdn, expires_at)
            values (new.domain_id, cdn, expires)
            on conflict do nothing;
            if found then
                select s.customer_id, s.id, d.hostname into c, sid, host
                  from service_domains d join services s on s.id = d.service_id
                 where d.id = new.domain_id;
                perform tranche_emit(c, 'certificate.expiring', jsonb_build_object(
                    'service_id', sid, 'domain_id', new.domain_id, 'domain', host, 'cdn', cdn,
                    'expires_at', expires,
                    'days_left', greatest(0, floor(extract(epoch from expires - now()) / 86400))::bigint));
            end if;
        end if;
    end loop;
    return null;
end;
$$;
