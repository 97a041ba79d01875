//! One command that measures lacaja_analytics against its baselines, in one run on one
//! database, and rewrites docs/benchmarks.md:
//!
//!     scripts/bench.sh --sales 10M        (--sales 100k for a quick run)
//!
//! Every figure with the extension is paired with a baseline measured in the same run: the
//! plain SQL over LA-CAJA's tables for the dashboard, the same POS transactions with the
//! capture triggers detached for the write path, REFRESH MATERIALIZED VIEW for freshness.

mod compression;
mod streaming;
mod anomalies;
mod forecast;
mod timeseries;
mod warehouse;

use postgres::{Client, NoTls};
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

const FIXTURE: &str = include_str!("../../sql/fixtures/lacaja_schema.sql");
const LACAJA_VIEWS: &str = include_str!("../../sql/fixtures/lacaja_materialized_views.sql");
const DATASET_SETUP: &str = include_str!("../dataset_setup.sql");
const DATASET: &str = include_str!("../dataset.sql");
const QUESTIONS: &str = include_str!("../dashboard_queries.sql");
const DATABASE: &str = "lacaja_bench";

struct Args {
    sales: u64,
    stores: u64,
    days: u64,
    duration: u64,
    runs: u64,
    output: String,
    server: String,
    command: String,
    events: Option<u64>,
    /// `--compression N`: events in the compression benchmark (and a quarter as many sales)
    compression: Option<u64>,
    /// `--streaming N`: transactions of the streaming benchmark's write path
    streaming: Option<u64>,
    /// `--warehouse N`: sales in the warehouse benchmark's history
    warehouse: Option<u64>,
    /// `--anomalies`: (stores, days), defaults 100 stores over 120 days
    anomalies: Option<(u64, u64)>,
    /// `--forecast`: (stores, days), defaults 50 stores over 150 days
    forecast: Option<(u64, u64)>,
    seed: u64,
}

fn parse_count(text: &str) -> u64 {
    let lower = text.to_lowercase();
    let (digits, factor) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1_000.0),
        Some('m') => (&lower[..lower.len() - 1], 1_000_000.0),
        _ => (&lower[..], 1.0),
    };
    let value: f64 = digits.replace('_', "").parse().unwrap_or_else(|_| usage(&format!("not a count: {text}")));
    (value * factor).round() as u64
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: scripts/bench.sh [--sales 100k|1M|10M] [--stores N] [--days N] [--duration SECONDS] [--runs N] [--output FILE]\n\
         \x20      scripts/bench.sh --events 50M [--days N] [--duration SECONDS] [--runs N] [--output FILE]\n\
         \x20      scripts/bench.sh --compression 10M [--days N] [--runs N] [--output FILE]\n\
         \x20      scripts/bench.sh --streaming 100k [--output FILE]\n\
         \x20      scripts/bench.sh --anomalies [--stores N] [--days N] [--seed N] [--output FILE]\n\
         \x20      scripts/bench.sh --forecast [--stores N] [--days N] [--seed N] [--output FILE]\n\
         \x20      scripts/bench.sh --warehouse 10M [--stores N] [--days N] [--runs N] [--output FILE]\n\
         Builds the database lacaja_bench (lacaja_bench_events) on the local cluster and rewrites docs/benchmarks.md\n\
         (or FILE; --events, --compression, --streaming, --anomalies, --forecast and --warehouse rewrite only their own section)."
    );
    std::process::exit(2)
}

impl Args {
    fn parse() -> Args {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        let mut given = std::collections::HashMap::new();
        let mut i = 0;
        while i < raw.len() {
            let key = raw[i].trim_start_matches("--").to_string();
            if key == "anomalies" || key == "forecast" {
                given.insert(key, String::new());
                i += 1;
                continue;
            }
            if !["sales", "stores", "days", "duration", "runs", "output", "events", "seed", "warehouse", "compression", "streaming"].contains(&key.as_str()) {
                usage(&format!("unknown option {}", raw[i]));
            }
            let value = raw.get(i + 1).unwrap_or_else(|| usage(&format!("{} needs a value", raw[i])));
            given.insert(key, value.clone());
            i += 2;
        }
        let sales = given.get("sales").map(|s| parse_count(s)).unwrap_or(1_000_000);
        let quick = given.get("warehouse").map(|s| parse_count(s)).unwrap_or(sales) < 1_000_000;
        let pick = |key: &str, default: u64| given.get(key).map(|s| parse_count(s)).unwrap_or(default);
        Args {
            sales,
            stores: pick("stores", if quick { 10 } else { 100 }),
            days: pick("days", 730),
            duration: pick("duration", if quick { 3 } else { 20 }),
            runs: pick("runs", if quick { 10 } else { 50 }),
            output: given.get("output").cloned().unwrap_or_else(|| "docs/benchmarks.md".into()),
            server: std::env::var("LACAJA_BENCH_SERVER")
                .unwrap_or_else(|_| "host=127.0.0.1 port=55432 user=postgres".into()),
            command: format!("scripts/bench.sh {}", raw.join(" ")).trim().to_string(),
            events: given.get("events").map(|s| parse_count(s)),
            compression: given.get("compression").map(|s| parse_count(s)),
            streaming: given.get("streaming").map(|s| parse_count(s)),
            warehouse: given.get("warehouse").map(|s| parse_count(s)),
            anomalies: given.contains_key("anomalies").then(|| {
                (given.get("stores").map(|s| parse_count(s)).unwrap_or(100), given.get("days").map(|s| parse_count(s)).unwrap_or(120))
            }),
            forecast: given.contains_key("forecast").then(|| {
                (given.get("stores").map(|s| parse_count(s)).unwrap_or(50), given.get("days").map(|s| parse_count(s)).unwrap_or(150))
            }),
            seed: given.get("seed").map(|s| parse_count(s)).unwrap_or(42),
        }
    }
}

fn connect(server: &str, database: &str) -> Client {
    Client::connect(&format!("{server} dbname={database}"), NoTls).unwrap_or_else(|e| {
        eprintln!("cannot reach PostgreSQL ({server} dbname={database}): {e}\nscripts/bench.sh starts the local cluster");
        std::process::exit(1)
    })
}

/// A new database `name` with LA-CAJA's schema and the extension installed.
fn fresh_lacaja_database(server: &str, name: &str) -> Client {
    let mut admin = connect(server, "postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let mut db = connect(server, name);
    db.batch_execute(FIXTURE).unwrap();
    db.batch_execute("CREATE EXTENSION lacaja_analytics").unwrap();
    db
}

/// Median and 95th percentile, in milliseconds.
fn spread(mut samples: Vec<f64>) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn progress(label: &str, done: u64, total: u64, started: Instant) {
    let width = 30;
    let filled = (width as u64 * done / total.max(1)) as usize;
    let spent = started.elapsed().as_secs_f64();
    let left = if done > 0 { spent / done as f64 * (total - done) as f64 } else { 0.0 };
    eprint!(
        "\r    {label} [{}{}] {done}/{total}  {spent:.0}s, about {left:.0}s left   ",
        "#".repeat(filled),
        ".".repeat(width - filled)
    );
    let _ = std::io::stderr().flush();
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

struct Bench {
    args: Args,
    db: Client,
    markdown: String,
    loaded: u64,
}

impl Bench {
    fn q(&mut self, sql: &str) {
        self.db.batch_execute(sql).unwrap_or_else(|e| panic!("{e}\n---\n{sql}"));
    }

    fn scalar_text(&mut self, sql: &str) -> String {
        self.db.query_one(sql, &[]).unwrap_or_else(|e| panic!("{e}\n---\n{sql}")).get(0)
    }

    /// Median and p95 of `runs` server-side timings of `query` (bench_time, one store per run).
    fn time_query(&mut self, query: &str, runs: i32) -> (f64, f64) {
        spread(self.db.query_one("SELECT bench_time($1, $2)", &[&query, &runs]).unwrap().get(0))
    }

    fn timed(&mut self, sql: &str) -> f64 {
        let started = Instant::now();
        self.q(sql);
        ms(started.elapsed())
    }

    fn attach(&mut self, on: bool) {
        self.q(if on { "SELECT analytics.attach('public')" } else { "SELECT analytics.detach()" });
    }

    /// A POS run with the extension attached or not. Sales sold while detached are marked and
    /// deleted again while still detached, so the rollups stay exact without a repair.
    fn pos(&mut self, on: bool, clients: u64, stores: u64, duration: Duration) -> PosRun {
        self.attach(on);
        let currency = if on { "BS" } else { "UNCAPTURED" };
        let run = pos_run(&self.args.server, clients, stores.min(self.args.stores), duration, self.args.stores, currency);
        if !on {
            self.q("DELETE FROM sales WHERE currency = 'UNCAPTURED'");
        }
        run
    }

    fn dataset_batch(&self, from: u64, to: u64, total: u64) -> String {
        DATASET
            .replace(":total", &total.to_string())
            .replace(":from", &from.to_string())
            .replace(":to", &to.to_string())
            .replace(":days", &self.args.days.to_string())
            .replace(":stores", &self.args.stores.to_string())
    }

    /// Builds the database and loads the history through the capture triggers, as POS
    /// writes arrive, measuring growth at 1M, 3M and 10M sales on the way.
    fn build(&mut self) -> Vec<String> {
        eprintln!("==> database {DATABASE}: {} stores, {} days, {} sales", self.args.stores, self.args.days, self.args.sales);
        self.q(FIXTURE);
        self.q("CREATE EXTENSION lacaja_analytics");
        self.q(&DATASET_SETUP.replace(":stores", &self.args.stores.to_string()));
        self.q("SELECT analytics.set_store_timezone(id, tz) FROM bench_stores");
        self.q(QUESTIONS);
        let batch = (self.args.sales / 40).clamp(10_000, 250_000);
        let checkpoints: Vec<u64> = [1_000_000, 3_000_000, 10_000_000]
            .into_iter()
            .filter(|c| *c < self.args.sales)
            .chain([self.args.sales])
            .collect();
        let mut growth = Vec::new();
        let started = Instant::now();
        let mut from = 1;
        while from <= self.args.sales {
            let to = (from + batch - 1).min(self.args.sales);
            let next_checkpoint = checkpoints.iter().find(|c| **c >= from).copied().unwrap_or(self.args.sales);
            let to = to.min(next_checkpoint);
            self.load_in_sessions(from, to);
            progress("sales", to, self.args.sales, started);
            if to == next_checkpoint {
                eprintln!();
                self.q("ANALYZE");
                growth.push(self.growth_row(to));
            }
            from = to + 1;
        }
        self.loaded = self.args.sales;
        self.markdown_load(ms(started.elapsed()));
        growth
    }

    /// Sales `from..=to`, written by LOAD_SESSIONS concurrent sessions (a slice each, one
    /// transaction per slice), as a store's registers write: the rollups then hold the parts
    /// of that many sessions, which the dashboard reads until compaction folds them.
    fn load_in_sessions(&mut self, from: u64, to: u64) {
        let slice = (to - from + 1).div_ceil(LOAD_SESSIONS);
        let handles: Vec<_> = (0..LOAD_SESSIONS)
            .map(|k| (from + k * slice, (from + (k + 1) * slice - 1).min(to)))
            .filter(|(a, b)| a <= b)
            .map(|(a, b)| {
                let sql = self.dataset_batch(a, b, self.args.sales);
                let server = self.args.server.clone();
                std::thread::spawn(move || {
                    let mut db = connect(&server, DATABASE);
                    db.batch_execute(&sql).unwrap_or_else(|e| panic!("{e}"));
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a loading session failed");
        }
    }

    fn markdown_load(&mut self, load_ms: f64) {
        let figures = self.scalar_text(
            "SELECT format('%s sales (%s valid), %s items, %s stores in %s zones, %s to %s',
                 to_char(count(*), 'FM999,999,999'), to_char(count(*) FILTER (WHERE voided_at IS NULL), 'FM999,999,999'),
                 to_char((SELECT count(*) FROM sale_items), 'FM999,999,999'), (SELECT count(*) FROM stores),
                 (SELECT count(DISTINCT tz) FROM bench_stores), min(sold_at)::date, max(sold_at)::date) FROM sales",
        );
        let _ = writeln!(
            self.markdown,
            "Data: {figures}, generated set-based and deterministically by `bench/dataset.sql` (daily and\n\
             weekly seasonality, 2 % voids, 30 % with a customer, seven payment methods, 1–3 items per sale,\n\
             weight products, returns that rewrite totals, split payments, sync events) and loaded through the capture triggers in batches, as POS writes arrive:\n\
             {:.0} s in all, including the growth measurements below.\n",
            load_ms / 1000.0
        );
    }

    /// Dashboard latency (ours and the plain SQL) and single-sale write latency (with and
    /// without the extension) at the current history size.
    fn growth_row(&mut self, sales: u64) -> String {
        eprintln!("==> growth checkpoint at {sales} sales");
        let runs = self.args.runs.min(20) as i32;
        let mut cells = Vec::new();
        for position in [1, 2] {
            let (ours, raw): (String, String) = {
                let row = self.db.query_one("SELECT ours, raw FROM bench_questions WHERE position = $1", &[&position]).unwrap();
                (row.get(0), row.get(1))
            };
            let ours = self.time_query(&ours, runs).0;
            let raw = self.time_query(&raw, (runs / 4).max(3)).0;
            cells.push(format!("{ours:.2} ms | {raw:.1} ms"));
        }
        let mut write = Vec::new();
        for on in [false, true] {
            let run = self.pos(on, 1, 1, Duration::from_secs(self.args.duration.min(5)));
            write.push(spread(run.latencies).0);
        }
        format!(
            "| {} | {} | {:.3} ms | {:.3} ms | ×{:.2} |",
            thousands(sales),
            cells.join(" | "),
            write[0],
            write[1],
            write[1] / write[0]
        )
    }

    fn dashboard(&mut self) -> Vec<(String, f64, f64, f64, f64)> {
        eprintln!("==> dashboard questions: rollups against the plain SQL over the source tables");
        let runs = self.args.runs as i32;
        let questions: Vec<(String, String, String)> = self
            .db
            .query("SELECT question, ours, raw FROM bench_questions ORDER BY position", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let mut rows = Vec::new();
        let started = Instant::now();
        for (i, (question, ours, raw)) in questions.iter().enumerate() {
            progress("questions", i as u64, questions.len() as u64, started);
            let (om, op) = self.time_query(ours, runs);
            let (rm, rp) = self.time_query(raw, (runs / 5).max(5));
            rows.push((question.clone(), om, op, rm, rp));
        }
        progress("questions", questions.len() as u64, questions.len() as u64, started);
        eprintln!();
        rows
    }

    fn write_path(&mut self) -> Vec<(String, Vec<PosRun>)> {
        let mut results = Vec::new();
        let duration = Duration::from_secs(self.args.duration);
        for (label, clients, stores) in
            [("1 session", 1, 1), ("8 sessions, one store", 8, 1), ("8 sessions, 8 stores", 8, 8)]
        {
            eprintln!("==> POS transactions (1 sale + 5 items): {label}, {}s per run, two rounds", self.args.duration);
            let mut runs = Vec::new();
            for _round in 0..2 {
                for on in [false, true] {
                    runs.push(self.pos(on, clients, stores, duration));
                }
            }
            results.push((label.to_string(), runs));
        }
        results
    }

    fn bulk(&mut self) -> (u64, f64, f64) {
        let size = (self.args.sales / 10).clamp(10_000, 1_000_000);
        eprintln!("==> bulk load of {size} sales with their items, in one transaction (rolled back)");
        let sql = self.dataset_batch(self.loaded + 1, self.loaded + size, self.loaded + size);
        let mut times = [0.0, 0.0];
        for (slot, on) in [(0, false), (1, true)] {
            self.attach(on);
            self.q("CHECKPOINT");
            self.q("BEGIN");
            times[slot] = self.timed(&sql);
            self.q("ROLLBACK");
        }
        (size, times[0], times[1])
    }
}

/// Replaces the section between `begin` and `end` of `output` (or appends it), leaving the
/// rest of the file as it is.
fn write_section(output: &str, begin: &str, end: &str, section: &str) {
    let current = std::fs::read_to_string(output).unwrap_or_default();
    let updated = match (current.find(begin), current.find(end)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &current[..a], section.trim_end(), &current[b + end.len()..]),
        _ => format!("{}\n\n{}", current.trim_end(), section),
    };
    std::fs::write(output, updated).unwrap_or_else(|e| panic!("cannot write {output}: {e}"));
}

/// The section between `begin` and `end` as it is in `output`.
fn current_section(output: &str, begin: &str, end: &str) -> Option<String> {
    let current = std::fs::read_to_string(output).ok()?;
    let (a, b) = (current.find(begin)?, current.find(end)?);
    (b > a).then(|| current[a..b + end.len()].to_string())
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct PosRun {
    latencies: Vec<f64>,
    tps: f64,
}

/// `clients` POS sessions, each selling in store `client % stores` for `duration`: one sale
/// and five items per transaction, as LA-CAJA's API writes them. Sales carry `currency`.
fn pos_run(server: &str, clients: u64, stores: u64, duration: Duration, all_stores: u64, currency: &'static str) -> PosRun {
    let handles: Vec<_> = (0..clients)
        .map(|client| {
            let server = server.to_string();
            std::thread::spawn(move || {
                let mut db = connect(&server, DATABASE);
                let store_n = (client % stores) as i32 % all_stores as i32;
                let store: String =
                    db.query_one("SELECT id::text FROM bench_stores WHERE n = $1", &[&store_n]).unwrap().get(0);
                let products: Vec<String> = db
                    .query("SELECT id::text FROM bench_products WHERE store_n = $1 ORDER BY pn LIMIT 5", &[&store_n])
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let sale = db
                    .prepare(
                        "INSERT INTO sales (id, store_id, sold_at, exchange_rate, currency, totals, payment, customer_id)
                         VALUES (gen_random_uuid(), $1::text::uuid, now(), 36.5, $6::text,
                                 jsonb_build_object('subtotal_bs', $2::text::numeric, 'subtotal_usd', round($2::text::numeric / 36.5, 2),
                                                    'discount_bs', 0, 'discount_usd', 0,
                                                    'total_bs', $2::text::numeric, 'total_usd', round($2::text::numeric / 36.5, 2)),
                                 jsonb_build_object('method', $3::text),
                                 CASE WHEN $4::int >= 0 THEN md5('customer' || $5::int || '/' || $4::int)::uuid END)
                         RETURNING id::text",
                    )
                    .unwrap();
                let items = db
                    .prepare(
                        "INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
                         SELECT gen_random_uuid(), $1::text::uuid, p.id, 1, p.price_bs, p.price_usd
                         FROM products p WHERE p.id = ANY($2::text[]::uuid[])",
                    )
                    .unwrap();
                let methods = ["CASH_BS", "CASH_USD", "PAGO_MOVIL", "TRANSFER", "FIAO", "SPLIT"];
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (client + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                let mut next = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                let mut latencies = Vec::new();
                let deadline = Instant::now() + duration;
                while Instant::now() < deadline {
                    let cents = (100 + next() % 50_000) as f64 / 100.0;
                    let amount = format!("{cents:.2}");
                    let method = methods[(next() % 6) as usize];
                    let customer: i32 = if next() % 10 < 3 { (next() % 50) as i32 } else { -1 };
                    let started = Instant::now();
                    let mut tx = db.transaction().unwrap();
                    let id: String =
                        tx.query_one(&sale, &[&store, &amount, &method, &customer, &store_n, &currency]).unwrap().get(0);
                    tx.execute(&items, &[&id, &products]).unwrap();
                    tx.commit().unwrap();
                    latencies.push(ms(started.elapsed()));
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.join().expect("a POS session failed"));
    }
    let tps = latencies.len() as f64 / duration.as_secs_f64();
    PosRun { latencies, tps }
}

fn machine(db: &mut Client) -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let version: String = db.query_one("SHOW server_version", &[]).unwrap().get(0);
    let settings: String = db
        .query_one(
            "SELECT string_agg(name || ' = ' || setting || coalesce(unit, ''), ', ' ORDER BY name) FROM pg_settings
             WHERE name IN ('shared_buffers', 'work_mem', 'synchronous_commit', 'max_wal_size')",
            &[],
        )
        .unwrap()
        .get(0);
    format!("{cores} cores, {memory_gib:.0} GiB, PostgreSQL {version} ({settings})")
}

fn main() {
    let args = Args::parse();
    if let Some((stores, days)) = args.anomalies {
        anomalies::run(&args.server, stores, days, args.seed, &args.command, &args.output);
        return;
    }
    if let Some((stores, days)) = args.forecast {
        forecast::run(&args.server, stores, days, args.seed, &args.command, &args.output);
        return;
    }
    if let Some(sales) = args.warehouse {
        warehouse::run(&args.server, sales, args.stores, args.days, args.runs, &args.command, &args.output);
        return;
    }
    if let Some(events) = args.compression {
        let days = if args.days == 730 { 31 } else { args.days };
        compression::run(&args.server, events, days, args.runs, &args.command, &args.output);
        return;
    }
    if let Some(transactions) = args.streaming {
        streaming::run(&args.server, transactions, &args.command, &args.output);
        return;
    }
    if let Some(events) = args.events {
        timeseries::run(&args.server, events, args.days, args.duration, args.runs, &args.command, &args.output);
        return;
    }
    let started = Instant::now();
    let mut admin = connect(&args.server, "postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {DATABASE}")).unwrap();
    let db = connect(&args.server, DATABASE);
    let mut bench = Bench { args, db, markdown: String::new(), loaded: 0 };
    let machine = machine(&mut bench.db);

    let growth = bench.build();
    bench.q("VACUUM ANALYZE");
    eprintln!("==> analytics.verify() after the load");
    let verify_started = Instant::now();
    let differences = bench.scalar_text("SELECT count(*)::text FROM analytics.verify()");
    let verify_ms = ms(verify_started.elapsed());
    let dashboard = bench.dashboard();
    eprintln!("==> compacting the parts (what the compaction job does every 10 minutes)");
    while bench.scalar_text("SELECT (SELECT sum(value::bigint) FROM jsonb_each_text(analytics.compact_parts(1000000) -> 'keys_folded'))::text") != "0" {}
    bench.q("VACUUM ANALYZE");
    let compacted = bench.dashboard();
    let sizes = bench.scalar_text(
        "SELECT format('%s|%s|%s',
             pg_size_pretty(sum(pg_total_relation_size(c.oid)) FILTER (WHERE n.nspname = 'public'
                 AND c.relname IN ('sales', 'sale_items', 'sale_returns', 'sale_return_items', 'inventory_movements', 'products'))),
             pg_size_pretty(sum(pg_total_relation_size(c.oid)) FILTER (WHERE n.nspname IN ('analytics', 'analytics_internal') AND c.relname <> 'item_facts')),
             pg_size_pretty(pg_total_relation_size('analytics_internal.item_facts')))
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'",
    );
    let writes = bench.write_path();
    bench.attach(true);
    eprintln!("==> analytics.refresh_all() on exact rollups (checks everything, corrects nothing)");
    let repair_ms = bench.timed("SELECT analytics.refresh_all()");

    eprintln!("==> LA-CAJA's materialized views on the same data (REFRESH MATERIALIZED VIEW CONCURRENTLY)");
    let create_mv_ms = bench.timed(LACAJA_VIEWS);
    bench.q("CREATE UNIQUE INDEX ON mv_top_products_30d (store_id, product_id)");
    let mut refresh_mv = Vec::new();
    for mv in ["mv_sales_daily", "mv_top_products_30d", "mv_inventory_metrics"] {
        refresh_mv.push((mv, bench.timed(&format!("REFRESH MATERIALIZED VIEW CONCURRENTLY {mv}"))));
    }
    let (bulk_size, bulk_off, bulk_on) = bench.bulk();
    bench.attach(true);

    eprintln!("==> analytics.refresh_all() from empty rollups (what CREATE EXTENSION on an existing database needs)");
    bench.q(
        "TRUNCATE analytics_internal.sales_hourly_parts, analytics_internal.sales_daily_parts, analytics_internal.customer_daily_parts,
                  analytics_internal.product_daily_parts, analytics_internal.cost_daily_parts, analytics_internal.product_stock_parts, analytics_internal.item_facts",
    );
    let rebuild_ms = bench.timed("SELECT analytics.refresh_all()");
    let rebuilt_differences = bench.scalar_text("SELECT count(*)::text FROM analytics.verify()");

    // ---- the report ----
    let today = bench.scalar_text("SELECT current_date::text");
    let args = &bench.args;
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Produced by `{}` ({:.0} min) on {} — {machine}.\n\
         Every figure with the extension is paired with its baseline measured in the same run on the\n\
         same database. The command rewrites this file; on a shared 2-core machine numbers vary by a\n\
         few percent between runs.\n",
        args.command,
        started.elapsed().as_secs_f64() / 60.0,
        today
    );
    md.push_str(&bench.markdown);
    let _ = writeln!(
        md,
        "`analytics.verify()` after the load: {differences} differences ({:.1} s). Sizes: source tables {}, rollups {} plus item facts {}.\n",
        verify_ms / 1000.0,
        sizes.split('|').next().unwrap_or(""),
        sizes.split('|').nth(1).unwrap_or(""),
        sizes.split('|').nth(2).unwrap_or("")
    );

    let _ = writeln!(md, "## Dashboard\n");
    let _ = writeln!(
        md,
        "Each question for a different store each run ({} runs of ours, {} of the plain SQL, after a\n\
         warm-up), timed inside the server. The plain SQL answers the same question over LA-CAJA's tables\n\
         the way its API does today (valid sales, `SUM((totals->>'total_bs')::numeric)`, store-local\n\
         days, LA-CAJA's indexes `sales (store_id, sold_at)` and `sale_items (sale_id)`).\n",
        args.runs,
        (args.runs / 5).max(5)
    );
    let _ = writeln!(
        md,
        "Ours twice: on the parts as the {LOAD_SESSIONS} loading sessions wrote them (one row per key and writing\n\
         session), and after `compact_parts()` folded them into one row per key (what the compaction job\n\
         does every 10 minutes).\n"
    );
    let _ = writeln!(md, "| question | ours median / p95 ({LOAD_SESSIONS} sessions' parts) | ours median / p95 (compacted) | plain SQL median / p95 | ratio | aim |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for (i, ((question, om, op, rm, rp), (_, cm, cp, _, _))) in dashboard.iter().zip(&compacted).enumerate() {
        let ratio = rm / om.max(*cm);
        let compared = if ratio >= 1.0 { format!("{ratio:.0}× faster") } else { format!("{:.1}× slower", 1.0 / ratio) };
        let aim = match i {
            0 => format!("< 2 ms: {}; < 1 ms compacted: {}; faster than plain: {}", verdict(*om < 2.0), verdict(*cm < 1.0), verdict(ratio > 1.0)),
            _ => format!("< 1 ms: {}; faster than plain: {}", verdict(om.max(*cm) < 1.0), verdict(ratio > 1.0)),
        };
        let _ = writeln!(md, "| {question} | {om:.2} / {op:.2} ms | {cm:.2} / {cp:.2} ms | {rm:.1} / {rp:.1} ms | {compared} | {aim} |");
    }
    let _ = writeln!(
        md,
        "\nThe original design aimed at < 100 ms for the dashboard and < 500 ms for reports.\n"
    );

    let _ = writeln!(md, "## Growth\n");
    let _ = writeln!(
        md,
        "Measured while loading, at each size: dashboard medians (ours | plain SQL) and the median latency\n\
         of a POS transaction (1 sale + 5 items, one session, {} s) without and with the extension.\n",
        args.duration.min(5)
    );
    let _ = writeln!(md, "| sales | `kpis()` ours | plain | `sales_by_day()` ours | plain | POS without | POS with | ratio |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for row in &growth {
        let _ = writeln!(md, "{row}");
    }

    let _ = writeln!(md, "\n## Write path\n");
    let _ = writeln!(
        md,
        "A POS transaction is the `sales` row and five `sale_items` rows, committed; {} s per run, two\n\
         rounds alternating without (`analytics.detach()`) and with the extension, on the full history.\n\
         Clients run on the same 2 cores as the server.\n",
        args.duration
    );
    let _ = writeln!(md, "| workload | without: median / p95 / tps | with: median / p95 / tps | ratio | target |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    let mut per_sale_ms = 0.0;
    for (label, runs) in &writes {
        let merge = |on: usize| {
            let mut lat = Vec::new();
            let mut tps = 0.0;
            for run in runs.iter().skip(on).step_by(2) {
                lat.extend(run.latencies.iter().copied());
                tps += run.tps / 2.0;
            }
            let (m, p) = spread(lat);
            (m, p, tps)
        };
        let (m0, p0, t0) = merge(0);
        let (m1, p1, t1) = merge(1);
        let (ratio, target) = if label == "1 session" {
            per_sale_ms = m1 - m0;
            (format!("latency ×{:.2}", m1 / m0), format!("≤ 1.25×: {}", verdict(m1 / m0 <= 1.25)))
        } else {
            (format!("throughput ×{:.2}", t1 / t0), format!("≥ 0.7×: {}", verdict(t1 / t0 >= 0.7)))
        };
        let _ = writeln!(
            md,
            "| {label} | {m0:.3} ms / {p0:.3} ms / {t0:.0} | {m1:.3} ms / {p1:.3} ms / {t1:.0} | {ratio} | {target} |"
        );
    }
    let _ = writeln!(
        md,
        "| bulk load: {} sales with their items in one transaction | {:.0} ms | {:.0} ms | ×{:.2} | ≤ 1.5×: {} |",
        thousands(bulk_size),
        bulk_off,
        bulk_on,
        bulk_on / bulk_off,
        verdict(bulk_on / bulk_off <= 1.5)
    );

    let _ = writeln!(md, "\n## Freshness: triggers against refreshing materialized views\n");
    let mv_total: f64 = refresh_mv.iter().map(|(_, t)| t).sum();
    let _ = writeln!(
        md,
        "The original design keeps `mv_sales_daily`, `mv_top_products_30d` and `mv_inventory_metrics`\n\
         fresh with `REFRESH MATERIALIZED VIEW CONCURRENTLY` (LA-CAJA's definitions,\n\
         `sql/fixtures/lacaja_materialized_views.sql`, plus the unique index `CONCURRENTLY` needs on\n\
         `mv_top_products_30d`), built on the same data: {:.1} s to create them.\n",
        create_mv_ms / 1000.0
    );
    let _ = writeln!(md, "| materialized view | `REFRESH … CONCURRENTLY` |\n|---|---|");
    for (mv, t) in &refresh_mv {
        let _ = writeln!(md, "| `{mv}` | {:.1} s |", t / 1000.0);
    }
    let hourly_sales = 60 * args.stores;
    let _ = writeln!(
        md,
        "\nPer hour of POS traffic at {} sales an hour ({} stores, one sale a minute each):\n\n\
         | keeping the dashboard fresh | cost per hour | staleness |\n|---|---|---|\n\
         | our triggers: +{:.3} ms per sale (1-session latency difference above) | {:.1} s | none: exact at commit |\n\
         | refresh the three views every 5 minutes | {:.1} s | up to 5 minutes |\n\
         | refresh them every minute | {:.1} s | up to 1 minute |\n\
         | refresh them after every sale, to be as fresh as the triggers | {:.0} s ({:.1} s per sale) | none |\n",
        thousands(hourly_sales),
        args.stores,
        per_sale_ms,
        per_sale_ms * hourly_sales as f64 / 1000.0,
        12.0 * mv_total / 1000.0,
        60.0 * mv_total / 1000.0,
        hourly_sales as f64 * mv_total / 1000.0,
        mv_total / 1000.0
    );

    let _ = writeln!(md, "## Backfill and repair\n");
    let _ = writeln!(md, "| what | time |\n|---|---|");
    let _ = writeln!(md, "| `analytics.refresh_all()` from empty rollups (sales, customers, item facts and products, stock) | {:.1} s (verify afterwards: {rebuilt_differences} differences) |", rebuild_ms / 1000.0);
    let _ = writeln!(md, "| `analytics.refresh_all()` on exact rollups (checks every rollup and item fact, corrects nothing) | {:.1} s |", repair_ms / 1000.0);
    let _ = writeln!(md, "| `analytics.verify()` on exact rollups | {:.1} s |", verify_ms / 1000.0);
    let _ = writeln!(md, "| creating LA-CAJA's three materialized views (one full computation each) | {:.1} s |", create_mv_ms / 1000.0);
    md.push_str(LIMITS);

    let output = bench.args.output.clone();
    // The events and anomaly benchmarks are commands of their own; their sections stay as
    // they last wrote them.
    for (begin, end) in [(timeseries::BEGIN, timeseries::END), (compression::BEGIN, compression::END), (streaming::BEGIN, streaming::END),
                         (anomalies::BEGIN, anomalies::END), (forecast::BEGIN, forecast::END), (warehouse::BEGIN, warehouse::END),
                         (BY_HAND_BEGIN, BY_HAND_END)] {
        if let Some(section) = current_section(&output, begin, end) {
            let _ = write!(md, "\n{section}\n");
        }
    }
    std::fs::write(&output, md).unwrap_or_else(|e| panic!("cannot write {output}: {e}"));
    eprintln!("==> {output} rewritten ({:.0} s in all)", started.elapsed().as_secs_f64());
}

/// Measurements run by hand with the command they give (a pgbench script of bench/): kept.
const BY_HAND_BEGIN: &str = "<!-- measurements by hand, each with its command: kept by scripts/bench.sh -->";
const BY_HAND_END: &str = "<!-- end of measurements by hand -->";

/// Sessions that load the history (and so write parts) concurrently.
const LOAD_SESSIONS: u64 = 8;

const LIMITS: &str = "
## What limits it

- Write path: the capture triggers only copy values (a few microseconds per statement); the
  cost is the fold at commit. A plain commit (new sales and items, stock movements) is folded
  in Rust (`src/capture/direct.rs`): per key one primary-key lookup and an in-place (HOT)
  update or an insert, plus one `item_facts` row per item — for one sale with five items
  about twenty row writes and twice the WAL of the sale itself (2.4 kB → 5.5 kB per commit,
  measured with `pg_current_wal_lsn()` around 2,000 commits). pgbench's per-statement report
  (`-M prepared -r`, same script attached and detached) puts the difference in `COMMIT`
  (0.17 → about 0.45 ms) and a little in the two inserts (their statement triggers). A
  profile of the POS backend (`perf record --call-graph dwarf`, stacks through
  `fold_transaction`) gives the fold about 29 % of its CPU: 17 % the item facts and product
  rollups, 10 % the sales rollups; inside, the B-tree descents and heap fetches of the
  lookups and inserts (~10 %), the numeric and time arithmetic through Postgres's functions
  (~6 %, each call behind pgrx's error guard), opening the part tables (~4 %). Before this
  fold (the generated SQL for every commit) the same profile showed 55 % in the fold, a
  fifth of all CPU in executor start-up. What bounds it now is the rows themselves: an item
  fact per item and a part row per rollup key; fewer, wider rows (one fact row per sale) would
  be the next step. With 8 sessions on 2 cores the same CPU comes out of throughput.
- Dashboard: flat with history (growth table). `kpis()` makes five lookups (three day ranges
  in one pass over the daily parts, the customers, the products of the period with their names,
  the store's inventory over its products and stock parts) from plans kept per session;
  compaction (`compact_parts()`, every 10 minutes with the scheduler) folds the writing
  sessions' parts into one row per key, written in key order. Timed piece by piece on the CI
  database (127k sales, 10 stores; `kpis()` 2.3 ms there): the day ranges 1.1 ms, products
  0.47 ms, inventory 0.19 ms, the PL/pgSQL around them 0.5 ms. `EXPLAIN (ANALYZE, BUFFERS)` of
  the day ranges: a bitmap heap scan of 273 pages for 336 daily rows and 169 pages for 264
  customer rows — about one page per row, because a store's row for a day is created when its
  first sale of that day commits, between every other store's; `perf` of 4,000 calls shows no
  hot spot (heap_hot_search_buffer 4.6 %, buffer lookups 4.5 %, tbm_iterate 3.5 %, the rest
  spread over the executor). What bounds `kpis()` is those ~600 rows on ~450 pages per call;
  under 1 ms needs them clustered per store or summed over ranges ahead (a rollup more, one
  more row written per sale, against the write-path aim). Since `kpis()` carries
  `forecast_today`, each call also reads the store's last 56 days and fits the forecast:
  0.56 ms a call of `_forecast_sales_json` in a loop on this database (the history 0.23 ms,
  the fit and its JSON the rest), 18 % of `kpis()` in `perf`. That is about half of the
  1.2 ms `kpis()` gained since the previous run (2.0 → 3.2 ms, now over the < 2 ms aim); in a
  loop on the same database it takes 2.4 ms. An exact cache of it would have to learn when a
  late sale changes one of the store's past days, which means a write on the POS path for
  late sales. It is not done. The plain SQL baselines use LA-CAJA's
  own indexes and read only the days asked for; at 1M sales a store has about 14 sales a day,
  so a 30-day heatmap over the sales themselves reads about as many rows as the hourly rollup
  has cells.
";
