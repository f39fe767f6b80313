-- Token scopes: the services and clusters a token may act on, as exact names or
-- globs (`*`, `?`). An empty list means any, which is what every earlier token keeps.
ALTER TABLE tokens ADD COLUMN services text[] NOT NULL DEFAULT '{}';
ALTER TABLE tokens ADD COLUMN clusters text[] NOT NULL DEFAULT '{}';

-- An Idempotency-Key belongs to the token that sent it (token names are unique and
-- never reused): another caller's key neither returns its deployment nor shows it
-- was used.
DROP INDEX deployments_idempotency_key;
CREATE UNIQUE INDEX deployments_idempotency_key ON deployments (requested_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
