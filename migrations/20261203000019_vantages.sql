-- Probing from several vantages (issue 13): each node declares a vantage (region); a domain
-- is probed from up to `vantages_per_domain` of them and its owner decides by the policy's
-- quorum of the vantages with a known window.

-- The vantage a node probes from (nodes that declare none share 'default').
alter table cluster_nodes add column vantage text not null default 'default';

-- How many of the vantages with a known window must agree that a CDN is down (or healthy).
alter table storm_policies
    add column quorum text not null default 'majority'
        constraint storm_policies_quorum_check check (quorum in ('majority', 'any', 'all'));

-- Every vantage's view at the domain's last decision or change of disagreement, and the
-- vantages that see a CDN down while the quorum does not (`vantage_disagrees` in /state).
alter table domain_states
    add column vantages jsonb not null default '[]',
    add column vantage_disagrees jsonb not null default '[]';
