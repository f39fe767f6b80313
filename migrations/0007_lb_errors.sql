-- HAProxy's error counters while a deployment ran (deployments) and during each host's
-- window (hosts), as deltas summed over the load balancers: JSON of the model's
-- `Counters`. NULL when the service is not behind a load balancer or they could not
-- be read.
ALTER TABLE deployments ADD COLUMN lb_errors jsonb;
ALTER TABLE hosts ADD COLUMN lb_errors jsonb;
