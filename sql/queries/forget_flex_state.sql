-- What was learnt about the previous endpoint (a spent hourly budget) goes with a new configure.
DELETE FROM flex_sync_private.flex_state
