-- Flex's hourly budget is shared by every key of the customer: once a sync saw it spent, the
-- following syncs do not call for $1 (an interval).
INSERT INTO flex_sync_private.flex_state (singleton, rate_limited_until) VALUES (true, clock_timestamp() + $1::interval)
ON CONFLICT (singleton) DO UPDATE SET rate_limited_until = EXCLUDED.rate_limited_until
