//! In-transaction tests of the capture: the SQL that attach() generates for it, kept under
//! test as expected files (what a commit really runs, for a reviewer to read).

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::tests::{lacaja_pos, scalar};
    use pgrx::prelude::*;

    /// `tests/expected/<name>.sql`: `pg_get_functiondef()` of the generated function after
    /// attaching to the fixture in schema `pos`. When a change of the generator is intended,
    /// replace the file with the text this test prints.
    #[pg_test]
    fn generated_fold_functions_are_the_expected_ones() {
        lacaja_pos();
        for (function, expected) in [
            ("_fold_rows", include_str!("../../tests/expected/fold_rows.sql")),
            ("_fold_items", include_str!("../../tests/expected/fold_items.sql")),
            // not the capture's, but generated from the same catalog by attach()
            ("_stock_drift", include_str!("../../tests/expected/stock_drift.sql")),
        ] {
            let actual: String =
                scalar(&format!("SELECT pg_get_functiondef('analytics_internal.{function}'::regproc)")).unwrap();
            assert!(
                actual.trim_end() == expected.trim_end(),
                "analytics_internal.{function} differs from tests/expected; it is now:\n{actual}"
            );
        }
    }

    /// Rows captured in a statement reach the rollups only when the transaction (here: the
    /// level) folds them, and a rolled-back savepoint takes its rows with it.
    #[pg_test]
    fn captured_rows_wait_for_the_fold_and_leave_with_their_savepoint() {
        lacaja_pos();
        let store = crate::pg_tests::tests::STORE_A;
        Spi::run(&crate::pg_tests::tests::sale(1, store, "2026-03-02 15:00+00", "10.00", "CASH_BS", None)).unwrap();
        let before: i64 = Spi::get_one("SELECT count(*) FROM analytics_internal.sales_daily_parts").unwrap().unwrap();
        assert_eq!(before, 0, "nothing is written per statement");
        // SAVEPOINT s; <a sale>; ROLLBACK TO SAVEPOINT s — as PL/pgSQL does it.
        unsafe {
            let (context, owner) = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            pg_sys::MemoryContextSwitchTo(context);
            Spi::run(&crate::pg_tests::tests::sale(2, store, "2026-03-02 16:00+00", "20.00", "CASH_BS", None)).unwrap();
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        }
        crate::capture::fold_current_level();
        let total: String =
            Spi::get_one("SELECT sum(total_bs)::text FROM analytics.sales_daily").unwrap().unwrap();
        assert_eq!(total, "10.00");
    }
}
