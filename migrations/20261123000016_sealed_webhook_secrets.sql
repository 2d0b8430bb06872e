-- Webhook signing secrets may be stored sealed (`enc:v1:<key id>:<base64>`, AES-256-GCM under a
-- key from configuration), which is longer than the plain secret; the API still takes plain
-- secrets of 16 to 200 characters.
alter table webhook_endpoints drop constraint webhook_endpoints_secret_check;
alter table webhook_endpoints add constraint webhook_endpoints_secret_check
    check (length(secret) between 16 and 1000);
