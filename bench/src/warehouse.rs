//! `scripts/bench.sh --warehouse N`: the warehouse's ETL and reports against their baselines.
//!
//! Builds `lacaja_bench_warehouse`: the benchmark history (bench/dataset.sql) of N sales
//! loaded with the extension detached and backfilled by `refresh_all()`. Then, all in the
//! same run:
//! - the initial `etl_load_sales()` against one plain `CREATE TABLE AS` of the same facts;
//! - 10,000 newer sales written through the triggers in batches of 100, every other batch with
//!   the warehouse's capture off (the cost of capture), then the incremental run that loads them;
//! - the four reports for one store's whole history against the same questions over
//!   LA-CAJA's tables, and the category × month report for every store over a year;
//! - the facts against their definition (differences must be 0).

use super::{fresh_lacaja_database, ms, progress, spread, thousands};
use postgres::Client;
use std::fmt::Write as _;
use std::time::Instant;

const DATABASE: &str = "lacaja_bench_warehouse";
pub const BEGIN: &str = "<!-- warehouse benchmark: scripts/bench.sh --warehouse N -->";
pub const END: &str = "<!-- end of warehouse benchmark -->";
const NEW_SALES: u64 = 10_000;
const WAREHOUSE_ORACLE: &str = include_str!("../../tests/sql/warehouse_oracle.sql");

/// The same facts as the ETL's, with one plain statement over the source tables: what a
/// nightly full rebuild would compute (captured costs from the item facts, the product
/// version valid at the time of sale).
const PLAIN_FACTS: &str = "
CREATE TABLE bench_plain_facts AS
SELECT i.id AS sale_item_id, i.sale_id, s.store_id, s.customer_id, i.product_id, v.product_key,
       (s.sold_at AT TIME ZONE z.zone)::date AS sale_date, (s.sold_at AT TIME ZONE z.zone)::time AS sale_time, s.sold_at,
       coalesce(nullif(s.payment ->> 'method', ''), 'UNKNOWN') AS payment_method, s.exchange_rate, i.is_weight_product,
       s.voided_at IS NOT NULL AS is_voided, i.qty, i.unit_price_bs * i.qty - i.discount_bs AS amount_bs,
       i.unit_price_usd * i.qty - i.discount_usd AS amount_usd, c.unit_cost_bs, c.unit_cost_usd,
       coalesce(r.qty, 0) AS returned_qty, coalesce(r.total_bs, 0) AS returned_bs, coalesce(r.total_usd, 0) AS returned_usd
FROM sales s
JOIN sale_items i ON i.sale_id = s.id
JOIN bench_stores z0 ON z0.id = s.store_id
CROSS JOIN LATERAL (SELECT z0.tz AS zone) z
LEFT JOIN analytics_internal.item_facts c ON c.sale_item_id = i.id
LEFT JOIN (SELECT x.sale_item_id, sum(x.qty) AS qty, sum(x.total_bs) AS total_bs, sum(x.total_usd) AS total_usd
           FROM sale_return_items x GROUP BY 1) r ON r.sale_item_id = i.id
LEFT JOIN analytics.dim_product v ON v.product_id = i.product_id AND v.valid_from <= s.sold_at AND s.sold_at < v.valid_to";

/// (report, ours, the same question over LA-CAJA's tables); $1 store, $2 its zone.
const REPORTS: [(&str, &str, &str); 4] = [
    (
        "sales and margin by category × month",
        "SELECT * FROM analytics.report_sales_by_category_month($1)",
        "SELECT date_trunc('month', s.sold_at AT TIME ZONE $2)::date, p.category, count(DISTINCT s.id),
                sum(i.qty - coalesce(r.qty, 0)), sum(i.unit_price_bs * i.qty - i.discount_bs - coalesce(r.total_bs, 0)),
                sum(i.unit_price_usd * i.qty - i.discount_usd - coalesce(r.total_usd, 0)),
                sum((i.qty - coalesce(r.qty, 0)) * p.cost_bs), sum((i.qty - coalesce(r.qty, 0)) * p.cost_usd)
         FROM sales s JOIN sale_items i ON i.sale_id = s.id JOIN products p ON p.id = i.product_id
         LEFT JOIN LATERAL (SELECT sum(x.qty) AS qty, sum(x.total_bs) AS total_bs, sum(x.total_usd) AS total_usd
                            FROM sale_return_items x WHERE x.sale_item_id = i.id) r ON true
         WHERE s.store_id = $1 AND s.voided_at IS NULL GROUP BY 1, 2",
    ),
    (
        "by weekday × hour",
        "SELECT * FROM analytics.report_sales_by_weekday_hour($1)",
        "SELECT extract(dow FROM s.sold_at AT TIME ZONE $2)::int, extract(hour FROM s.sold_at AT TIME ZONE $2)::int,
                count(DISTINCT s.id), sum(i.qty - coalesce(r.qty, 0)),
                sum(i.unit_price_bs * i.qty - i.discount_bs - coalesce(r.total_bs, 0))
         FROM sales s JOIN sale_items i ON i.sale_id = s.id
         LEFT JOIN LATERAL (SELECT sum(x.qty) AS qty, sum(x.total_bs) AS total_bs
                            FROM sale_return_items x WHERE x.sale_item_id = i.id) r ON true
         WHERE s.store_id = $1 AND s.voided_at IS NULL GROUP BY 1, 2",
    ),
    (
        "by payment method × month",
        "SELECT * FROM analytics.report_sales_by_payment_month($1)",
        "SELECT date_trunc('month', s.sold_at AT TIME ZONE $2)::date, coalesce(nullif(s.payment ->> 'method', ''), 'UNKNOWN'),
                count(DISTINCT s.id), sum(i.unit_price_bs * i.qty - i.discount_bs - coalesce(r.total_bs, 0))
         FROM sales s JOIN sale_items i ON i.sale_id = s.id
         LEFT JOIN LATERAL (SELECT sum(x.total_bs) AS total_bs FROM sale_return_items x WHERE x.sale_item_id = i.id) r ON true
         WHERE s.store_id = $1 AND s.voided_at IS NULL GROUP BY 1, 2",
    ),
    (
        "product ABC analysis",
        "SELECT * FROM analytics.report_product_abc($1)",
        "SELECT product_id, revenue, sum(revenue) OVER (ORDER BY revenue DESC, product_id) / sum(revenue) OVER ()
         FROM (SELECT i.product_id, sum(i.unit_price_bs * i.qty - i.discount_bs - coalesce(r.total_bs, 0)) AS revenue
               FROM sales s JOIN sale_items i ON i.sale_id = s.id
               LEFT JOIN LATERAL (SELECT sum(x.total_bs) AS total_bs FROM sale_return_items x WHERE x.sale_item_id = i.id) r ON true
               WHERE s.store_id = $1 AND s.voided_at IS NULL GROUP BY 1) p",
    ),
];

fn q(db: &mut Client, sql: &str) {
    db.batch_execute(sql).unwrap_or_else(|e| panic!("{e}\n---\n{sql}"));
}

fn timed(db: &mut Client, sql: &str) -> f64 {
    let started = Instant::now();
    q(db, sql);
    ms(started.elapsed())
}

fn text(db: &mut Client, sql: &str) -> String {
    db.query_one(sql, &[]).unwrap_or_else(|e| panic!("{e}\n---\n{sql}")).get(0)
}

fn dataset(from: u64, to: u64, total: u64, stores: u64, days: u64) -> String {
    super::DATASET
        .replace(":total", &total.to_string())
        .replace(":from", &from.to_string())
        .replace(":to", &to.to_string())
        .replace(":days", &days.to_string())
        .replace(":stores", &stores.to_string())
}

/// Turns the warehouse's capture triggers off or on (the rollups' stay on).
fn warehouse_capture(db: &mut Client, on: bool) {
    q(
        db,
        &format!(
            "DO $$ DECLARE t record; BEGIN
                 FOR t IN SELECT tgname, tgrelid::regclass AS rel FROM pg_trigger
                          WHERE tgname LIKE 'lacaja\\_analytics\\_warehouse\\_%' AND NOT tgisinternal LOOP
                     EXECUTE format('ALTER TABLE %s {} TRIGGER %I', t.rel, t.tgname);
                 END LOOP;
             END $$",
            if on { "ENABLE" } else { "DISABLE" }
        ),
    );
}

/// Sales from..=to through the triggers, in POS-sized transactions of 100 sales with their
/// items, returns and events, alternating batches with the warehouse's capture on and off
/// (so that background work after the big load weighs on both alike). The ids of the sales
/// written with capture off are logged afterwards, as capture would have, so the warehouse
/// stays exact. Returns (ms with capture on, ms with it off).
fn write_recent(db: &mut Client, from: u64, to: u64, total: u64, stores: u64, days: u64) -> (f64, f64) {
    let (mut with_ms, mut without_ms) = (0.0, 0.0);
    let mut at = from;
    let mut on = true;
    while at <= to {
        let end = (at + 99).min(to);
        warehouse_capture(db, on);
        let started = Instant::now();
        q(db, &dataset(at, end, total, stores, days));
        let took = ms(started.elapsed());
        if on {
            with_ms += took;
        } else {
            without_ms += took;
            q(db, &format!("INSERT INTO analytics_internal.warehouse_changes (sale_id) SELECT md5('sale' || i)::uuid FROM generate_series({at}, {end}) i"));
        }
        on = !on;
        at = end + 1;
    }
    warehouse_capture(db, true);
    (with_ms, without_ms)
}

pub fn run(server: &str, sales: u64, stores: u64, days: u64, runs: u64, command: &str, output: &str) {
    let started = Instant::now();
    let mut db = fresh_lacaja_database(server, DATABASE);
    q(&mut db, &super::DATASET_SETUP.replace(":stores", &stores.to_string()));
    q(&mut db, "SELECT analytics.set_store_timezone(id, tz) FROM bench_stores");
    q(&mut db, super::QUESTIONS);
    // Sales are numbered from now backwards: 1..10,000 are the newest, written last through
    // the triggers; the rest are the history.
    let total = sales + NEW_SALES;
    eprintln!("==> database {DATABASE}: {stores} stores, {days} days, {} sales", thousands(total));
    q(&mut db, "SELECT analytics.detach()");
    let batch = (sales / 40).clamp(10_000, 250_000);
    let load_started = Instant::now();
    let mut from = NEW_SALES + 1;
    while from <= total {
        let to = (from + batch - 1).min(total);
        q(&mut db, &dataset(from, to, total, stores, days));
        progress("sales", to - NEW_SALES, total - NEW_SALES, load_started);
        from = to + 1;
    }
    eprintln!();
    let load_s = load_started.elapsed().as_secs_f64();
    eprintln!("==> attach and refresh_all() (captures item costs)");
    q(&mut db, "SELECT analytics.attach('public')");
    let backfill_s = timed(&mut db, "SELECT analytics.refresh_all()") / 1000.0;
    q(&mut db, "VACUUM ANALYZE");

    eprintln!("==> enable_warehouse() and the initial etl_load_sales()");
    q(&mut db, "SELECT analytics.enable_warehouse(NULL)");
    let initial_started = Instant::now();
    let initial = text(&mut db, "SELECT analytics.etl_load_sales()::text");
    let initial_ms = ms(initial_started.elapsed());
    let facts: i64 = db.query_one("SELECT count(*) FROM analytics.fact_sales", &[]).unwrap().get(0);
    q(&mut db, "VACUUM ANALYZE analytics.fact_sales, analytics.dim_product");
    eprintln!("==> the same facts with one CREATE TABLE AS (baseline)");
    let plain_ms = timed(&mut db, PLAIN_FACTS);
    q(&mut db, "DROP TABLE bench_plain_facts");
    let sizes = text(
        &mut db,
        "SELECT pg_size_pretty(pg_table_size('analytics.fact_sales')) || ' + ' || pg_size_pretty(pg_indexes_size('analytics.fact_sales'))
                || ' of indexes'",
    );

    eprintln!("==> {} newer sales through the triggers, warehouse capture on and off by turns, then the incremental run", thousands(NEW_SALES));
    q(&mut db, "CHECKPOINT");
    let (with_ms, without_ms) = write_recent(&mut db, 1, NEW_SALES, total, stores, days);
    let incremental_started = Instant::now();
    let incremental = text(&mut db, "SELECT analytics.etl_load_sales()::text");
    let incremental_ms = ms(incremental_started.elapsed());
    let idle_started = Instant::now();
    let idle = text(&mut db, "SELECT analytics.etl_load_sales()::text");
    let idle_ms = ms(idle_started.elapsed());
    q(&mut db, "ANALYZE analytics.fact_sales");

    eprintln!("==> reports: ours against the same questions over LA-CAJA's tables");
    let mut reports = Vec::new();
    for (name, ours, plain) in REPORTS {
        let (om, op) = spread(db.query_one("SELECT bench_time($1, $2)", &[&ours, &(runs as i32)]).unwrap().get(0));
        let plain_runs = (runs / 5).max(3) as i32;
        let (pm, pp) = spread(db.query_one("SELECT bench_time($1, $2)", &[&plain, &plain_runs]).unwrap().get(0));
        reports.push((name, om, op, pm, pp));
    }
    let year_ours = "SELECT * FROM analytics.report_sales_by_category_month(NULL, current_date - 365, current_date)";
    let year_plain = "SELECT date_trunc('month', s.sold_at AT TIME ZONE z.tz)::date, p.category, count(DISTINCT s.id),
                             sum(i.qty - coalesce(r.qty, 0)), sum(i.unit_price_bs * i.qty - i.discount_bs - coalesce(r.total_bs, 0)),
                             sum((i.qty - coalesce(r.qty, 0)) * p.cost_bs)
                      FROM sales s JOIN bench_stores z ON z.id = s.store_id JOIN sale_items i ON i.sale_id = s.id
                      JOIN products p ON p.id = i.product_id
                      LEFT JOIN LATERAL (SELECT sum(x.qty) AS qty, sum(x.total_bs) AS total_bs
                                         FROM sale_return_items x WHERE x.sale_item_id = i.id) r ON true
                      WHERE s.voided_at IS NULL AND (s.sold_at AT TIME ZONE z.tz)::date BETWEEN current_date - 365 AND current_date
                      GROUP BY 1, 2";
    let (yo, _) = spread(db.query_one("SELECT bench_time($1, 3)", &[&year_ours]).unwrap().get(0));
    let (yp, _) = spread(db.query_one("SELECT bench_time($1, 3)", &[&year_plain]).unwrap().get(0));

    eprintln!("==> the facts against their definition");
    q(&mut db, "BEGIN");
    q(&mut db, WAREHOUSE_ORACLE);
    let differences: i64 = db.query_one("SELECT count(*) FROM oracle_fact_differences", &[]).unwrap().get(0);
    q(&mut db, "ROLLBACK");

    let mut value = |json: &str, key: &str| -> String {
        db.query_one("SELECT coalesce($1::text::jsonb ->> $2, '')", &[&json, &key]).unwrap().get(0)
    };
    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}\n## Warehouse: ETL and reports\n");
    let _ = writeln!(
        md,
        "Produced by `{command}` ({:.0} min): the benchmark history of {} sales ({} stores, {days} days; {} items \
         become {} facts), the older ones loaded with the extension detached ({load_s:.0} s) and backfilled by \
         `refresh_all()` ({backfill_s:.0} s), then, in the same run:\n",
        started.elapsed().as_secs_f64() / 60.0,
        thousands(total),
        stores,
        thousands(facts as u64),
        thousands(facts as u64)
    );
    let _ = writeln!(md, "| loading | ours | baseline | ratio |");
    let _ = writeln!(md, "|---|---|---|---|");
    let _ = writeln!(
        md,
        "| initial `etl_load_sales()`: {} facts with their dimensions and indexes ({sizes}) | {:.1} s | one `CREATE TABLE AS` of the same facts, no indexes: {:.1} s | ×{:.2} |",
        thousands(facts as u64),
        initial_ms / 1000.0,
        plain_ms / 1000.0,
        initial_ms / plain_ms
    );
    let _ = writeln!(
        md,
        "| incremental `etl_load_sales()` after {} new sales ({} changes logged, {} facts inserted) | {:.0} ms | the full rebuild above: {:.1} s | {:.0}× faster |",
        thousands(NEW_SALES),
        value(&incremental, "changes"),
        value(&incremental, "facts_inserted"),
        incremental_ms,
        plain_ms / 1000.0,
        plain_ms / incremental_ms
    );
    let _ = writeln!(
        md,
        "| a run with nothing new ({} changes) | {:.1} ms | | |",
        value(&idle, "changes"),
        idle_ms
    );
    let _ = writeln!(
        md,
        "| writing {} sales through the triggers (transactions of 100 sales with items, returns, events; every other one with the warehouse's capture off) | capture on: {:.1} s | capture off: {:.1} s | ×{:.2} |",
        thousands(NEW_SALES / 2),
        with_ms / 1000.0,
        without_ms / 1000.0,
        with_ms / without_ms
    );
    let _ = writeln!(
        md,
        "\nFacts against their definition over the source tables after these runs: **{differences} differences**. \
         Initial run: `{initial}`.\n"
    );
    let _ = writeln!(
        md,
        "Reports, one store's whole history ({days} days), a different store each run ({runs} runs of ours, {} of the \
         plain SQL), timed inside the server. The plain SQL asks the same question over LA-CAJA's tables (valid \
         sales, items net of returns, today's product category and cost, the index `sales (store_id, sold_at)`).\n",
        (runs / 5).max(3)
    );
    let _ = writeln!(md, "| report | ours median / p95 | plain SQL median / p95 | ratio |");
    let _ = writeln!(md, "|---|---|---|---|");
    for (name, om, op, pm, pp) in &reports {
        let _ = writeln!(md, "| {name} | {om:.1} / {op:.1} ms | {pm:.1} / {pp:.1} ms | {:.0}× faster |", pm / om);
    }
    let _ = writeln!(
        md,
        "| category × month, every store, the last 365 days | {:.0} ms | {:.0} ms | {:.1}× faster |",
        yo,
        yp,
        yp / yo
    );
    let _ = writeln!(md, "\n{END}");
    super::write_section(output, BEGIN, END, &md);
    eprintln!("==> {output}: warehouse section rewritten ({:.0} s in all)", started.elapsed().as_secs_f64());
}
