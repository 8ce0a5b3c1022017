-- Who may use what (README: "Who may call what"). Every function, relation and schema of the
-- extension is its owner's alone, except the grants listed in intended_grants(). Default
-- privileges in force when CREATE EXTENSION or an update runs (Supabase grants ALL on new
-- functions, tables and sequences to anon, authenticated and service_role; the live app grants
-- DML on new tables to anon and authenticated) name roles one by one, so revoking from PUBLIC is
-- not enough: restrict_acls() revokes every privilege held by anyone but the owner that is not
-- intended, then refuses to finish if one is left. Every install and update script ends with it.

-- The grants the extension makes itself, where the role exists: the frontend's roles may call
-- the sync and its preview (flex_sync_private.authorize() still refuses anon and non-managers).
-- Nothing else.
CREATE FUNCTION flex_sync_private.intended_grants()
RETURNS TABLE (object text, grantee name, privilege text)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    VALUES ('@extschema@.flex_sync_job(uuid,text[],boolean,boolean)', 'authenticated'::name, 'EXECUTE'),
           ('@extschema@.flex_sync_job(uuid,text[],boolean,boolean)', 'service_role'::name, 'EXECUTE'),
           ('@extschema@.flex_sync_plan(uuid,text[])', 'authenticated'::name, 'EXECUTE'),
           ('@extschema@.flex_sync_plan(uuid,text[])', 'service_role'::name, 'EXECUTE');
$$;

-- Every privilege on a member of the extension held by a role other than the object's owner
-- (PUBLIC included, column privileges included) that intended_grants() does not list, and the
-- grant option on one it does (with it a grantee could pass the privilege on). `kind` and
-- `object` are what GRANT and REVOKE take; objects are named schema-qualified, as the pinned
-- search_path makes regprocedure and regclass print them. `option_only`: only the grant option
-- is unintended. Grants made by the owner come first: revoking them with CASCADE also removes
-- what their grantees passed on.
CREATE FUNCTION flex_sync_private.unintended_grants()
RETURNS TABLE (kind text, object text, grantee text, privilege text, option_only boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH members AS (
        SELECT d.classid, d.objid
        FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
        WHERE d.refclassid = 'pg_extension'::regclass AND e.extname = 'flex_sync' AND d.deptype = 'e'
    ), held AS (
        SELECT 'ROUTINE' AS kind, p.oid::regprocedure::text AS object, p.proowner AS owner, a.*
        FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid,
             aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
        UNION ALL
        SELECT CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::regclass::text, c.relowner, a.*
        FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid,
             aclexplode(coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) a
        UNION ALL
        SELECT 'TABLE', c.oid::regclass::text, c.relowner, a.grantor, a.grantee,
               a.privilege_type || ' (' || quote_ident(att.attname) || ')', a.is_grantable
        FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
             JOIN pg_attribute att ON att.attrelid = c.oid AND att.attacl IS NOT NULL,
             aclexplode(att.attacl) a
        UNION ALL
        SELECT 'SCHEMA', quote_ident(n.nspname), n.nspowner, a.*
        FROM members m JOIN pg_namespace n ON m.classid = 'pg_namespace'::regclass AND n.oid = m.objid,
             aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
    ), judged AS (
        SELECT h.*, CASE WHEN h.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee_name,
               EXISTS (SELECT 1 FROM flex_sync_private.intended_grants() i
                       WHERE h.kind = 'ROUTINE' AND i.object = h.object AND i.grantee = r.rolname
                         AND i.privilege = h.privilege_type) AS intended
        FROM held h LEFT JOIN pg_roles r ON r.oid = h.grantee
        WHERE h.grantee <> h.owner
    )
    SELECT kind, object, grantee_name, privilege_type, intended
    FROM judged
    WHERE NOT intended OR is_grantable
    ORDER BY grantor <> owner, 1, 2, 3, 4;
$$;

CREATE FUNCTION flex_sync_private.restrict_acls()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g record;
    left_over text;
BEGIN
    FOR g IN SELECT * FROM flex_sync_private.unintended_grants() LOOP
        EXECUTE format('REVOKE %s%s ON %s %s FROM %s CASCADE',
                       CASE WHEN g.option_only THEN 'GRANT OPTION FOR ' ELSE '' END,
                       g.privilege, g.kind, g.object, g.grantee);
    END LOOP;
    FOR g IN SELECT i.* FROM flex_sync_private.intended_grants() i JOIN pg_roles r ON r.rolname = i.grantee LOOP
        EXECUTE format('GRANT %s ON ROUTINE %s TO %I', g.privilege, g.object, g.grantee);
    END LOOP;
    SELECT string_agg(format('%s on %s %s to %s%s', u.privilege, lower(u.kind), u.object, u.grantee,
                             CASE WHEN u.option_only THEN ' (its grant option)' ELSE '' END), '; ')
    INTO left_over FROM flex_sync_private.unintended_grants() u;
    IF left_over IS NOT NULL THEN
        RAISE EXCEPTION 'flex_sync: extension objects are reachable by roles it does not grant: %', left_over
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'revoke these privileges (with GRANTED BY the role that granted them, and CASCADE), '
                         'then run the install or update again';
    END IF;
END
$$;

SELECT flex_sync_private.restrict_acls();
