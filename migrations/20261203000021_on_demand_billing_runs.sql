-- Billing runs asked for through `POST /v1/billing-runs` are recorded even when they find
-- nothing to bill, marked `on_demand`, with the API key that asked (null: dev mode).
alter table billing_runs
    add column on_demand boolean not null default false,
    add column requested_by_key bigint;
