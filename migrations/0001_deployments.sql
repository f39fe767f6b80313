-- Deployments, their hosts, steps and log lines, and the outbox that guarantees
-- every accepted deployment reaches the queue.

CREATE TABLE deployments (
    id               uuid PRIMARY KEY,
    service          text        NOT NULL,
    cluster          text        NOT NULL,
    version          text        NOT NULL,
    -- The validated request exactly as accepted; the worker reads its options here.
    request          jsonb       NOT NULL,
    state            text        NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled', 'planned')),
    requested_by     text        NOT NULL,
    retry_of         uuid        REFERENCES deployments (id),
    attempt          integer     NOT NULL DEFAULT 1,
    idempotency_key  text,
    -- SHA-256 of the canonical request, to tell a retried submit from a different one.
    request_hash     text        NOT NULL,
    error            text,
    -- The claim: which worker runs it, and until when its lease holds.
    worker_id        text,
    lease_expires_at timestamptz,
    -- Last sequence number handed out to a log line of this deployment.
    log_seq          bigint      NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);

CREATE UNIQUE INDEX deployments_idempotency_key ON deployments (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Listing is newest first; ids are UUIDv7, so id order is submission order.
CREATE INDEX deployments_service_cluster ON deployments (service, cluster, id DESC);
CREATE INDEX deployments_state ON deployments (state, id DESC);

CREATE TABLE outbox (
    deployment_id uuid        PRIMARY KEY REFERENCES deployments (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text
);

CREATE TABLE hosts (
    deployment_id uuid        NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    name          text        NOT NULL,
    address       text        NOT NULL,
    position      integer     NOT NULL,
    wave          integer     NOT NULL,
    state         text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'unreachable', 'skipped')),
    error         text,
    started_at    timestamptz,
    finished_at   timestamptz,
    PRIMARY KEY (deployment_id, name)
);

CREATE TABLE steps (
    deployment_id uuid        NOT NULL,
    host          text        NOT NULL,
    position      integer     NOT NULL,
    name          text        NOT NULL,
    state         text        NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    exit_code     integer,
    -- The tail of what the step printed; the full text is in log_lines.
    output        text        NOT NULL DEFAULT '',
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    PRIMARY KEY (deployment_id, host, position),
    FOREIGN KEY (deployment_id, host) REFERENCES hosts (deployment_id, name) ON DELETE CASCADE
);

CREATE TABLE log_lines (
    deployment_id uuid        NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    seq           bigint      NOT NULL,
    host          text,
    stream        text        NOT NULL CHECK (stream IN ('stdout', 'stderr', 'system')),
    line          text        NOT NULL,
    at            timestamptz NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);

CREATE INDEX log_lines_host ON log_lines (deployment_id, host, seq);
