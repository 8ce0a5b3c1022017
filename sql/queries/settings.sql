-- The settings a sync runs with: base_url, api_token (from Vault or the store) and options; no
-- row when flex_sync is not configured. Read once the call's input has been checked.
SELECT to_jsonb(s) FROM flex_sync_private.effective_settings() s WHERE s.base_url IS NOT NULL
