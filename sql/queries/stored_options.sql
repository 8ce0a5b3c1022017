SELECT options FROM flex_sync_private.settings
