-- Job reports in their notification (issue 16). A job report wakes the trackers of the SLOs
-- that depend on its job (LISTEN tranche_job_status), and carries itself, so a tracker need not
-- read it back: the payload is the report as JSON (`customer_id`, `business_date`,
-- `application`, `job`, `run_id`, `status`, `status_time`; at most about 700 bytes), replacing
-- migration 27's `customer_id:business_date:application`. A tracker that missed one catches up
-- when it (re)starts and at its next timer, when it reads its dates' reports again.
create or replace function tranche_notify_job_status() returns trigger
language plpgsql as $$
begin
    perform pg_notify('tranche_job_status', json_build_object(
        'customer_id', new.customer_id, 'business_date', new.business_date,
        'application', new.application, 'job', new.job, 'run_id', new.run_id,
        'status', new.status, 'status_time', new.status_time)::text);
    return null;
end;
$$;

-- A tracker reads its own jobs' reports: (customer, application, job, business date), the
-- unique key's leading columns. The index on (customer, application, business date, job) let
-- the planner — with a young table's statistics, estimating one row either way — scan a whole
-- application's day for each of its thousands of SLOs instead. Listings keep the unique key's
-- (customer, application) prefix.
drop index if exists job_status_business_date_idx;

-- (Migration 28 re-declares the usage-event identities `collate "C"`, which migration 24
-- already does as it landed: a no-op there, kept unchanged.)
