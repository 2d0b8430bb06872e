-- Job status (DESIGN §9, phase 1 of the Foxfire plan): schedulers report `start` / `succeed` /
-- `fail` for a run of a job of an application. The SLO tracking that reads these rows comes
-- later; this migration stores them and the keys allowed to write them.

-- A `job-status` key reports for named applications only; `applications` is empty for every
-- other key.
alter table api_keys
    add column applications text[] not null default '{}',
    add constraint api_keys_applications_check
        check (('job-status' = any (scopes)) = (cardinality(applications) > 0));

create table job_status (
    id            bigint generated always as identity constraint job_status_pkey primary key,
    customer_id   bigint not null
                  constraint job_status_customer_id_fkey references customers (id) on delete cascade,
    application   text not null constraint job_status_application_check
                  check (application ~ '^[A-Za-z0-9._-]{1,100}$'),
    job           text not null constraint job_status_job_check check (length(job) between 1 and 200),
    business_date date not null,
    run_id        text not null constraint job_status_run_id_check check (length(run_id) between 1 and 200),
    status        text not null constraint job_status_status_check
                  check (status in ('start', 'succeed', 'fail')),
    status_time   timestamptz not null,
    host          text not null constraint job_status_host_check check (length(host) between 1 and 255),
    -- The key that reported it (null for dev-mode requests or once the key is deleted).
    api_key_id    bigint constraint job_status_api_key_id_fkey references api_keys (id) on delete set null,
    received_at   timestamptz not null default now(),
    -- A report is idempotent: the same status for the same run is stored once.
    constraint job_status_run_status_key unique (customer_id, application, job, business_date, run_id, status)
);
-- A run ends once: `succeed` and `fail` exclude each other.
create unique index job_status_one_outcome_idx
    on job_status (customer_id, application, job, business_date, run_id)
    where status <> 'start';
create index job_status_business_date_idx
    on job_status (customer_id, application, business_date, job);
