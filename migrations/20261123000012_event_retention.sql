-- Events are kept for `event_retention` (30 days by default); the webhook dispatcher deletes
-- older ones, with their deliveries, unless a delivery is still pending.
create index events_occurred_at_idx on events (occurred_at);
-- For that delete's cascade and its "still pending?" check.
create index webhook_deliveries_event_id_idx on webhook_deliveries (event_id);
