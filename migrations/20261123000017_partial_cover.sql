-- Issue 12: a storm policy may cover a storm's time only in part (0 < max_coverage_factor ≤ 10;
-- DESIGN.md §5's formula covers it). The old check (≥ 1) is replaced; rows written before keep
-- their factor (not re-validated: nothing above 100 could be written, and billing prices any
-- positive factor), new writes are checked.
alter table storm_policies drop constraint storm_policies_max_coverage_factor_check;
alter table storm_policies add constraint storm_policies_max_coverage_factor_check
    check (max_coverage_factor > 0 and max_coverage_factor <= 10) not valid;
alter table customer_settings add constraint customer_settings_policy_max_coverage_factor_check
    check (policy_max_coverage_factor > 0 and policy_max_coverage_factor <= 10) not valid;
