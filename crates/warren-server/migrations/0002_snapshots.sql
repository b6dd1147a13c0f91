-- Snapshots (pause/resume, snapshot templates).
ALTER TABLE sandboxes ADD COLUMN auto_resume BIGINT NOT NULL DEFAULT 0;
ALTER TABLE templates ADD COLUMN source_sandbox TEXT;
