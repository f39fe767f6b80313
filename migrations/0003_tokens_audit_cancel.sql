-- API tokens (stored only as hashes), the audit trail, and who cancelled or retried.

CREATE TABLE tokens (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    role       text        NOT NULL CHECK (role IN ('deployer', 'admin')),
    -- SHA-256 of the token's secret part, hex. The token itself is shown once.
    hash       text        NOT NULL,
    created_by text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- Append-only: the application only ever inserts here.
CREATE TABLE audit (
    id            bigserial   PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    actor         text        NOT NULL,
    action        text        NOT NULL,
    deployment_id uuid,
    detail        jsonb       NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_deployment ON audit (deployment_id, id);

ALTER TABLE deployments ADD COLUMN cancelled_by text;
