-- SLOs (issue 16): an application's promise that a set of its jobs is done by a time on each
-- business date of a calendar. Expected times are wall-clock minutes after the business date's
-- local midnight in the calendar's time zone, up to 7 days (27:00 is 03:00 the next day).

create table slos (
    id                  bigint generated always as identity constraint slos_pkey primary key,
    customer_id         bigint not null
                        constraint slos_customer_id_fkey references customers (id) on delete cascade,
    application_id      bigint not null
                        constraint slos_application_id_fkey references applications (id) on delete cascade,
    -- A calendar in use cannot be deleted (checked at the end of the statement, so deleting the
    -- customer still cascades).
    calendar_id         bigint not null constraint slos_calendar_id_fkey references calendars (id),
    name                text not null constraint slos_name_check check (name ~ '^[A-Za-z0-9._-]{1,100}$'),
    -- How long after the expected start nothing may have started before `not started`.
    start_grace_minutes integer not null default 30
                        constraint slos_start_grace_minutes_check check (start_grace_minutes between 0 and 10080),
    -- How late after the expected end the SLO may finish before it is breached.
    tolerance_minutes   integer not null default 0
                        constraint slos_tolerance_minutes_check check (tolerance_minutes between 0 and 10080),
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    constraint slos_customer_id_name_key unique (customer_id, name)
);
create index slos_calendar_id_idx on slos (calendar_id);
create index slos_application_id_idx on slos (application_id);
create trigger slos_set_updated_at before update on slos
    for each row execute function tranche_set_updated_at();

create table slo_jobs (
    slo_id                 bigint not null
                           constraint slo_jobs_slo_id_fkey references slos (id) on delete cascade,
    job                    text not null constraint slo_jobs_job_check check (length(job) between 1 and 200),
    expected_start_minutes integer not null
                           constraint slo_jobs_expected_start_minutes_check check (expected_start_minutes between 0 and 10080),
    expected_end_minutes   integer not null
                           constraint slo_jobs_expected_end_minutes_check check (expected_end_minutes between 0 and 10080),
    -- A successful run shorter than this is flagged as suspicious.
    min_duration_seconds   integer constraint slo_jobs_min_duration_seconds_check check (min_duration_seconds > 0),
    constraint slo_jobs_pkey primary key (slo_id, job),
    constraint slo_jobs_order_check check (expected_end_minutes >= expected_start_minutes)
);
