//! lacaja_analytics: LA-CAJA's analytics layer inside PostgreSQL.
//!
//! Each capability keeps its SQL objects in `sql/<capability>.sql` (rollups, products,
//! dashboard, compat, indexes; install.sql runs last) and its Rust, where it has any, in a module of that name.

use pgrx::prelude::*;

mod anomaly;
mod capture;
mod compression;
mod forecast;
mod guc;
mod hypertable;
mod indexes;
mod jobs;
mod rollups;
mod security;
mod streaming;
mod time_bucket;

::pgrx::pg_module_magic!(name, version);

// Helpers live in their own schema, which only the extension's owner may use: `analytics`
// holds the documented API alone (docs/api.md, docs/security.md; sql/security.sql revokes).
#[pg_schema]
mod analytics_internal {}

pgrx::extension_sql_file!(
    "../sql/security.sql",
    name = "security",
    requires = [
        security::_store_visible,
        security::_store_visible_to,
        security::_caller_token,
        security::_redeem_caller
    ]
);
pgrx::extension_sql_file!(
    "../sql/rollups.sql",
    name = "rollups",
    requires = [
        "security",
        capture::capture_discard,
        capture::capture_changed_sales,
        capture::triggers::analytics_internal::_capture_sales,
        capture::triggers::analytics_internal::_capture_items,
        capture::triggers::analytics_internal::_capture_item_returns,
        capture::triggers::analytics_internal::_capture_stock,
        rollups::parse_amount,
        rollups::largest_scale,
        rollups::backend_shard,
        rollups::default_timezone,
        rollups::configured_source_schema,
        rollups::is_valid_timezone,
        rollups::bind_trigger_to_extension
    ]
);
pgrx::extension_sql_file!("../sql/products.sql", name = "products", requires = ["rollups"]);
pgrx::extension_sql_file!("../sql/dashboard.sql", name = "dashboard", requires = ["products"]);
pgrx::extension_sql_file!("../sql/compat.sql", name = "compat", requires = ["dashboard"]);
pgrx::extension_sql_file!(
    "../sql/indexes.sql",
    name = "indexes",
    requires = ["rollups", indexes::_start_index_builder]
);
pgrx::extension_sql_file!(
    "../sql/jobs.sql",
    name = "jobs",
    requires = ["rollups", security::_call_as, security::_execute_as]
);
pgrx::extension_sql_file!(
    "../sql/timeseries.sql",
    name = "timeseries",
    requires = [
        "jobs",
        time_bucket::time_bucket_timestamp,
        time_bucket::time_bucket_timestamptz,
        time_bucket::time_bucket_date,
        hypertable::_in_transaction_block,
        hypertable::_start_conversion_worker
    ]
);
pgrx::extension_sql_file!("../sql/anomalies.sql", name = "anomalies", requires = ["timeseries", anomaly::_anomaly_verdicts]);
pgrx::extension_sql_file!("../sql/warehouse.sql", name = "warehouse", requires = ["anomalies"]);
pgrx::extension_sql_file!("../sql/health.sql", name = "health", requires = ["timeseries", "indexes"]);
pgrx::extension_sql_file!("../sql/restore.sql", name = "restore", requires = ["health", "warehouse"]);
pgrx::extension_sql_file!(
    "../sql/compression.sql",
    name = "compression",
    requires = ["timeseries", compression::chunks::_compress_chunk_rows, compression::chunks::_decompress_chunk_rows]
);
pgrx::extension_sql_file!(
    "../sql/streaming.sql",
    name = "streaming",
    requires = ["rollups", "timeseries", streaming::streaming_enabled]
);
pgrx::extension_sql_file!("../sql/install.sql", name = "install", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    capture::init();
    compression::init();
    streaming::init();
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        jobs::register_scheduler();
        streaming::register_publisher();
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;
#[cfg(any(test, feature = "pg_test"))]
mod security_tests;
#[cfg(any(test, feature = "pg_test"))]
mod unique_registry_tests;
#[cfg(any(test, feature = "pg_test"))]
mod health_tests;
#[cfg(any(test, feature = "pg_test"))]
mod restore_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'lacaja_analytics'"]
    }
}
