-- certificate.expiring: when a probe sees a CDN serve a certificate that expires within 14 days,
-- the customer is told once per certificate (the marker below), whichever node probes it.

create table certificate_alerts (
    domain_id   bigint not null
                constraint certificate_alerts_domain_id_fkey references service_domains (id) on delete cascade,
    cdn         text not null,
    expires_at  timestamptz not null,
    alerted_at  timestamptz not null default now(),
    constraint certificate_alerts_pkey primary key (domain_id, cdn, expires_at)
);

create function tranche_certificate_emit() returns trigger language plpgsql as $$
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
                    'days_left', greatest(0, floor(extract(epoch from expires - now()) / 86400))));
            end if;
        end if;
    end loop;
    return null;
end;
$$;
create trigger domain_observations_certificate_emit after insert or update on domain_observations
    for each row execute function tranche_certificate_emit();
