-- What keeps the promises when parts fail: submission order taken from the database,
-- one rollout per target enforced by an index, outbox rows that a later wake-up
-- supersedes instead of joining, and the reaper's bookkeeping.

-- Submission order: a sequence read by the inserting transaction, moments before its
-- commit. Ids are UUIDv7 made from an API replica's clock, so they cannot order
-- submissions from replicas whose clocks differ.
ALTER TABLE deployments ADD COLUMN queue_seq bigint GENERATED ALWAYS AS IDENTITY;
CREATE INDEX deployments_target_queue ON deployments (service, cluster, queue_seq)
    WHERE state IN ('queued', 'running', 'cancelling');

-- At most one deployment of a service to a cluster rolls out at a time. The claim
-- checks this first; the index makes two claims racing on one target impossible.
CREATE UNIQUE INDEX deployments_one_rollout_per_target ON deployments (service, cluster)
    WHERE state IN ('running', 'cancelling') AND (request->>'dry_run')::boolean IS NOT TRUE;

-- Each enqueue of an id that already has a row bumps its generation; the relay
-- deletes a row only at the generation it published, so a wake-up that arrives
-- while an earlier row is being published is published too.
ALTER TABLE outbox ADD COLUMN generation bigint NOT NULL DEFAULT 0;

-- When the reaper last queued a deployment again, and how often since it was last
-- claimed (each time it waits twice as long, so a backlog does not pile duplicates
-- onto the broker).
ALTER TABLE deployments ADD COLUMN reaped_at timestamptz;
ALTER TABLE deployments ADD COLUMN reaps integer NOT NULL DEFAULT 0;
