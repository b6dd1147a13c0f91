-- Durability: why a sandbox is paused (NULL: asked for by a user or
-- auto-pause; 'host_shutdown': paused by a stopping warren, resumes on
-- demand after the restart).
ALTER TABLE sandboxes ADD COLUMN pause_reason TEXT;
