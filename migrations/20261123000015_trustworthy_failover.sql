-- Failover you can trust (issue 10): flap damping in policies, an `unknown` domain state with
-- its reason and event, leases that end with their deadline, orphaned DNS changes settled,
-- storm triggers with one number type, and dev-mode verification that is never re-checked.

-- Flap damping: failed (successful) probes of the primary in a row before a storm opens (the
-- ramp back starts), on top of the window and the cooldown.
alter table storm_policies
    add column consecutive_failures integer not null default 3
        constraint storm_policies_consecutive_failures_check check (consecutive_failures between 1 and 100),
    add column consecutive_successes integer not null default 3
        constraint storm_policies_consecutive_successes_check check (consecutive_successes between 1 and 100);
alter table customer_settings
    add column policy_consecutive_failures integer not null default 3,
    add column policy_consecutive_successes integer not null default 3;

-- A domain whose primary cannot be judged (no target, every probe blocked) is `unknown`, with
-- the reason, instead of looking healthy.
alter table domain_states drop constraint domain_states_state_check;
alter table domain_states add constraint domain_states_state_check
    check (state in ('healthy', 'storm', 'recovering', 'backup_unhealthy', 'unknown'));
alter table domain_states add column state_reason text;

create or replace function tranche_domain_states_emit() returns trigger language plpgsql as $$
declare
    c bigint;
    sid bigint;
    host text;
begin
    if new.state in ('backup_unhealthy', 'unknown') and (tg_op = 'INSERT' or old.state <> new.state) then
        select s.customer_id, s.id, d.hostname into c, sid, host
          from service_domains d join services s on s.id = d.service_id where d.id = new.domain_id;
        if new.state = 'backup_unhealthy' then
            perform tranche_emit(c, 'storm.backup_unhealthy', jsonb_build_object(
                'service_id', sid, 'domain_id', new.domain_id, 'domain', host,
                'since', new.state_since,
                'primary_availability', new.trigger_primary_avail::text,
                'backup_availability', new.trigger_backup_avail::text));
        else
            perform tranche_emit(c, 'domain.health_unknown', jsonb_build_object(
                'service_id', sid, 'domain_id', new.domain_id, 'domain', host,
                'since', new.state_since, 'reason', coalesce(new.state_reason, 'unknown')));
        end if;
    end if;
    return null;
end;
$$;

-- A change whose node stopped before the provider answered is settled by the zone's next owner.
alter table dns_changes drop constraint dns_changes_status_check;
alter table dns_changes add constraint dns_changes_status_check
    check (status in ('submitted', 'insync', 'failed', 'superseded'));
create index dns_changes_zone_submitted_idx on dns_changes (zone) where status = 'submitted';

-- Availabilities in storm triggers are decimal strings everywhere (closings were numbers).
update storm_events
   set trigger = jsonb_set(trigger, '{closing_primary_availability}',
                           to_jsonb(trigger ->> 'closing_primary_availability'))
 where jsonb_typeof(trigger -> 'closing_primary_availability') = 'number';

-- Deposition: when survivors last ended a node's lease session for a missed deadline, and who.
alter table cluster_nodes add column deposed_at timestamptz, add column deposed_by text;

-- How a domain was verified: `dns` (its TXT challenge) or `dev` (dev mode, at creation). Dev
-- verifications have no challenge record, so they are never re-checked (nor flagged as lost).
alter table service_domains add column verification_method text
    constraint service_domains_verification_method_check check (verification_method in ('dns', 'dev'));
update service_domains
   set verification_method = case
           when verified_at is not null and verified_at < created_at + interval '1 second' then 'dev'
           else 'dns' end
 where verification_status = 'verified';
update service_domains set verification_lost_at = null
 where verification_method = 'dev';
