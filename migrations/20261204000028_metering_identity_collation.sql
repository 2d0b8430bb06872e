-- Usage-event identities compare byte-wise ("C"): they are opaque strings, and the key's index
-- is the hottest in the metering batcher's transaction. (Migration 24, as it landed, created
-- them with the database's collation; the batcher's statements bind `collate "C"` values.)
alter table usage_events
    alter column source type text collate "C",
    alter column event_id type text collate "C";
