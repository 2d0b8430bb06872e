-- Repeating SLO jobs (issue 16): a job that runs several times a business date — Foxfire's
-- transaction summary, every 30 minutes from 06:00 to 18:00, each due 10 minutes after it
-- starts. Its occurrences start at expected_start, expected_start + every, … up to `until`;
-- each keeps the window (expected_end - expected_start) and has its own alerts, so an
-- alert's marker names its occurrence (`job@HH:MM`; '' for the SLO's own).

alter table slo_jobs
    add column every_minutes integer
        constraint slo_jobs_every_minutes_check check (every_minutes between 1 and 1440),
    -- The last occurrence starts at or before this (minutes after the business date's midnight).
    add column until_minutes integer
        constraint slo_jobs_until_minutes_check check (until_minutes between 0 and 10080),
    add constraint slo_jobs_repeat_check check (
        (every_minutes is null) = (until_minutes is null)
        and (until_minutes is null or until_minutes >= expected_start_minutes));

alter table slo_alerts
    add column occurrence text not null default ''
        constraint slo_alerts_occurrence_check check (length(occurrence) <= 210),
    drop constraint slo_alerts_pkey,
    add constraint slo_alerts_pkey primary key (slo_id, business_date, kind, occurrence);
