-- Read-only links to the live status page (`/status/{token}`): per service, or for every service
-- of the customer (`service_id` null). Only the token's SHA-256 is stored. Signing in on
-- `/status` with an API key creates a customer-wide link that expires (`session`).
create table status_links (
    id           uuid constraint status_links_pkey primary key default gen_random_uuid(),
    customer_id  bigint not null
                 constraint status_links_customer_id_fkey references customers (id) on delete cascade,
    service_id   bigint
                 constraint status_links_service_id_fkey references services (id) on delete cascade,
    token_hash   bytea not null constraint status_links_token_hash_key unique,
    label        text not null,
    session      boolean not null default false,
    created_by   text not null,
    created_at   timestamptz not null default now(),
    expires_at   timestamptz,
    revoked_at   timestamptz
);
create index status_links_customer_idx on status_links (customer_id, created_at desc);
