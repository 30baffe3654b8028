-- At most one deployment of a name on a host is queued or running at a time.
-- The request's checks (no VM, no deployment of that name) and the job's
-- insert are not one transaction, so two requests arriving together could
-- both pass them; the second insert now fails on this index instead. A
-- partial unique index, the same in PostgreSQL.
CREATE UNIQUE INDEX jobs_one_deployment_per_target ON jobs(target)
    WHERE kind = 'vm.deploy' AND status IN ('queued', 'running');
