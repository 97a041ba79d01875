//! analytics.create_recommended_indexes() on a real server: the background worker builds the
//! queued indexes CONCURRENTLY while sales keep committing, records failures, and a second
//! call finds everything in place.

mod common;

#[test]
fn recommended_indexes_are_built_concurrently_by_a_worker() {
    let database = "lacaja_test_indexes";
    let mut db = common::lacaja_database(database);
    let store = common::STORES[0].0;
    db.batch_execute(&format!(
        "INSERT INTO sales (id, store_id, sold_at, totals, payment)
         SELECT gen_random_uuid(), '{store}', now() - i * interval '1 minute',
                jsonb_build_object('total_bs', i, 'total_usd', i / 36.5), '{{\"method\": \"CASH_BS\"}}'
         FROM generate_series(1, 20000) i;
         CREATE INDEX my_own_name ON sales USING gin (payment jsonb_path_ops);"
    ))
    .unwrap();

    let plan: Vec<(String, String)> = db
        .query("SELECT index_name, action FROM analytics.create_recommended_indexes()", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let action = |plan: &[(String, String)], name: &str| plan.iter().find(|(n, _)| n == name).unwrap().1.clone();
    // The same shape under another name counts: the DBA's own, or one of LA-CAJA's 18.
    assert_eq!(action(&plan, "lacaja_sales_payment_gin"), "exists as my_own_name", "{plan:?}");
    assert_eq!(action(&plan, "lacaja_sales_store_sold_at"), "exists as idx_sales_store_date_status_hypertable", "{plan:?}");
    assert_eq!(action(&plan, "lacaja_sales_totals_gin"), "create");
    let built_before: i64 = db
        .query_one("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'lacaja\\_%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(built_before, 0, "a dry run builds nothing");

    // Sales keep committing while the worker builds.
    let seller = std::thread::spawn(move || {
        let mut pos = common::connect(database);
        for i in 0..200 {
            pos.execute(
                &format!(
                    "INSERT INTO sales (id, store_id, sold_at, totals, payment)
                     VALUES (gen_random_uuid(), '{store}', now(), '{{\"total_bs\": {i}, \"total_usd\": 1}}', '{{\"method\": \"CASH_USD\"}}')"
                ),
                &[],
            )
            .unwrap();
        }
    });
    let queued: i64 = db
        .query_one(
            "SELECT count(*) FROM analytics.create_recommended_indexes(dry_run => false) WHERE action LIKE 'queued%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(queued >= 10, "queued {queued} builds");
    common::wait_for_index_builds(&mut db);
    seller.join().unwrap();

    let failed: Vec<String> = db
        .query("SELECT index_name || ': ' || error FROM analytics.index_builds WHERE status <> 'built'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let invalid: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE c.relname LIKE 'lacaja\\_%' AND NOT i.indisvalid",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(invalid, 0);
    let again: i64 = db
        .query_one(
            "SELECT count(*) FROM analytics.create_recommended_indexes() WHERE action IN ('create', 'rebuild: an interrupted build left it invalid')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(again, 0, "everything recommended now exists");

    // A build that fails is recorded with its error, and the worker goes on with the next.
    // (Statements name their tables in full: the builder's session pins search_path.)
    db.batch_execute(
        "INSERT INTO analytics.index_builds (table_name, index_name, statement) VALUES
             ('sales', 'broken', 'CREATE INDEX CONCURRENTLY broken ON public.sales (no_such_column)'),
             ('sales', 'after_broken', 'CREATE INDEX CONCURRENTLY after_broken ON public.sales (sold_at)');
         SELECT analytics_internal._start_index_builder();",
    )
    .unwrap();
    common::wait_for_index_builds(&mut db);
    let outcome: Vec<(String, String, Option<String>)> = db
        .query("SELECT index_name, status, error FROM analytics.index_builds WHERE index_name IN ('broken', 'after_broken') ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(outcome[0].1, "failed", "{outcome:?}");
    assert!(outcome[0].2.as_deref().unwrap_or("").contains("no_such_column"), "{outcome:?}");
    assert_eq!(outcome[1].1, "built", "{outcome:?}");
}
