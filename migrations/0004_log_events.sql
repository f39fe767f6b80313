-- Log lines double as the deployment's ordered event stream: a line about a change
-- (the deployment's state, a host's result, a step) carries it as structured data.
ALTER TABLE log_lines ADD COLUMN event jsonb;
