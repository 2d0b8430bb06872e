-- Every vantage's view of a domain, live: the deciding node writes it with its batched
-- observations (null with a single vantage), so `/state` shows it without a write per probe.
alter table domain_observations add column vantages jsonb;
