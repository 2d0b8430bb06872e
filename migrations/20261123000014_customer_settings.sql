-- Per-customer settings, created with the customer (in its provisioning transaction). For now:
-- the defaults a new storm policy takes for the fields its request leaves out.

create table customer_settings (
    customer_id                   bigint constraint customer_settings_pkey primary key
                                  constraint customer_settings_customer_id_fkey references customers (id) on delete cascade,
    policy_threshold_avail        numeric not null,
    policy_window_seconds         integer not null,
    policy_cooldown_seconds       integer not null,
    policy_max_coverage_factor    numeric not null,
    policy_probe_interval_seconds integer not null,
    policy_min_samples            integer not null,
    created_at                    timestamptz not null default now(),
    updated_at                    timestamptz not null default now()
);
create trigger customer_settings_set_updated_at before update on customer_settings
    for each row execute function tranche_set_updated_at();

-- Existing customers get the product defaults (DESIGN §2; `PolicyParams::defaults` in code).
insert into customer_settings
       (customer_id, policy_threshold_avail, policy_window_seconds, policy_cooldown_seconds,
        policy_max_coverage_factor, policy_probe_interval_seconds, policy_min_samples)
select id, 0.90, 60, 300, 1.5, 10, 3 from customers;
