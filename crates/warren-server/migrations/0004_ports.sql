-- Ports reached from outside: the sandbox's access token (opens its ports
-- and nothing else; NULL for sandboxes from before ports) and the ports
-- anyone may open (a JSON array of numbers; NULL means none).
ALTER TABLE sandboxes ADD COLUMN access_token TEXT;
ALTER TABLE sandboxes ADD COLUMN public_ports TEXT;
