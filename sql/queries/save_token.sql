-- $1 the Flex token; never logged, never in a view.
INSERT INTO flex_sync_private.api_token (api_token) VALUES ($1)
ON CONFLICT (singleton) DO UPDATE SET api_token = EXCLUDED.api_token
