//! In-transaction tests of analytics.health() (sql/health.sql): each check says ok when all is
//! well, and each problem is reported with its hint.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::tests::{lacaja_pos, run, sale, scalar, STORE_A};
    use pgrx::prelude::*;

    /// (status, detail, hint) of the first row of `check`, or None.
    fn check(name: &str) -> Option<(String, String, String)> {
        let row: Option<String> = scalar(&format!(
            "SELECT (SELECT status || E'\\x1f' || detail || E'\\x1f' || coalesce(hint, '') FROM analytics.health()
                     WHERE check_name = '{name}' LIMIT 1)"
        ));
        row.map(|r| {
            let parts: Vec<&str> = r.split('\u{1f}').collect();
            (parts[0].to_string(), parts[1].to_string(), parts[2].to_string())
        })
    }

    #[pg_test]
    fn capture_is_reported_attached_disabled_or_missing() {
        lacaja_pos();
        let (status, detail, _) = check("capture").unwrap();
        assert_eq!(status, "ok", "{detail}");
        assert!(detail.contains("attached to schema pos") && detail.contains("24 capture triggers"), "{detail}");

        run("ALTER TABLE pos.sales DISABLE TRIGGER lacaja_analytics_sales_insert");
        let (status, detail, hint) = check("capture").unwrap();
        assert_eq!(status, "problem");
        assert!(detail.contains("pos.sales.lacaja_analytics_sales_insert") && hint.contains("refresh_all"), "{detail} / {hint}");
        run("ALTER TABLE pos.sales ENABLE TRIGGER lacaja_analytics_sales_insert");

        run("DROP TRIGGER lacaja_analytics_items_insert ON pos.sale_items");
        let (status, detail, hint) = check("capture").unwrap();
        assert_eq!(status, "problem");
        assert!(detail.contains("missing") && detail.contains("lacaja_analytics_items_insert"), "{detail}");
        assert!(hint.contains("analytics.attach('pos')"), "{hint}");

        run("SELECT analytics.detach()");
        let (status, detail, hint) = check("capture").unwrap();
        assert_eq!(status, "problem");
        assert!(detail.contains("not attached") && hint.contains("attach"), "{detail} / {hint}");
    }

    #[pg_test]
    fn a_library_newer_than_the_sql_is_reported_with_the_update_to_run() {
        lacaja_pos();
        let (status, detail, _) = check("version").unwrap();
        assert_eq!((status.as_str(), detail), ("ok", format!("lacaja_analytics {}", env!("CARGO_PKG_VERSION"))));
        // What a database still at the previous release's SQL says after the new library loads.
        run("UPDATE pg_extension SET extversion = '0.1.0' WHERE extname = 'lacaja_analytics'");
        let (status, detail, hint) = check("version").unwrap();
        assert_eq!(status, "problem");
        assert!(detail.contains(&format!("{} library on this database's 0.1.0 SQL", env!("CARGO_PKG_VERSION"))), "{detail}");
        assert!(hint.starts_with("ALTER EXTENSION lacaja_analytics UPDATE"), "{hint}");
    }

    #[pg_test]
    fn the_last_comparison_with_the_source_and_its_corrections_are_reported() {
        lacaja_pos();
        let (status, detail, _) = check("rollups checked").unwrap();
        assert_eq!((status.as_str(), detail.contains("never")), ("notice", true), "{detail}");
        run("SELECT analytics.refresh_all()");
        let (status, detail, _) = check("rollups checked").unwrap();
        assert_eq!(status, "ok", "{detail}");
        assert!(detail.contains("every store") && detail.contains(": 0 keys corrected"), "{detail}");
        // A write the capture missed (a restore with triggers off): the next repair corrects it.
        run("SET LOCAL session_replication_role = replica");
        run(&sale(1, STORE_A, "2026-03-02 15:00+00", "10.00", "CASH_BS", None));
        run("SET LOCAL session_replication_role = origin");
        run(&format!("SELECT analytics.refresh_store('{STORE_A}')"));
        let (status, detail, hint) = check("rollups checked").unwrap();
        assert_eq!(status, "notice", "{detail}");
        assert!(detail.contains(&format!("store {STORE_A}")) && !detail.contains(": 0 keys"), "{detail}");
        assert!(hint.contains("session_replication_role"), "{hint}");
    }

    #[pg_test]
    fn failing_jobs_ingest_errors_and_failed_index_builds_are_reported() {
        lacaja_pos();
        run("CREATE PROCEDURE pos.broken_job(job_id int, config jsonb) LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'the warehouse disk is full'; END $$");
        let job: i32 = scalar("SELECT analytics.add_job('pos.broken_job', interval '1 hour')").unwrap();
        run("UPDATE analytics.jobs SET next_start = now() - interval '1 second' WHERE job_id >= 1000");
        run("SELECT analytics.run_pending_jobs()");
        let (status, detail, hint) = check(&format!("job {job}")).unwrap();
        assert_eq!(status, "problem");
        assert!(detail.contains("the warehouse disk is full"), "{detail}");
        assert!(hint.contains(&format!("job_id = {job}")) && hint.contains("run_job"), "{hint}");
        // No scheduler for this database in the test cluster: jobs wait for run_pending_jobs().
        let (status, _, hint) = check("scheduler").unwrap();
        assert_eq!(status, "notice");
        assert!(hint.contains("lacaja_analytics.database"), "{hint}");

        assert_eq!(check("ingest errors"), None, "nothing to say when there is nothing");
        run(&format!(
            "INSERT INTO pos.sales (id, store_id, sold_at, totals, payment)
             VALUES (gen_random_uuid(), '{STORE_A}', '2026-03-02 16:00+00', '{{\"total_bs\": \"abc\"}}', '{{\"method\": \"CASH_BS\"}}')"
        ));
        let (status, detail, hint) = check("ingest errors").unwrap();
        assert_eq!(status, "notice");
        assert!(detail.contains("could not be read and counted as 0") && detail.ends_with("in the last day"), "{detail}");
        assert!(hint.contains("analytics.ingest_errors"), "{hint}");

        run("INSERT INTO analytics.index_builds (table_name, index_name, statement, status, error)
             VALUES ('pos.sales', 'lacaja_sales_totals_gin', 'CREATE INDEX CONCURRENTLY …', 'failed', 'could not extend file')");
        let (status, detail, hint) = check("index builds").unwrap();
        assert_eq!(status, "problem");
        assert!(detail.contains("lacaja_sales_totals_gin (could not extend file)"), "{detail}");
        assert!(hint.contains("create_recommended_indexes"), "{hint}");
    }
}
