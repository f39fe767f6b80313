-- Where Vesemir left a host's server in the load balancers: NULL when it never touched
-- it, else 'ready', 'drain' or 'maint'. A failed host left out of rotation says so here.
ALTER TABLE hosts ADD COLUMN load_balancer text
    CHECK (load_balancer IN ('ready', 'drain', 'maint'));
