-- SLO tracking (issue 16), first tables: business calendars with their holidays, and the
-- applications that own jobs and SLOs. (SLOs, their jobs and performance rows come in a later
-- migration.)

create table calendars (
    id           bigint generated always as identity constraint calendars_pkey primary key,
    customer_id  bigint not null
                 constraint calendars_customer_id_fkey references customers (id) on delete cascade,
    name         text not null constraint calendars_name_check check (name ~ '^[A-Za-z0-9._-]{1,100}$'),
    -- standard: Mon–Fri minus holidays; every_day; weekends_included: every day minus
    -- holidays; holidays_included: Mon–Fri, holidays included.
    kind         text not null constraint calendars_kind_check
                 check (kind in ('standard', 'every_day', 'weekends_included', 'holidays_included')),
    -- IANA name; business dates and expected times are local to it.
    time_zone    text not null constraint calendars_time_zone_check check (length(time_zone) between 1 and 64),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    constraint calendars_customer_id_name_key unique (customer_id, name)
);
create trigger calendars_set_updated_at before update on calendars
    for each row execute function tranche_set_updated_at();

create table calendar_holidays (
    calendar_id  bigint not null
                 constraint calendar_holidays_calendar_id_fkey references calendars (id) on delete cascade,
    holiday      date not null,
    name         text constraint calendar_holidays_name_check check (length(name) between 1 and 200),
    constraint calendar_holidays_pkey primary key (calendar_id, holiday)
);

-- An application owns jobs and SLOs; its name is what schedulers report in `job_status` and
-- what `job-status` keys are limited to.
create table applications (
    id           bigint generated always as identity constraint applications_pkey primary key,
    customer_id  bigint not null
                 constraint applications_customer_id_fkey references customers (id) on delete cascade,
    name         text not null constraint applications_name_check check (name ~ '^[A-Za-z0-9._-]{1,100}$'),
    description  text constraint applications_description_check check (length(description) <= 1000),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    constraint applications_customer_id_name_key unique (customer_id, name)
);
create trigger applications_set_updated_at before update on applications
    for each row execute function tranche_set_updated_at();
