-- Billing throughput (issue 5's benchmark): per-row triggers on the two tables a billing run
-- writes in bulk become per-statement ones, with the same guarantees.

-- Line → invoice integrity, checked once per statement instead of once per line. The billing
-- run holds its invoices `for update` while it inserts their lines, so no invoice can vanish
-- between this check and the commit; deleting invoices deletes their lines (as the cascade
-- did).
alter table invoice_line_items drop constraint invoice_line_items_invoice_id_fkey;

create function tranche_line_items_check_invoice() returns trigger language plpgsql as $$
declare
    inv uuid;
begin
    -- A statement's lines go on a handful of invoices: one index probe each.
    for inv in select distinct invoice_id from new_lines loop
        perform 1 from invoices where id = inv;
        if not found then
            raise foreign_key_violation using
                message = format('invoice_line_items.invoice_id %s names no invoice', inv),
                constraint = 'invoice_line_items_invoice_id_fkey';
        end if;
    end loop;
    return null;
end;
$$;
create trigger invoice_line_items_check_invoice_insert after insert on invoice_line_items
    referencing new table as new_lines
    for each statement execute function tranche_line_items_check_invoice();
create trigger invoice_line_items_check_invoice_update after update on invoice_line_items
    referencing new table as new_lines
    for each statement execute function tranche_line_items_check_invoice();

create function tranche_invoices_delete_lines() returns trigger language plpgsql as $$
begin
    delete from invoice_line_items l using old_invoices o where l.invoice_id = o.id;
    return null;
end;
$$;
create trigger invoices_delete_lines after delete on invoices
    referencing old table as old_invoices
    for each statement execute function tranche_invoices_delete_lines();

-- invoice.created, one statement's invoices at a time (same events and deliveries as
-- tranche_emit, in period order).
drop trigger invoices_emit on invoices;
drop function tranche_invoices_emit();

create function tranche_invoices_emit() returns trigger language plpgsql as $$
begin
    with src as (
        select gen_random_uuid() as event_id, n.customer_id, n.period_start,
               jsonb_build_object('invoice_id', n.id, 'period_start', n.period_start,
                                  'period_end', n.period_end, 'status', n.status) as payload
          from new_invoices n
    ), ev as (
        insert into events (id, customer_id, type, payload)
        select event_id, customer_id, 'invoice.created', payload from src
    )
    insert into webhook_deliveries (endpoint_id, event_id, customer_id)
    select e.id, src.event_id, src.customer_id
      from src join webhook_endpoints e on e.customer_id = src.customer_id
     where e.enabled and (cardinality(e.event_types) = 0 or 'invoice.created' = any(e.event_types))
     order by src.customer_id, src.period_start, e.id;
    return null;
end;
$$;
create trigger invoices_emit after insert on invoices
    referencing new table as new_invoices
    for each statement execute function tranche_invoices_emit();
