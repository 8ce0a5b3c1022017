-- Who may call what (DESIGN.md section 6). Nothing is executable by PUBLIC but the settings
-- view's owner-side functions; callers are granted explicitly, e.g.
--   GRANT EXECUTE ON FUNCTION flex_sync_job(uuid, text[], boolean) TO service_role;
REVOKE EXECUTE ON FUNCTION flex_sync_job(uuid, text[], boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION flex_sync_configure(text, text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION flex_sync_install_reference_schema() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION flex_sync_desired_crew(uuid, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION flex_sync_private.effective_settings() FROM PUBLIC;

-- flex_sync_job reads the private settings and writes the application's tables as the
-- extension's owner, like the Edge Function's service role did; its search_path is pinned.
ALTER FUNCTION flex_sync_job(uuid, text[], boolean)
    SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION flex_sync_configure(text, text, jsonb)
    SET search_path = pg_catalog, public, pg_temp;
REVOKE EXECUTE ON FUNCTION flex_dedupe_assignments(boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION flex_sync_pending(integer, integer, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION flex_sync_requeue(uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION flex_sync_enable_queue() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION flex_sync_private.mark_dirty(uuid, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION flex_sync_private.dedupe_plan(oid) FROM PUBLIC;
