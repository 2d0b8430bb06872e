-- Live SLO tracking (issue 16): the tracker actor of each SLO keeps one performance row per
-- SLO and business date current as job reports arrive and as its timers fire, and raises each
-- alert (`not_started`, `late`, `breached`) at most once per SLO and business date: the
-- marker's primary key decides, in the transaction that records its event.

create table slo_performance (
    slo_id          bigint not null
                    constraint slo_performance_slo_id_fkey references slos (id) on delete cascade,
    business_date   date not null,
    expected_start  timestamptz not null,
    expected_end    timestamptz not null,
    actual_start    timestamptz,
    -- The latest job end; null while any job is unfinished.
    actual_end      timestamptz,
    status          text not null constraint slo_performance_status_check
                    check (status in ('pending', 'in_progress', 'on_time', 'late', 'failed', 'missed')),
    late_by_seconds bigint constraint slo_performance_late_by_seconds_check check (late_by_seconds >= 0),
    -- Successful runs shorter than their job's minimum duration:
    -- [{"job", "run_id", "duration_seconds", "min_duration_seconds"}].
    too_fast        jsonb not null default '[]',
    -- When the row may change without a report (the tracker's timer), if ever.
    wake_at         timestamptz,
    evaluated_at    timestamptz not null,
    constraint slo_performance_pkey primary key (slo_id, business_date)
);
-- The live board: every SLO's row for a date.
create index slo_performance_business_date_idx on slo_performance (business_date);

create table slo_alerts (
    slo_id        bigint not null
                  constraint slo_alerts_slo_id_fkey references slos (id) on delete cascade,
    business_date date not null,
    kind          text not null constraint slo_alerts_kind_check
                  check (kind in ('not_started', 'late', 'breached')),
    -- The event that announced it (`slo.not_started`, `slo.late`, `slo.breached`), recorded in
    -- the same transaction.
    event_id      uuid,
    raised_at     timestamptz not null default now(),
    raised_by_node text,
    constraint slo_alerts_pkey primary key (slo_id, business_date, kind)
);

-- A job report wakes the trackers of the SLOs of its application (LISTEN tranche_job_status;
-- payload `customer_id:business_date:application`). A tracker that missed one catches up when
-- it (re)starts and at its next timer.
create function tranche_notify_job_status() returns trigger
language plpgsql as $$
begin
    perform pg_notify('tranche_job_status',
                      new.customer_id || ':' || new.business_date || ':' || new.application);
    return null;
end;
$$;
create trigger job_status_notify after insert on job_status
    for each row execute function tranche_notify_job_status();

-- SLO and calendar changes reload their trackers (LISTEN tranche_slos; payload `slo:<id>` or
-- `calendar:<id>`); periodic reconciliation repairs a missed notification.
create function tranche_notify_slos() returns trigger
language plpgsql as $$
declare
    r record;
begin
    if tg_op = 'DELETE' then r := old; else r := new; end if;
    if tg_table_name = 'slos' then
        perform pg_notify('tranche_slos', 'slo:' || r.id);
    elsif tg_table_name = 'slo_jobs' then
        perform pg_notify('tranche_slos', 'slo:' || r.slo_id);
    elsif tg_table_name = 'calendars' then
        perform pg_notify('tranche_slos', 'calendar:' || r.id);
    else
        perform pg_notify('tranche_slos', 'calendar:' || r.calendar_id);
    end if;
    return null;
end;
$$;
create trigger slos_notify after insert or update or delete on slos
    for each row execute function tranche_notify_slos();
create trigger slo_jobs_notify after insert or update or delete on slo_jobs
    for each row execute function tranche_notify_slos();
create trigger calendars_notify after update on calendars
    for each row execute function tranche_notify_slos();
create trigger calendar_holidays_notify after insert or update or delete on calendar_holidays
    for each row execute function tranche_notify_slos();
