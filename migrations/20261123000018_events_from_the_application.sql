-- Issue 12: events are written by the application in the transaction of their fact (the core's
-- event rules decide which facts are events; postgres/outbox.rs writes them), no longer by
-- triggers on the fact tables. The rules that lived here (which state changes, which DNS
-- failures — the `attempt = 5` coupled to the zone actor — and the certificate horizon) are
-- in core/src/events.rs with their tests.
drop trigger storm_events_emit on storm_events;
drop function tranche_storm_events_emit();
drop trigger domain_states_emit on domain_states;
drop function tranche_domain_states_emit();
drop trigger service_domains_verification_emit on service_domains;
drop function tranche_verification_emit();
drop trigger dns_changes_emit on dns_changes;
drop function tranche_dns_changes_emit();
drop trigger invoices_emit on invoices;
drop function tranche_invoices_emit();
drop trigger domain_observations_certificate_emit on domain_observations;
drop function tranche_certificate_emit();
drop function tranche_emit(bigint, text, jsonb, bigint);
