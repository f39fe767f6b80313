-- Webhooks, delivered from an outbox: a notification is recorded in the transaction
-- that changes a deployment's state, so none is lost and none is sent for a change
-- that did not commit. An API replica routes each notification to the webhooks the
-- configuration names for its service and cluster, then delivers, retrying with
-- backoff.

CREATE TABLE notifications (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    deployment_id uuid        NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    event         text        NOT NULL
        CHECK (event IN ('started', 'succeeded', 'failed', 'cancelled', 'rolling_back', 'rolled_back')),
    -- The deployment as the change left it (the model's `NotifiedDeployment`).
    deployment    jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    routed        boolean     NOT NULL DEFAULT false
);
CREATE INDEX notifications_unrouted ON notifications (id) WHERE NOT routed;

-- One trigger instead of a call at every place a state changes: the claim, finish,
-- cancel and a rollback's settling all go through it, in their own transaction.
CREATE FUNCTION notify_deployment_state() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind text := CASE WHEN NEW.state = 'running' THEN 'started' ELSE NEW.state END;
BEGIN
    IF NEW.state IS DISTINCT FROM OLD.state
       AND kind IN ('started', 'succeeded', 'failed', 'cancelled', 'rolling_back', 'rolled_back')
       AND NOT (NEW.state = 'running' AND OLD.state <> 'queued')
       AND (NEW.request->>'dry_run')::boolean IS NOT TRUE THEN
        INSERT INTO notifications (deployment_id, event, deployment) VALUES (NEW.id, kind, jsonb_build_object(
            'id', NEW.id, 'service', NEW.service, 'cluster', NEW.cluster, 'version', NEW.version,
            'state', NEW.state, 'error', NEW.error, 'requested_by', NEW.requested_by,
            'retry_of', NEW.retry_of, 'rollback_of', NEW.rollback_of));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER deployments_notify AFTER UPDATE OF state ON deployments
    FOR EACH ROW EXECUTE FUNCTION notify_deployment_state();

-- Each notification's delivery to each webhook that wants it.
CREATE TABLE deliveries (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id bigint      NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    deployment_id   uuid        NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    -- The webhook's place in the configuration: services.NAME.webhooks.NAME or
    -- clusters.NAME.webhooks.NAME.
    webhook         text        NOT NULL,
    url             text        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_of_deployment ON deliveries (deployment_id, id);
