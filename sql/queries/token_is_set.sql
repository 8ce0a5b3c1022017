-- Whether a token would be found at call time (stored, or in the Vault secret the options name).
SELECT api_token IS NOT NULL FROM flex_sync_private.effective_settings()
