-- API-key authentication is answered from a per-node cache (issue 17), kept exact by
-- notification: every change that can turn an accepted key into a refused one — its revocation
-- or deletion, its scopes, applications or secret, its customer's suspension or deletion — is
-- announced on `tranche_auth` (payload `key:<prefix>` or `customer:<id>`) in the transaction
-- that makes it, and each node drops what it cached for that key or customer as the
-- notification arrives. A node whose listener is not connected does not use its cache.
-- Recording a key's use (`last_used_at`, at most once a minute) announces nothing.
create function tranche_notify_api_key() returns trigger
language plpgsql as $$
begin
    perform pg_notify('tranche_auth', 'key:' || old.prefix);
    return null;
end;
$$;

create trigger api_keys_notify_auth
    after update of revoked_at, scopes, applications, secret_hash, customer_id, prefix
    on api_keys for each row
    when (old.revoked_at is distinct from new.revoked_at
          or old.scopes is distinct from new.scopes
          or old.applications is distinct from new.applications
          or old.secret_hash is distinct from new.secret_hash
          or old.customer_id is distinct from new.customer_id
          or old.prefix is distinct from new.prefix)
    execute function tranche_notify_api_key();

create trigger api_keys_notify_auth_delete
    after delete on api_keys for each row
    execute function tranche_notify_api_key();

create function tranche_notify_customer_auth() returns trigger
language plpgsql as $$
begin
    perform pg_notify('tranche_auth', 'customer:' || old.id);
    return null;
end;
$$;

create trigger customers_notify_auth
    after update of status on customers for each row
    when (old.status is distinct from new.status)
    execute function tranche_notify_customer_auth();

create trigger customers_notify_auth_delete
    after delete on customers for each row
    execute function tranche_notify_customer_auth();
