-- Automatic and manual rollback: a rollback is a deployment of its own, linked to the
-- one it undoes, whose hosts each return to their own earlier version.

-- `rolling_back`: the deployment failed and its rollback is queued or running (it no
-- longer holds its target: the rollback does). `rolled_back`: the rollback succeeded.
ALTER TABLE deployments DROP CONSTRAINT deployments_state_check;
ALTER TABLE deployments ADD CONSTRAINT deployments_state_check
    CHECK (state IN ('queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled', 'planned',
                     'rolling_back', 'rolled_back'));

-- The deployment this one rolls back; `rolled_back_by` is read back through it.
ALTER TABLE deployments ADD COLUMN rollback_of uuid REFERENCES deployments (id);
CREATE INDEX deployments_rollback_of ON deployments (rollback_of) WHERE rollback_of IS NOT NULL;

-- The version a host is deployed to, when it is not its deployment's: a rollback
-- returns each host to the version it had before.
ALTER TABLE hosts ADD COLUMN version text;
