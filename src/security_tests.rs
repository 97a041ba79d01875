//! In-transaction tests of who may do what (docs/security.md): the allow-list, SECURITY
//! DEFINER functions and their reasons, escalation attempts through trigger functions, caller
//! text and jobs, role names of any shape, and store isolation. Jobs run by the scheduler are
//! tested on a real server in tests/security.rs.

#[pgrx::pg_schema]
mod tests {
    use std::collections::BTreeSet;

    use pgrx::prelude::*;

    use crate::pg_tests::tests::{
        assert_fails, compat_history, lacaja_pos, outcome_helper, run, sale, scalar, STORE_A, STORE_B,
    };

    const API: &str = include_str!("../docs/api.md");
    const SECURITY: &str = include_str!("../docs/security.md");

    fn strings(sql: &str) -> BTreeSet<String> {
        Spi::connect(|client| {
            client
                .select(sql, None, &[])
                .unwrap_or_else(|e| panic!("{e}\n---\n{sql}"))
                .map(|row| row.get::<String>(1).unwrap().unwrap())
                .collect()
        })
    }

    /// The backticked first cells of the markdown table rows of `doc` under the heading
    /// `section` (up to the next heading), with their other cells.
    fn table_rows(doc: &str, section: &str) -> Vec<(String, Vec<String>)> {
        let mut inside = false;
        let mut rows = Vec::new();
        for line in doc.lines() {
            if line.starts_with('#') {
                inside = line.trim_start_matches('#').trim() == section;
                continue;
            }
            if inside && line.starts_with("| `") {
                let cells: Vec<String> = line.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect();
                rows.push((cells[0].trim_matches('`').to_string(), cells[1..].to_vec()));
            }
        }
        assert!(!rows.is_empty(), "no table under heading {section:?}");
        rows
    }

    fn is_superuser(role: &str) -> bool {
        scalar::<bool>(&format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{role}'")).unwrap()
    }

    // The allow-list ------------------------------------------------------------------------

    #[pg_test]
    fn a_role_with_usage_on_analytics_executes_exactly_the_documented_api() {
        run("SET LOCAL search_path = pg_catalog");
        run("CREATE ROLE lacaja_probe NOLOGIN; GRANT USAGE ON SCHEMA analytics TO lacaja_probe");
        let documented = table_rows(API, "Every routine of analytics");
        let public: BTreeSet<String> =
            documented.iter().filter(|(_, cells)| cells[0] == "PUBLIC").map(|(sig, _)| sig.clone()).collect();
        let all: BTreeSet<String> = documented.iter().map(|(sig, _)| sig.clone()).collect();
        assert_eq!(
            strings("SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'analytics'::regnamespace"),
            all,
            "docs/api.md must list every routine of analytics"
        );
        assert_eq!(
            strings(
                "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'analytics'::regnamespace
                   AND has_function_privilege('lacaja_probe', p.oid, 'EXECUTE')"
            ),
            public,
            "what a role with USAGE on analytics may execute differs from docs/api.md"
        );
        // The internal schema is the owner's alone; nothing is readable or writable by PUBLIC.
        assert_eq!(scalar::<bool>("SELECT has_schema_privilege('lacaja_probe', 'analytics_internal', 'USAGE')"), Some(false));
        assert_eq!(scalar::<bool>("SELECT has_schema_privilege('lacaja_probe', 'analytics', 'CREATE')"), Some(false));
        let readable: i64 = scalar(
            "SELECT count(*) FROM pg_class c WHERE c.relnamespace IN ('analytics'::regnamespace, 'analytics_internal'::regnamespace)
               AND c.relkind IN ('r', 'v', 'p', 'S', 'm')
               AND has_any_column_privilege('lacaja_probe', c.oid, 'SELECT, INSERT, UPDATE, REFERENCES')",
        )
        .unwrap();
        assert_eq!(readable, 0, "no relation of the extension may be readable or writable by PUBLIC");
        // Internal functions PUBLIC may execute: only those views call (with the reader's
        // rights) and the store-isolation check, each listed with its reason.
        let listed: BTreeSet<String> =
            table_rows(SECURITY, "Internal functions readers run").into_iter().map(|(sig, _)| sig).collect();
        assert_eq!(
            strings(
                "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'analytics_internal'::regnamespace
                   AND has_function_privilege('lacaja_probe', p.oid, 'EXECUTE')"
            ),
            listed
        );
        // The POS role needs nothing: capture triggers run as the owner.
        assert_eq!(scalar::<bool>("SELECT has_schema_privilege('public', 'analytics', 'USAGE')"), Some(false));
    }

    #[pg_test]
    fn every_security_definer_function_is_documented_with_its_reason() {
        run("SET LOCAL search_path = pg_catalog");
        let documented = table_rows(SECURITY, "SECURITY DEFINER functions");
        for (signature, cells) in &documented {
            assert!(cells.len() >= 2 && cells.iter().all(|c| c.len() > 10), "{signature}: say why and what it checks");
        }
        let documented: BTreeSet<String> = documented.into_iter().map(|(sig, _)| sig).collect();
        // A unique index kept across chunks brings its registry's trigger function; a foreign
        // key into a key kept that way, its generated check.
        run("CREATE SCHEMA lacaja_definers;
             CREATE TABLE lacaja_definers.t (id int PRIMARY KEY, at timestamptz NOT NULL, code text);
             CREATE UNIQUE INDEX t_code ON lacaja_definers.t (code) WHERE code IS NOT NULL;
             CREATE TABLE lacaja_definers.child (t_id int REFERENCES lacaja_definers.t);
             SELECT analytics.create_hypertable('lacaja_definers.t', 'at', replace_unique => true, extend_unique => true,
                                                replace_foreign_keys => true);");
        let generated: i64 = scalar("SELECT count(*) FROM analytics_internal.replaced_foreign_keys WHERE check_function IS NOT NULL").unwrap();
        assert_eq!(generated, 1);
        // Generated capture and registry functions are listed by their family.
        let definers = strings(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM analytics_internal.replaced_unique_indexes r JOIN pg_class c ON c.oid = r.registry
                                      WHERE c.relname = p.proname AND p.pronamespace = 'analytics_internal'::regnamespace)
                         THEN 'analytics_internal.<index>_keys()'
                         WHEN EXISTS (SELECT 1 FROM analytics_internal.replaced_foreign_keys f WHERE f.check_function = p.oid)
                         THEN 'analytics_internal.<foreign key>_check_<child>()'
                         ELSE regexp_replace(p.oid::regprocedure::text,
                                             '^analytics_internal\\._capture_[a-z_]+\\(\\)$', 'analytics_internal._capture_*()') END
             FROM pg_proc p
             WHERE p.pronamespace IN ('analytics'::regnamespace, 'analytics_internal'::regnamespace) AND p.prosecdef",
        );
        assert_eq!(definers, documented, "docs/security.md must list every SECURITY DEFINER function");
        let unpinned: i64 = scalar(
            "SELECT count(*) FROM pg_proc p
             WHERE p.pronamespace IN ('analytics'::regnamespace, 'analytics_internal'::regnamespace) AND p.prosecdef
               AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)",
        )
        .unwrap();
        assert_eq!(unpinned, 0, "a SECURITY DEFINER function must pin search_path to pg_catalog, pg_temp");
    }

    // Finding 1: a dashboard role attached an internal trigger function to its own table -------

    #[pg_test]
    fn a_dashboard_role_cannot_attach_any_trigger_function_of_the_extension() {
        lacaja_pos();
        outcome_helper();
        let trigger_functions = strings(
            "SELECT p.oid::regproc::text FROM pg_proc p
             WHERE p.pronamespace IN ('analytics'::regnamespace, 'analytics_internal'::regnamespace)
               AND p.prorettype = 'trigger'::regtype",
        );
        assert!(trigger_functions.len() >= 10, "{trigger_functions:?}");
        // The README's grants for a dashboard role.
        run("CREATE ROLE lacaja_dashboard NOLOGIN;
             GRANT USAGE ON SCHEMA analytics TO lacaja_dashboard;
             GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO lacaja_dashboard");
        run("SET LOCAL ROLE lacaja_dashboard");
        run("CREATE TEMP TABLE mine (id int, sale_id uuid)");
        for function in &trigger_functions {
            let qualified = if function.contains('.') { function.clone() } else { format!("analytics.{function}") };
            assert_fails(
                &format!(
                    "CREATE TRIGGER escalate AFTER INSERT ON mine FOR EACH ROW EXECUTE FUNCTION {qualified}(
                        'k', 'pg_authid; ALTER ROLE lacaja_dashboard SUPERUSER; --', '{{id}}', '{{oid}}', 'c', 'c')"
                ),
                "42501",
            );
        }
        run("RESET ROLE");
        assert!(!is_superuser("lacaja_dashboard"));
    }

    /// Even attached by the owner with crafted arguments, the trigger functions that read
    /// TG_ARGV refuse: their arguments must describe what the extension itself created.
    #[pg_test]
    fn trigger_functions_refuse_arguments_the_extension_did_not_write() {
        lacaja_pos();
        outcome_helper();
        run("CREATE ROLE lacaja_victim NOLOGIN;
             CREATE TABLE public.canary (x int);
             CREATE TABLE public.scratch (id int, x int)");
        let payload = "public.canary; ALTER ROLE lacaja_victim SUPERUSER; DROP TABLE public.canary; --";
        let crafted = [
            ("check", format!(
                "CREATE TRIGGER t_check AFTER INSERT ON public.scratch FOR EACH ROW
                 EXECUTE FUNCTION analytics_internal._fk_check_parent('k', '{p}', '{{id}}', '{{x}}')", p = payload.replace('\'', "''")),
             "INSERT INTO public.scratch VALUES (1, 1)"),
            ("action", format!(
                "CREATE TRIGGER t_action AFTER DELETE ON public.scratch FOR EACH ROW
                 EXECUTE FUNCTION analytics_internal._fk_parent_action('k', '{p}', '{{x}}', '{{id}}', 'c', 'c')", p = payload.replace('\'', "''")),
             "DELETE FROM public.scratch"),
            ("log", format!(
                "CREATE TRIGGER t_log AFTER INSERT ON public.scratch REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
                 EXECUTE FUNCTION analytics_internal._log_changed_keys('{p}', '{p}')", p = payload.replace('\'', "''")),
             "INSERT INTO public.scratch VALUES (2, 2)"),
            ("truncate", "CREATE TRIGGER lacaja_analytics_sales_truncate AFTER TRUNCATE ON public.scratch FOR EACH STATEMENT
                          EXECUTE FUNCTION analytics_internal._capture_truncate('sales')".to_string(),
             "TRUNCATE public.scratch"),
            ("truncate warehouse", "CREATE TRIGGER t_truncate AFTER TRUNCATE ON public.scratch FOR EACH STATEMENT
                          EXECUTE FUNCTION analytics_internal._capture_truncate('warehouse_sales')".to_string(),
             "TRUNCATE public.scratch"),
        ];
        run(&sale(1, STORE_A, "2026-03-01 10:15:00-04", "100.00", "CASH_BS", None));
        for (what, create, fire) in &crafted {
            run("INSERT INTO public.scratch VALUES (1, 1)");
            run(create);
            assert_fails(fire, "42501");
            run(&format!("DROP TRIGGER {} ON public.scratch",
                         create.split_whitespace().nth(2).unwrap()));
            assert!(!is_superuser("lacaja_victim"), "{what}");
            assert_eq!(scalar::<bool>("SELECT to_regclass('public.canary') IS NOT NULL"), Some(true), "{what}");
        }
        // The crafted TRUNCATE emptied no rollup.
        assert_eq!(scalar::<i64>("SELECT sum(sales_count)::bigint FROM analytics.sales_daily"), Some(1));
    }

    // LA-CAJA's objects run no code with the extension's rights ---------------------------------

    #[pg_test]
    fn a_source_table_cannot_be_replaced_by_a_view_while_attached() {
        lacaja_pos();
        outcome_helper();
        // A view's functions would run with the extension's rights when the capture reads it.
        assert_fails("ALTER TABLE pos.products RENAME TO products_kept; CREATE VIEW pos.products AS SELECT * FROM pos.products_kept", "55000");
        assert_eq!(scalar::<String>("SELECT relkind::text FROM pg_class WHERE oid = 'pos.products'::regclass").as_deref(), Some("r"));
        // Nor a column of a type whose casts and operators someone else wrote, nor another
        // schema in the attached one's place.
        run("CREATE TYPE public.quantity AS (v numeric)");
        assert_fails("ALTER TABLE pos.inventory_movements ADD COLUMN measured public.quantity", "55000");
        assert_fails("ALTER SCHEMA pos RENAME TO pos_old", "55000");
        assert_fails("CREATE SCHEMA pos_other; CREATE VIEW pos_other.sales AS SELECT * FROM pos.sales;
                      ALTER SCHEMA pos RENAME TO pos_old; ALTER SCHEMA pos_other RENAME TO pos", "55000");
        // Ordinary migrations go on.
        run("ALTER TABLE pos.products ADD COLUMN barcode_2 text; CREATE VIEW pos.products_report AS SELECT id FROM pos.products");
        // Detached, the schema is LA-CAJA's business again.
        run("SELECT analytics.detach()");
        run("ALTER TABLE pos.products RENAME TO products_kept; CREATE VIEW pos.products AS SELECT * FROM pos.products_kept");
    }

    #[pg_test]
    fn replaced_foreign_keys_act_as_the_tables_owners_and_run_no_casts() {
        outcome_helper();
        run("CREATE ROLE lacaja_app NOLOGIN;
             CREATE SCHEMA app AUTHORIZATION lacaja_app;
             CREATE TABLE app.seen (what text, by_role name);
             ALTER TABLE app.seen OWNER TO lacaja_app;
             SET LOCAL ROLE lacaja_app;
             CREATE TYPE app.mood AS ENUM ('calm');
             CREATE FUNCTION app.spy(app.mood) RETURNS json LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO app.seen VALUES ('cast', current_user); RETURN '1'; END $$;
             CREATE CAST (app.mood AS json) WITH FUNCTION app.spy(app.mood);
             CREATE TABLE app.parent (id int PRIMARY KEY, at timestamptz NOT NULL);
             CREATE TABLE app.child (id int PRIMARY KEY, parent_id int REFERENCES app.parent ON DELETE CASCADE,
                                     mood app.mood DEFAULT 'calm');
             CREATE FUNCTION app.note() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO app.seen VALUES (TG_OP, current_user); RETURN NULL; END $$;
             CREATE TRIGGER note AFTER DELETE ON app.child FOR EACH ROW EXECUTE FUNCTION app.note();
             INSERT INTO app.parent SELECT i, '2026-01-01'::timestamptz + i * interval '1 day' FROM generate_series(1, 3) i;
             RESET ROLE");
        run("SELECT analytics.create_hypertable('app.parent', 'at', INTERVAL '1 day', migrate_data => true,
                                               extend_unique => true, replace_foreign_keys => true, online => false)");
        // the check and the cascade as the tables' owner; the type's cast never runs
        run("INSERT INTO app.child (id, parent_id) VALUES (1, 1), (2, 2)");
        assert_fails("INSERT INTO app.child (id, parent_id) VALUES (3, 99)", "23503");
        run("DELETE FROM app.parent WHERE id = 1");
        assert_eq!(scalar::<i64>("SELECT count(*) FROM app.child WHERE parent_id = 1"), Some(0));
        assert_eq!(
            scalar::<String>("SELECT string_agg(what || ' by ' || by_role, ', ') FROM app.seen").as_deref(),
            Some("DELETE by lacaja_app"),
            "the child's trigger ran as its owner, and no cast of its types ran at all"
        );
    }

    // Finding 2 (part 2): caller text never reaches dynamic SQL ----------------------------------

    #[pg_test]
    fn injection_strings_through_every_api_argument_execute_nothing() {
        compat_history();
        outcome_helper();
        run("CREATE ROLE lacaja_victim NOLOGIN; CREATE TABLE public.canary (x int)");
        let payloads = [
            "x'); DROP TABLE public.canary; --",
            "x\"; DROP TABLE public.canary; --",
            "public.canary; ALTER ROLE lacaja_victim SUPERUSER; --",
            "x' || (SELECT 1 FROM pg_sleep(0)) || '",
            "{\"hypertable_id\": \"1; DROP TABLE public.canary\", \"drop_after\": \"1 day'); DROP TABLE public.canary; --\", \"max_rows\": \"1); DROP TABLE public.canary; --\"}",
        ];
        // One call per function, injected argument position and payload; the other arguments
        // get ordinary values so that the call reaches its SQL.
        let calls = strings(&format!(
            "WITH args AS (
                 SELECT p.oid, p.oid::regproc::text AS name, a.position, a.type
                 FROM pg_proc p, unnest(p.proargtypes::regtype[]) WITH ORDINALITY AS a (type, position)
                 WHERE p.pronamespace = 'analytics'::regnamespace AND p.prokind = 'f'),
             targets AS (
                 SELECT DISTINCT oid, name, position FROM args
                 WHERE type IN ('text'::regtype, 'name'::regtype, 'jsonb'::regtype, 'regclass'::regtype,
                                'regproc'::regtype, 'regprocedure'::regtype))
             SELECT format('SELECT %s(%s)', t.name, string_agg(
                        CASE WHEN a.position = t.position THEN quote_literal(payload) || '::' || a.type::text
                             WHEN a.type = 'uuid'::regtype THEN quote_literal('{STORE_A}') || '::uuid'
                             WHEN a.type = 'date'::regtype THEN 'current_date'
                             WHEN a.type = 'timestamp with time zone'::regtype THEN 'now()'
                             WHEN a.type = 'interval'::regtype THEN 'interval ''1 day'''
                             WHEN a.type IN ('integer'::regtype, 'bigint'::regtype, 'smallint'::regtype) THEN '1'
                             WHEN a.type = 'boolean'::regtype THEN 'false'
                             WHEN a.type = 'regclass'::regtype THEN '''pos.sales''::regclass'
                             WHEN a.type = 'name'::regtype THEN '''pos''::name'
                             WHEN a.type = 'text'::regtype THEN '''America/Caracas'''
                             WHEN a.type = 'jsonb'::regtype THEN '''{{}}''::jsonb'
                             ELSE 'NULL::' || a.type::text END, ', ' ORDER BY a.position))
             FROM targets t JOIN args a ON a.oid = t.oid,
                  unnest($p${payloads}$p$::text[]) AS payload
             GROUP BY t.oid, t.name, t.position, payload",
            payloads = format!("{{{}}}", payloads.iter().map(|p| format!("\"{}\"", p.replace('\\', "\\\\").replace('"', "\\\""))).collect::<Vec<_>>().join(","))
        ));
        assert!(calls.len() > 100, "{}", calls.len());
        for call in &calls {
            let _: Option<String> = scalar(&format!("SELECT pg_temp.analytics_test_outcome({})", pgrx::spi::quote_literal(call)));
            assert_eq!(scalar::<bool>("SELECT to_regclass('public.canary') IS NOT NULL"), Some(true), "{call}");
        }
        assert!(!is_superuser("lacaja_victim"));
        assert_eq!(scalar::<bool>("SELECT current_user = session_user"), Some(true));
    }

    // Finding 2: a job escaped to superuser ------------------------------------------------------

    fn job_author() {
        run("CREATE ROLE lacaja_job_author NOLOGIN;
             GRANT USAGE ON SCHEMA analytics TO lacaja_job_author;
             CREATE SCHEMA author AUTHORIZATION lacaja_job_author");
    }

    #[pg_test]
    fn a_job_that_tries_to_escape_fails_is_recorded_and_changes_no_role() {
        job_author();
        outcome_helper();
        let escapes = [
            ("reset_role", "RESET ROLE; ALTER ROLE lacaja_job_author SUPERUSER;"),
            ("set_role", "EXECUTE format('SET ROLE %I', session_user); ALTER ROLE lacaja_job_author SUPERUSER;"),
            ("set_config", "PERFORM set_config('role', session_user, false); ALTER ROLE lacaja_job_author SUPERUSER;"),
            ("session_authorization",
             "EXECUTE format('SET SESSION AUTHORIZATION %I', session_user); ALTER ROLE lacaja_job_author SUPERUSER;"),
            ("plain", "ALTER ROLE lacaja_job_author SUPERUSER;"),
            // a job adding a job: the new one is the author's too, never the scheduler's superuser
            ("add_job", "PERFORM analytics.add_job('author.plain'::regproc, interval '1 hour');"),
        ];
        run("SET LOCAL ROLE lacaja_job_author");
        for (name, body) in escapes {
            run(&format!(
                "CREATE PROCEDURE author.{name}(job_id int, config jsonb) LANGUAGE plpgsql AS $$ BEGIN {body} END $$;
                 SELECT analytics.add_job('author.{name}'::regproc, interval '1 hour')"
            ));
        }
        run("RESET ROLE");
        // As a superuser running every due job from cron: each escape fails, the others go on.
        let ran: pgrx::JsonB = scalar("SELECT analytics.run_pending_jobs()").unwrap();
        // six, and the job the add_job escape added (due at once)
        assert_eq!(ran.0["jobs_run"], 7, "{}", ran.0);
        assert!(!is_superuser("lacaja_job_author"));
        let failures = strings(
            "SELECT e.proc_name || ':' || e.sqlerrcode FROM analytics.job_errors e",
        );
        let expected: BTreeSet<String> = ["reset_role", "set_role", "set_config", "session_authorization", "plain"]
            .iter()
            .map(|name| format!("{name}:42501"))
            .collect();
        assert_eq!(failures, expected);
        // The job the job added belongs to the author and fails like its own would.
        assert_eq!(
            scalar::<String>("SELECT owner::text FROM analytics.jobs WHERE proc = 'author.plain'::regproc ORDER BY job_id DESC LIMIT 1").as_deref(),
            Some("lacaja_job_author")
        );
        run("UPDATE analytics.jobs SET next_start = now() - interval '1 second'");
        run("UPDATE analytics_internal.job_run_state SET last_run_started_at = NULL");
        let _: pgrx::JsonB = scalar("SELECT analytics.run_pending_jobs()").unwrap();
        assert!(!is_superuser("lacaja_job_author"));
        // CALL run_job by a superuser: the job still runs as its owner.
        let job: i32 = scalar("SELECT job_id FROM analytics.jobs WHERE proc = 'author.reset_role'::regproc").unwrap();
        assert_fails(&format!("CALL analytics.run_job({job})"), "42501");
        assert!(!is_superuser("lacaja_job_author"));
        assert_eq!(scalar::<bool>("SELECT current_user = session_user"), Some(true));
    }

    #[pg_test]
    fn jobs_belong_to_their_author() {
        job_author();
        outcome_helper();
        run("CREATE ROLE lacaja_other NOLOGIN; GRANT USAGE ON SCHEMA analytics TO lacaja_other");
        run("CREATE PROCEDURE public.owners_only(job_id int, config jsonb) LANGUAGE plpgsql AS $$ BEGIN END $$;
             REVOKE EXECUTE ON PROCEDURE public.owners_only(int, jsonb) FROM PUBLIC");
        run("SET LOCAL ROLE lacaja_job_author");
        // a procedure the author may not execute
        assert_fails("SELECT analytics.add_job('public.owners_only'::regproc, interval '1 hour')", "42501");
        // nor one in a schema it cannot use
        run("RESET ROLE");
        let internal: pg_sys::Oid = scalar("SELECT 'analytics_internal.policy_compact_parts'::regproc::oid").unwrap();
        run("SET LOCAL ROLE lacaja_job_author");
        assert_fails(&format!("SELECT analytics.add_job({}::oid::regproc, interval '1 hour')", u32::from(internal)), "42501");
        run("CREATE PROCEDURE author.mine(job_id int, config jsonb) LANGUAGE plpgsql AS $$ BEGIN END $$");
        let job: i32 = scalar("SELECT analytics.add_job('author.mine'::regproc, interval '1 hour')").unwrap();
        run("RESET ROLE; GRANT USAGE ON SCHEMA author TO lacaja_other; SET LOCAL ROLE lacaja_other");
        assert_fails(&format!("SELECT analytics.alter_job({job}, scheduled => false)"), "42501");
        assert_fails(&format!("SELECT analytics.delete_job({job})"), "42501");
        assert_fails(&format!("CALL analytics.run_job({job})"), "42501");
        // a check_config function is the caller's code: it runs as the caller, restricted
        run("RESET ROLE; SET LOCAL ROLE lacaja_job_author");
        run("CREATE FUNCTION author.check(config jsonb) RETURNS void LANGUAGE plpgsql AS $$
             BEGIN RESET ROLE; ALTER ROLE lacaja_job_author SUPERUSER; END $$");
        assert_fails(&format!("SELECT analytics.alter_job({job}, check_config => 'author.check'::regproc)"), "42501");
        run("RESET ROLE");
        assert!(!is_superuser("lacaja_job_author"));
        assert_eq!(scalar::<bool>(&format!("SELECT scheduled FROM analytics.jobs WHERE job_id = {job}")), Some(true));

        // The implementations behind the wrappers act for the role a token names, and only a
        // token minted by that role's own call names it.
        assert_fails("SELECT analytics_internal._redeem_caller(424242)", "42501");
        run("SET LOCAL ROLE lacaja_job_author");
        assert_fails(&format!("SELECT analytics_internal._delete_job(1, {job})"), "42501");
        run("RESET ROLE");
        // A superuser who calls a role's SECURITY DEFINER function that adds a job (or who
        // runs ANALYZE or REFRESH over that role's code) adds a job of that role, not its own.
        run("SET LOCAL ROLE lacaja_job_author;
             CREATE FUNCTION author.sneaky() RETURNS int LANGUAGE sql SECURITY DEFINER
                 AS $$ SELECT analytics.add_job('author.mine'::regproc, interval '1 hour') $$;
             RESET ROLE");
        let sneaky: i32 = scalar("SELECT author.sneaky()").unwrap();
        assert_eq!(
            scalar::<String>(&format!("SELECT owner::text FROM analytics.jobs WHERE job_id = {sneaky}")).as_deref(),
            Some("lacaja_job_author")
        );
    }

    // Finding 3: owners whose names need quoting ----------------------------------------------

    #[pg_test]
    fn role_and_table_names_of_any_shape_work_in_every_path() {
        compat_history();
        outcome_helper();
        let owner = "LaCaja \"Dueño\" Owner";
        let quoted = format!("\"{}\"", owner.replace('"', "\"\""));
        run(&format!("CREATE ROLE {quoted} NOLOGIN"));
        run(include_str!("../sql/fixtures/lacaja_materialized_views.sql"));
        run(&format!(
            "ALTER TABLE pos.sales OWNER TO {quoted};
             ALTER TABLE pos.sale_items OWNER TO {quoted};
             ALTER MATERIALIZED VIEW pos.mv_sales_daily OWNER TO {quoted};
             CREATE SCHEMA \"Tienda Ñ\" AUTHORIZATION {quoted};
             CREATE TABLE \"Tienda Ñ\".\"Eventos \"\"raros\"\"\" (id bigserial PRIMARY KEY, \"Creado\" timestamptz NOT NULL, n int);
             ALTER TABLE \"Tienda Ñ\".\"Eventos \"\"raros\"\"\" OWNER TO {quoted};
             INSERT INTO \"Tienda Ñ\".\"Eventos \"\"raros\"\"\" (\"Creado\", n)
             SELECT now() - i * interval '1 day', i FROM generate_series(0, 600, 10) i"
        ));
        let table = "'\"Tienda Ñ\".\"Eventos \"\"raros\"\"\"'";
        // a hypertable in place (this transaction), its chunks, their maintenance and retention
        let converted: bool = scalar(&format!(
            "SELECT created FROM analytics.create_hypertable({table}, 'Creado', chunk_time_interval => interval '30 days',
                                                             migrate_data => true, extend_unique => true, online => false)"
        ))
        .unwrap();
        assert!(converted);
        let chunk_owners = strings(&format!(
            "SELECT DISTINCT pg_get_userbyid(c.relowner)::text FROM analytics.chunks k JOIN pg_class c ON c.oid = k.chunk
             WHERE k.hypertable_id = (SELECT hypertable_id FROM analytics.hypertables WHERE relation = {table}::regclass)"
        ));
        assert_eq!(chunk_owners, BTreeSet::from([owner.to_string()]));
        assert_eq!(
            scalar::<String>(&format!("SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = {table}::regclass")).as_deref(),
            Some(owner)
        );
        run(&format!("SELECT analytics.add_retention_policy({table}, interval '400 days')"));
        for policy in ["policy_chunk_maintenance", "policy_retention"] {
            let job: i32 = scalar(&format!(
                "SELECT job_id FROM analytics.jobs WHERE hypertable = {table}::regclass
                 AND proc = 'analytics_internal.{policy}'::regproc"
            ))
            .unwrap();
            run(&format!("CALL analytics.run_job({job})"));
        }
        let oldest: Option<i64> = scalar(&format!(
            "SELECT count(*) FROM \"Tienda Ñ\".\"Eventos \"\"raros\"\"\" WHERE \"Creado\" < now() - interval '430 days'"
        ));
        assert_eq!(oldest, Some(0), "retention dropped the old chunks");
        // compression of that table, by its policy's job and by hand
        let rows_before: Option<i64> = scalar(&format!("SELECT count(*) FROM {}", table.trim_matches('\'')));
        let compressing_job: i32 = scalar(&format!("SELECT analytics.add_compression_policy({table}, interval '40 days')")).unwrap();
        run(&format!("CALL analytics.run_job({compressing_job})"));
        let compressed: Option<i64> = scalar(&format!(
            "SELECT count(*) FROM analytics.compression_stats({table}) WHERE status = 'compressed' AND after_compressed > 0"
        ));
        assert_eq!(compressed, Some(1), "the policy compresses one chunk a run");
        run(&format!(
            "SELECT analytics.compress_chunk(chunk) FROM analytics.compression_stats({table}) WHERE status = 'uncompressed' LIMIT 2"
        ));
        assert_eq!(scalar::<i64>(&format!("SELECT count(*) FROM {}", table.trim_matches('\''))), rows_before);
        run(&format!("SELECT analytics.decompress_chunk(chunk) FROM analytics.compression_stats({table}) WHERE status <> 'uncompressed'"));
        assert_eq!(scalar::<i64>(&format!("SELECT count(*) FROM {}", table.trim_matches('\''))), rows_before);
        run(&format!("SELECT analytics.remove_compression_policy({table})"));
        run(&format!("SELECT analytics.drop_chunks({table}, older_than => now() - interval '300 days')"));
        // LA-CAJA's views replaced and restored, owner and grants kept
        let installed: pgrx::JsonB = scalar("SELECT analytics.install_compat(replace_public => true)").unwrap();
        assert!(installed.0.to_string().contains("mv_sales_daily"), "{}", installed.0);
        assert_eq!(
            scalar::<String>("SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'pos.mv_sales_daily'::regclass").as_deref(),
            Some(owner)
        );
        // LA-CAJA's own role calls its refresh function, now ours, with no grant on analytics
        run(&format!("GRANT USAGE ON SCHEMA pos TO {quoted}; SET LOCAL ROLE {quoted}"));
        run("SELECT pos.refresh_analytics_views()");
        run("RESET ROLE");
        run("SELECT analytics.uninstall_compat()");
        // the indexes plan names the tables once quoted
        run("SELECT analytics.create_recommended_indexes(dry_run => true)");
        // jobs owned by such a role
        run(&format!("GRANT USAGE ON SCHEMA analytics TO {quoted}; CREATE SCHEMA odd AUTHORIZATION {quoted}"));
        run(&format!("SET LOCAL ROLE {quoted}"));
        run("CREATE TABLE odd.ran (by_role name);
             CREATE PROCEDURE odd.\"Job Name\"(job_id int, config jsonb) LANGUAGE plpgsql AS $$ BEGIN
                 INSERT INTO odd.ran VALUES (current_user); END $$");
        let job: i32 = scalar("SELECT analytics.add_job('odd.\"Job Name\"'::regproc, interval '1 hour')").unwrap();
        run(&format!("CALL analytics.run_job({job})"));
        run("RESET ROLE");
        assert_eq!(
            scalar::<String>(&format!("SELECT last_run_status FROM analytics.job_stats WHERE job_id = {job}")).as_deref(),
            Some("Success")
        );
        assert_eq!(scalar::<String>("SELECT by_role::text FROM odd.ran").as_deref(), Some(owner));
        // the warehouse over tables of that owner
        run("SELECT analytics.enable_warehouse()");
        run("SELECT analytics.etl_load_sales()");
        assert!(scalar::<i64>("SELECT count(*) FROM analytics.fact_sales").unwrap() > 0);
    }

    // Store isolation -----------------------------------------------------------------------

    #[pg_test]
    fn store_scoped_roles_read_only_their_store_through_every_view_and_function() {
        compat_history();
        outcome_helper();
        run(&sale(900, STORE_B, "2026-03-01 10:15:00-04", "77.00", "CASH_BS", None));
        run("CREATE TABLE public.role_stores (role_name name, store_id uuid)");
        run(&format!(
            "CREATE ROLE lacaja_store_a NOLOGIN; CREATE ROLE lacaja_store_b NOLOGIN;
             INSERT INTO public.role_stores VALUES ('lacaja_store_a', '{STORE_A}'), ('lacaja_store_b', '{STORE_B}');
             GRANT USAGE ON SCHEMA analytics TO lacaja_store_a, lacaja_store_b;
             GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO lacaja_store_a, lacaja_store_b;
             GRANT SELECT ON public.role_stores TO lacaja_store_a, lacaja_store_b;
             CREATE FUNCTION public.may_see_store(store_id uuid) RETURNS boolean LANGUAGE sql STABLE AS
                 $$ SELECT EXISTS (SELECT 1 FROM public.role_stores r WHERE r.role_name = current_user AND r.store_id = $1) $$;"
        ));
        run("SELECT analytics.refresh_all()");
        run("SELECT analytics.enable_warehouse()");
        run("SELECT analytics.etl_load_sales()");
        let own_lines = |store: &str| -> i64 {
            scalar(&format!(
                "SELECT count(*) FROM analytics.report_lines(NULL, NULL, NULL) l
                 WHERE l.sale_id IN (SELECT id FROM pos.sales WHERE store_id = '{store}')"
            ))
            .unwrap()
        };
        let lines = [own_lines(STORE_A), own_lines(STORE_B)];
        assert!(lines[0] > 0);
        let views = strings(
            "SELECT c.oid::regclass::text FROM pg_class c
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'store_id'
             WHERE c.relnamespace = 'analytics'::regnamespace AND c.relkind IN ('v', 'r')",
        );
        // a drift in each store (movements without a warehouse)
        run(&format!(
            "INSERT INTO pos.inventory_movements (id, store_id, product_id, movement_type, qty_delta)
             SELECT gen_random_uuid(), s.id, (SELECT min(id::text)::uuid FROM pos.products), 'adjust', 1
             FROM (VALUES ('{STORE_A}'::uuid), ('{STORE_B}')) AS s (id)"
        ));
        assert_eq!(scalar::<i64>("SELECT count(DISTINCT store_id) FROM analytics.stock_drift()"), Some(2));
        let store_functions = [
            "SELECT store_id FROM analytics.inventory_metrics_of(NULL)",
            "SELECT store_id FROM analytics.current_metrics()",
            "SELECT store_id FROM analytics.stock_drift()",
        ];
        let one_store_calls = [
            "SELECT 1 FROM analytics.kpis('{store}')",
            "SELECT 1 FROM analytics.sales_by_day('{store}', current_date - 400, current_date)",
            "SELECT 1 FROM analytics.top_products('{store}')",
            "SELECT 1 FROM analytics.heatmap('{store}', current_date - 400, current_date)",
            "SELECT 1 FROM analytics.stock_drift('{store}')",
        ];
        // Off: both roles see both stores.
        run("SET LOCAL ROLE lacaja_store_a");
        let seen: i64 = scalar("SELECT count(DISTINCT store_id) FROM analytics.sales_daily").unwrap();
        assert_eq!(seen, 2);
        run("RESET ROLE");
        run("SELECT analytics.enable_store_isolation('public.may_see_store(uuid)')");
        // A reader's own operators, first on its search_path, never run inside the extension's
        // lookups (which run as the owner).
        run("CREATE SCHEMA trap; GRANT USAGE, CREATE ON SCHEMA trap TO lacaja_store_a;
             SET LOCAL ROLE lacaja_store_a;
             CREATE FUNCTION trap.hijack(oid, regprocedure) RETURNS boolean LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
             CREATE OPERATOR trap.= (LEFTARG = oid, RIGHTARG = regprocedure, FUNCTION = trap.hijack);
             CREATE FUNCTION trap.hijack_oid(oid, oid) RETURNS boolean LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
             CREATE OPERATOR trap.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = trap.hijack_oid);
             SET LOCAL search_path = trap, pg_catalog, public;");
        let hijacked: i64 = scalar("SELECT count(*) FROM analytics.sales_daily").unwrap();
        assert!(hijacked > 0);
        run("RESET ROLE; SET LOCAL search_path = pos, public");
        for (role, own, other, own_lines) in [("lacaja_store_a", STORE_A, STORE_B, lines[0]), ("lacaja_store_b", STORE_B, STORE_A, lines[1])] {
            run(&format!("SET LOCAL ROLE {role}"));
            for view in &views {
                let foreign: i64 = scalar(&format!("SELECT count(*) FROM {view} WHERE store_id <> '{own}'")).unwrap();
                assert_eq!(foreign, 0, "{role} reads another store through {view}");
            }
            let own_rows: i64 = scalar(&format!("SELECT count(*) FROM analytics.sales_daily WHERE store_id = '{own}'")).unwrap();
            assert!(own_rows > 0, "{role} must still see its own store");
            for call in &store_functions {
                let foreign: i64 = scalar(&format!("SELECT count(*) FROM ({call}) f WHERE store_id <> '{own}'")).unwrap();
                assert_eq!(foreign, 0, "{role}: {call}");
            }
            for call in one_store_calls {
                run(&call.replace("{store}", own));
                assert_fails(&call.replace("{store}", other), "42501");
            }
            let visible_lines: i64 = scalar("SELECT count(*) FROM analytics.report_lines(NULL, NULL, NULL)").unwrap();
            assert_eq!(visible_lines, own_lines, "{role} reads another store's facts");
            run("RESET ROLE");
        }
        // The owner (the capture path) is not filtered; off again, everyone sees everything.
        let all: i64 = scalar("SELECT count(DISTINCT store_id) FROM analytics.sales_daily").unwrap();
        assert_eq!(all, 2);
        run("SELECT analytics.disable_store_isolation()");
        run("SET LOCAL ROLE lacaja_store_b");
        assert_eq!(scalar::<i64>("SELECT count(DISTINCT store_id) FROM analytics.sales_daily"), Some(2));
        run("RESET ROLE");
    }

}
