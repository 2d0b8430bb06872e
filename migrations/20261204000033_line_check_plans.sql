-- The line → invoice check (migration 13) looked its invoices up through a plan PL/pgSQL caches
-- per connection. Planned while `invoices` was small (a fresh install, the start of a first
-- large run), that plan scans the table, and kept doing so as it grew, for every statement
-- that inserts lines. The billing run therefore forced custom plans for its whole transaction,
-- and paid planning for every statement of every customer's run. The lookup is now dynamic:
-- planned on each use (one index probe per invoice, planned for the table's current size), so
-- the run's own statements can keep the plans their connection prepared.
create or replace function tranche_line_items_check_invoice() returns trigger language plpgsql as $$
declare
    inv uuid;
    present boolean;
begin
    -- A statement's lines go on a handful of invoices: one index probe each.
    for inv in select distinct invoice_id from new_lines loop
        execute 'select exists (select 1 from invoices where id = $1)' into present using inv;
        if not present then
            raise foreign_key_violation using
                message = format('invoice_line_items.invoice_id %s names no invoice', inv),
                constraint = 'invoice_line_items_invoice_id_fkey';
        end if;
    end loop;
    return null;
end;
$$;
