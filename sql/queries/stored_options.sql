SELECT options::text FROM flex_sync_private.settings
