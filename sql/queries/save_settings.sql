-- $1 base_url, $2 options (validated, complete).
INSERT INTO flex_sync_private.settings (base_url, options)
VALUES ($1, $2)
ON CONFLICT (singleton) DO UPDATE
SET base_url = EXCLUDED.base_url, options = EXCLUDED.options, updated_at = now()
