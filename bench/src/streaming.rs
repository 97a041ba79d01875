//! `scripts/bench.sh --streaming N`: events to Redis Streams and the dashboard cache, against
//! capture alone, in one run (a real `redis-server`, scripts/redis.sh).
//!
//! Builds `lacaja_bench_streaming` (LA-CAJA's schema, 10 stores of 20 products), then:
//! - the POS write path: N transactions as LA-CAJA's sync writes a sale (its `SaleCreated`
//!   event, the sale, three items), one session, in blocks alternating streaming off (capture
//!   alone) and on (outbox, and the publisher draining it beside the POS on the same cores);
//! - publish throughput: 100,000 events committed at once, until the outbox is empty;
//! - commit-to-XADD latency: single-event transactions at about 50 a second, each commit's
//!   wall-clock time against its stream entry's id (Redis' clock, same machine);
//! - cache freshness: after a sale, until `GET kpis:{store}` equals `analytics.kpis()`.

use super::{ms, spread, thousands};
use postgres::Client;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DATABASE: &str = "lacaja_bench_streaming";
pub const BEGIN: &str = "<!-- streaming benchmark: scripts/bench.sh --streaming N -->";
pub const END: &str = "<!-- end of streaming benchmark -->";
const STORES: u64 = 10;

fn store(n: u64) -> String {
    format!("md5('bench-store{}')::uuid", n % STORES)
}

/// One sale as LA-CAJA's sync writes it: its event, the sale and three items.
fn sale_transaction(db: &mut Client, n: u64) {
    let store = store(n);
    db.batch_execute(&format!(
        "BEGIN;
         INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload, request_id)
         VALUES (gen_random_uuid(), {store}, md5('register{r}')::uuid, {n}, 'SaleCreated', now(),
                 jsonb_build_object('sale_id', gen_random_uuid(), 'totals', jsonb_build_object('total_bs', 109.5, 'total_usd', 3),
                                    'payment', jsonb_build_object('method', 'CASH_BS'), 'items', jsonb_build_array(1, 2, 3)),
                 gen_random_uuid());
         WITH sale AS (INSERT INTO sales (id, store_id, sold_at, exchange_rate, currency, totals, payment)
                       VALUES (gen_random_uuid(), {store}, now(), 36.5, 'BS', '{{\"total_bs\": 109.50, \"total_usd\": 3.00}}',
                               '{{\"method\": \"CASH_BS\"}}') RETURNING id)
         INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
         SELECT gen_random_uuid(), sale.id, md5('bench-product' || ({n} % {STORES}) || '/' || k)::uuid, k, 36.5, 1
         FROM sale, generate_series(1, 3) k;
         COMMIT;",
        r = n % 30
    ))
    .unwrap();
}

fn set_streaming(db: &mut Client, url: Option<&str>) {
    match url {
        Some(url) => {
            db.batch_execute(&format!("ALTER SYSTEM SET lacaja_analytics.redis_url = '{url}'")).unwrap();
            db.batch_execute(&format!("ALTER SYSTEM SET lacaja_analytics.database = '{DATABASE}'")).unwrap();
        }
        None => {
            db.batch_execute("ALTER SYSTEM RESET lacaja_analytics.redis_url").unwrap();
            db.batch_execute("ALTER SYSTEM RESET lacaja_analytics.database").unwrap();
        }
    }
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

fn status(db: &mut Client, column: &str) -> String {
    db.query_one(&format!("SELECT coalesce({column}::text, '') FROM analytics.stream_status"), &[]).unwrap().get(0)
}

fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wall_clock_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

pub fn run(server: &str, transactions: u64, command: &str, output: &str) {
    let started = Instant::now();
    let redis_url = std::env::var("LACAJA_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:56379".into());
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("no Redis at {redis_url}: {e} (scripts/bench.sh starts it)"));
    redis::cmd("FLUSHALL").query::<()>(&mut redis).unwrap();
    let mut admin = super::connect(server, "postgres");
    set_streaming(&mut admin, None);
    let mut db = super::fresh_lacaja_database(server, DATABASE);
    db.batch_execute(&format!(
        "INSERT INTO stores (id, name) SELECT md5('bench-store' || n)::uuid, 'Store ' || n FROM generate_series(0, {last}) n;
         INSERT INTO products (id, store_id, name, price_bs, price_usd, cost_bs, cost_usd)
         SELECT md5('bench-product' || s || '/' || k)::uuid, md5('bench-store' || s)::uuid, 'P' || k, 36.5, 1, 20, 0.55
         FROM generate_series(0, {last}) s, generate_series(1, 20) k;",
        last = STORES - 1
    ))
    .unwrap();
    // Warm: the session's plans, the publisher's trigger on events.
    set_streaming(&mut admin, Some(&redis_url));
    wait_until("the publisher to capture events", Duration::from_secs(60), || status(&mut db, "capturing") == "true");
    for n in 0..200 {
        sale_transaction(&mut db, n);
    }

    eprintln!("==> POS write path: {} transactions, capture alone and with streaming, alternating", thousands(transactions));
    // Pairs of blocks (off, on), each pair's ratio: a drift of the machine over the run moves
    // both of a pair alike.
    let blocks = 20;
    let per_block = (transactions / blocks).max(50);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut n = 1_000;
    for block in 0..blocks {
        let streaming = block % 2 == 1;
        // Each block starts settled: the outbox empty, the publisher connected (on) or idle (off).
        wait_until("the outbox to drain", Duration::from_secs(120), || status(&mut db, "backlog") == "0");
        set_streaming(&mut admin, if streaming { Some(&redis_url) } else { None });
        wait_until("the publisher to settle", Duration::from_secs(60), || {
            status(&mut db, "publisher_running") == streaming.to_string() && status(&mut db, "enabled") == streaming.to_string()
        });
        let t = Instant::now();
        for _ in 0..per_block {
            sale_transaction(&mut db, n);
            n += 1;
        }
        let per_transaction = ms(t.elapsed()) / per_block as f64;
        if streaming { on.push(per_transaction) } else { off.push(per_transaction) }
    }
    let ratios: Vec<f64> = off.iter().zip(&on).map(|(a, b)| b / a).collect();
    let (ratio, _) = spread(ratios.clone());
    let (lowest, highest) =
        (ratios.iter().cloned().fold(f64::INFINITY, f64::min), ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
    let (off_ms, _) = spread(off);
    let (on_ms, _) = spread(on);
    set_streaming(&mut admin, Some(&redis_url));
    wait_until("the outbox to drain", Duration::from_secs(120), || status(&mut db, "backlog") == "0");

    eprintln!("==> publish throughput: 100,000 events at once");
    let published_before: i64 = status(&mut db, "published").parse().unwrap();
    db.batch_execute(&format!(
        "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
         SELECT gen_random_uuid(), md5('bench-store' || (i % {STORES}))::uuid, md5('register' || (i % 30))::uuid, i, 'StockDeltaApplied', now(),
                jsonb_build_object('product_id', md5('p' || i % 300)::uuid, 'qty_delta', -1, 'reason', 'sale')
         FROM generate_series(1, 100000) i"
    ))
    .unwrap();
    let t = Instant::now();
    wait_until("the outbox to drain", Duration::from_secs(600), || status(&mut db, "backlog") == "0");
    let publish_s = t.elapsed().as_secs_f64();
    let published: i64 = status(&mut db, "published").parse::<i64>().unwrap() - published_before;

    eprintln!("==> commit-to-XADD latency: 500 single-event transactions at about 50 a second");
    let mut commits = Vec::new();
    for i in 0..500u64 {
        let id: String = db
            .query_one(
                &format!(
                    "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
                     VALUES (gen_random_uuid(), {}, md5('register')::uuid, {i}, 'SaleVoided', now(), '{{}}') RETURNING event_id::text",
                    store(i)
                ),
                &[],
            )
            .unwrap()
            .get(0);
        commits.push((id, wall_clock_ms()));
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_until("the outbox to drain", Duration::from_secs(60), || status(&mut db, "backlog") == "0");
    let mut entry_ms = std::collections::HashMap::new();
    for s in 0..STORES {
        let key: String = db.query_one(&format!("SELECT 'events:' || {}::text", store(s)), &[]).unwrap().get(0);
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query(&mut redis).unwrap();
        for (entry, fields) in entries {
            let at: f64 = entry.split('-').next().unwrap().parse().unwrap();
            if let Some((_, event)) = fields.into_iter().find(|(name, _)| name == "event_id") {
                entry_ms.insert(event, at);
            }
        }
    }
    let mut latencies: Vec<f64> = commits.iter().filter_map(|(id, at)| entry_ms.get(id).map(|x| (x - at).max(0.0))).collect();
    let delivered = latencies.len();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = latencies[((latencies.len() - 1) as f64 * 0.99).round() as usize];
    let (p50, _) = spread(latencies);

    eprintln!("==> cache freshness: 20 sales, each until kpis:{{store}} equals kpis()");
    let mut freshness = Vec::new();
    for i in 0..20u64 {
        std::thread::sleep(Duration::from_millis(700));
        sale_transaction(&mut db, 900_000 + i);
        let committed = Instant::now();
        let store_id: String = db.query_one(&format!("SELECT {}::text", store(900_000 + i)), &[]).unwrap().get(0);
        let expected: String = db.query_one("SELECT analytics.kpis($1::text::uuid)::text", &[&store_id]).unwrap().get(0);
        let expected: serde_json::Value = serde_json::from_str(&expected).unwrap();
        wait_until("the cache to catch up", Duration::from_secs(10), || {
            let cached: Option<String> = redis::cmd("GET").arg(format!("kpis:{store_id}")).query(&mut redis).unwrap();
            cached.and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok()) == Some(expected.clone())
        });
        freshness.push(ms(committed.elapsed()));
    }
    let (fresh_p50, fresh_p95) = spread(freshness);
    set_streaming(&mut admin, None);

    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}\n## Streaming to Redis: events and the dashboard cache\n");
    let _ = writeln!(
        md,
        "`{command}`, {}: LA-CAJA's schema, {STORES} stores; a local `redis-server` (Debian's {}); the publisher worker beside \
         the POS on the same 2 cores.\n",
        chrono_date(&mut db),
        redis_version(&mut redis)
    );
    let _ = writeln!(md, "| | capture alone | with streaming | ratio |\n|---|---|---|---|");
    let _ = writeln!(
        md,
        "| a sale as LA-CAJA's sync writes it (its event, the sale, three items), one session: median of {} pairs of blocks of {} transactions | {off_ms:.3} ms | {on_ms:.3} ms | ×{ratio:.3} (pairs from ×{lowest:.3} to ×{highest:.3}) |",
        blocks / 2,
        thousands(per_block)
    );
    let _ = writeln!(md, "\n| | |\n|---|---|");
    let _ = writeln!(
        md,
        "| publish throughput: {} events committed at once, until the outbox is empty | {:.0} events/s |",
        thousands(published as u64),
        published as f64 / publish_s
    );
    let _ = writeln!(md, "| commit → XADD, {delivered} single-event transactions at ~50/s: p50 / p99 | {p50:.1} / {p99:.1} ms |");
    let _ = writeln!(md, "| a sale's commit → `kpis:{{store}}` equal to `kpis()`, 20 sales: p50 / p95 | {fresh_p50:.0} / {fresh_p95:.0} ms |");
    let _ = writeln!(md, "\n{BOUNDS}\n{END}");
    super::write_section(output, BEGIN, END, &md);
    eprintln!("==> {output}: streaming section rewritten ({:.0} s in all)", started.elapsed().as_secs_f64());
}

const BOUNDS: &str = "What it costs and what bounds it: with streaming on, the trigger on `events` copies each inserted event into \
the outbox (in Rust, no SQL: a heap row and one index entry per event), and each commit that changed a store's figures adds a row \
per store to the cache outbox; the rest of the difference is the publisher itself, which shares the 2 cores (its own commits do \
not wait for the disk). The publisher looks at the outbox every 20 ms, which bounds the latency; it rewrites a store's cached \
dashboard at its next look after a quiet spell and at most every 0.5 s during a burst.";

fn chrono_date(db: &mut Client) -> String {
    db.query_one("SELECT current_date::text", &[]).unwrap().get(0)
}

fn redis_version(redis: &mut redis::Connection) -> String {
    let info: String = redis::cmd("INFO").arg("server").query(redis).unwrap();
    info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("?").trim().to_string()
}
