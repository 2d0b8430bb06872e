-- A node is live while its lease connection is: record that connection's backend pid, so the
-- others see a crashed node as gone as soon as PostgreSQL drops its session (and its advisory
-- locks), instead of waiting for its heartbeat to expire.
alter table cluster_nodes add column backend_pid integer;
