//! `analytics.detect_anomalies`: alerts a store owner acts on.
//!
//! The original design's plain z-score (today against the last 30 days) fires every morning (a
//! partial day looks like a collapse), every quiet weekday (weekly seasonality) and on small
//! stores (a spread of almost nothing). The default method, `seasonal`, compares like with
//! like and resists outliers:
//! - today until the last full local hour against the *same part* of the *same weekday* in the
//!   previous weeks, the last full hour against the same hour of the week, and the last three
//!   hours (a register that stopped selling) against the same hours of the week;
//! - the baseline is the median, the spread 1.4826 × MAD, floored by the noise a count of that
//!   size has anyway (Poisson: √n), so a store of ten sales a day is not alarmed by one more;
//! - no verdict without `MIN_HISTORY` comparable days, or before the day has reached
//!   `MIN_EXPECTED` sales; closed days (no sale at all) and holidays are no baseline, and a
//!   holiday is not judged;
//! - confidence is the normal CDF of the robust z-score (statrs).
//! `method => 'zscore'` keeps the original design for comparison.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::{json, Value};
use statrs::distribution::{ContinuousCDF, DiscreteCDF, Normal, Poisson};
use std::collections::BTreeMap;

use crate::forecast::model::median;

const WEEKS: i32 = 8;
const MIN_HISTORY: usize = 4;
/// How much a store's trade swings from one day to the next for no reason (weather, a
/// neighbour's promotion): a relative standard deviation.
const DAY_NOISE: f64 = 0.06;
const MIN_EXPECTED_DAY: f64 = 8.0;
const MIN_EXPECTED_HOUR: f64 = 6.0;
/// An alert needs both: a deviation the history cannot explain (robust z) and one an owner
/// cares about (the change relative to the expected value).
const MEDIUM: (f64, f64) = (3.5, 0.30);
const HIGH: (f64, f64) = (5.0, 0.50);
/// A single hour is noisy (an empty hour happens to any store now and then): it must stand out
/// more before it is an alert; three empty hours are what a stopped register looks like.
const HOUR_MEDIUM: (f64, f64) = (4.5, 0.60);
const HOUR_HIGH: (f64, f64) = (6.0, 0.80);
const RECENT_MEDIUM: (f64, f64) = (4.0, 0.50);
const RECENT_HIGH: (f64, f64) = (5.5, 0.80);

#[derive(Clone, Default)]
struct Sample {
    k: i32,
    start: String,
    end: String,
    count: f64,
    bs: f64,
    usd: f64,
    day_sales: f64,
    holiday: bool,
}

impl Sample {
    fn value(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::Count => Some(self.count),
            Metric::RevenueBs => Some(self.bs),
            Metric::RevenueUsd => Some(self.usd),
            Metric::TicketBs => (self.count > 0.0).then(|| self.bs / self.count),
            Metric::TicketUsd => (self.count > 0.0).then(|| self.usd / self.count),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Metric {
    Count,
    RevenueBs,
    RevenueUsd,
    TicketBs,
    TicketUsd,
}

impl Metric {
    fn names(self, window: Window) -> (&'static str, &'static str) {
        match (self, window) {
            (Metric::Count, Window::Hour) => ("sales", "hourly_sales_count"),
            (Metric::Count, Window::Recent) => ("sales", "recent_sales_count"),
            (Metric::Count, Window::Day) => ("sales", "daily_sales_count"),
            (Metric::RevenueBs, _) => ("revenue", "daily_revenue_bs"),
            (Metric::RevenueUsd, _) => ("revenue", "daily_revenue_usd"),
            (Metric::TicketBs, _) => ("sales", "avg_ticket_bs"),
            (Metric::TicketUsd, _) => ("sales", "avg_ticket_usd"),
        }
    }

    /// Relative noise a value has anyway when it sums `n` sales (a ticket average moves less
    /// than a total), on top of the day-to-day swing of a store's trade (`DAY_NOISE`).
    fn noise(self, n: f64) -> f64 {
        // a total also carries the spread of its tickets (skewed: a few large ones)
        let per_sale = match self {
            Metric::TicketBs | Metric::TicketUsd => 0.5,
            Metric::RevenueBs | Metric::RevenueUsd => 1.3,
            Metric::Count => 1.0,
        };
        (per_sale * per_sale / n.max(1.0) + DAY_NOISE * DAY_NOISE).sqrt()
    }
}

/// What part of the day a verdict is about.
#[derive(Clone, Copy, PartialEq)]
enum Window {
    /// today until the last full hour
    Day,
    /// the last full hour
    Hour,
    /// the last three full hours of today
    Recent,
}

const DAILY_METRICS: [Metric; 5] = [Metric::RevenueBs, Metric::RevenueUsd, Metric::Count, Metric::TicketBs, Metric::TicketUsd];

/// A verdict on one value against its baseline: None when there is nothing to say.
struct Judgement {
    expected: f64,
    sigma: f64,
    z: f64,
}

fn seasonal(actual: f64, history: &[f64], expected_sales: f64, metric: Metric) -> Judgement {
    let mut values = history.to_vec();
    let expected = median(&mut values);
    let mut deviations: Vec<f64> = history.iter().map(|v| (v - expected).abs()).collect();
    let spread = 1.4826 * median(&mut deviations);
    let floor = expected.abs() * metric.noise(expected_sales);
    let sigma = spread.max(floor).max(f64::EPSILON);
    // A count whose history varies no more than chance does is judged by the Poisson tail:
    // small counts are skewed, and the normal approximation would flag every busy morning of
    // a small store and miss its dead ones.
    if metric == Metric::Count && spread <= 1.2 * expected.sqrt() && expected > 0.0 {
        if let Some(z) = poisson_z(actual, expected) {
            // the day-to-day swing widens the Poisson tail (overdispersion)
            let widened = (expected / (expected + (DAY_NOISE * expected).powi(2))).sqrt();
            return Judgement { expected, sigma, z: z * widened };
        }
    }
    Judgement { expected, sigma, z: (actual - expected) / sigma }
}

/// The z-score with the same tail probability as `actual` under Poisson(`expected`).
fn poisson_z(actual: f64, expected: f64) -> Option<f64> {
    let poisson = Poisson::new(expected).ok()?;
    let normal = Normal::standard();
    let x = actual.max(0.0).round() as u64;
    let z = if actual < expected {
        normal.inverse_cdf(poisson.cdf(x).clamp(1e-300, 0.5))
    } else {
        let above = if x == 0 { 1.0 } else { 1.0 - poisson.cdf(x - 1) };
        -normal.inverse_cdf(above.clamp(1e-300, 0.5))
    };
    Some(if z.is_finite() { z } else { (actual - expected) / expected.sqrt() })
}

fn plain_zscore(actual: f64, history: &[f64]) -> Option<Judgement> {
    let n = history.len() as f64;
    if n < 2.0 {
        return None;
    }
    let mean = history.iter().sum::<f64>() / n;
    let sd = (history.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    (sd > 0.0).then(|| Judgement { expected: mean, sigma: sd, z: (actual - mean) / sd })
}

/// Half-width of the normal band: what a value may deviate before it is an anomaly.
fn band(j: &Judgement, (z, relative): (f64, f64)) -> f64 {
    (z * j.sigma).max(relative * j.expected.abs())
}

fn round(v: f64, digits: i32) -> Value {
    if !v.is_finite() {
        return Value::Null;
    }
    let f = 10f64.powi(digits);
    json!((v * f).round() / f)
}

struct Verdicts<'a> {
    store: &'a str,
    method: &'a str,
    /// (|z| at least, |relative change| at least)
    medium: (f64, f64),
    high: (f64, f64),
    out: Vec<Value>,
}

impl Verdicts<'_> {
    /// Records the verdict on one metric of one period (normal ones too: they resolve).
    fn push(&mut self, metric: Metric, window: Window, now: &Sample, actual: f64, j: Judgement, history_days: usize) {
        let (metric_type, metric_name) = metric.names(window);
        let change = if j.expected.abs() > 0.0 { ((actual - j.expected) / j.expected).abs() } else { f64::INFINITY };
        let beyond = |(z, relative): (f64, f64)| j.z.abs() >= z && change >= relative;
        let (medium, high) = match window {
            Window::Hour if self.method == "seasonal" => (HOUR_MEDIUM, HOUR_HIGH),
            Window::Recent => (RECENT_MEDIUM, RECENT_HIGH),
            _ => (self.medium, self.high),
        };
        let severity = if beyond(high) {
            Some("high")
        } else if beyond(medium) {
            Some("medium")
        } else {
            None
        };
        let normal = Normal::standard();
        let confidence = 2.0 * normal.cdf(j.z.abs()) - 1.0;
        self.out.push(json!({
            "store_id": self.store,
            "metric_type": metric_type,
            "metric_name": metric_name,
            "period_type": if window == Window::Day { "day" } else { "hour" },
            "period_start": now.start,
            "period_end": now.end,
            "predicted_value": round(j.expected, 4),
            "actual_value": round(actual, 4),
            "deviation_percentage": if j.expected.abs() > 0.0 { round((actual - j.expected) / j.expected * 100.0, 2) } else { Value::Null },
            "confidence_score": round(confidence, 6),
            "z_score": round(j.z, 3),
            "severity": severity,
            "anomaly_type": if j.z < 0.0 { "drop" } else { "spike" },
            "method": self.method,
            "expected_low": round((j.expected - band(&j, medium)).max(0.0), 4),
            "expected_high": round(j.expected + band(&j, medium), 4),
            "metadata": { "history_days": history_days, "sigma": round(j.sigma, 4) },
        }));
    }
}

/// The seasonal verdicts of one store.
fn judge_seasonal(v: &mut Verdicts, days: &[Sample], hours: &[Sample], recent: &[Sample]) {
    for (samples, window) in [(days, Window::Day), (hours, Window::Hour), (recent, Window::Recent)] {
        let hourly = window != Window::Day;
        let Some(now) = samples.iter().find(|s| s.k == 0) else { continue };
        if now.holiday {
            continue;
        }
        // comparable past periods: not a holiday, and the store traded that day
        let past: Vec<&Sample> = samples.iter().filter(|s| s.k > 0 && !s.holiday && s.day_sales > 0.0).collect();
        if past.len() < MIN_HISTORY {
            continue;
        }
        let mut counts: Vec<f64> = past.iter().map(|s| s.count).collect();
        let expected_sales = median(&mut counts);
        if expected_sales < if hourly { MIN_EXPECTED_HOUR } else { MIN_EXPECTED_DAY } {
            continue; // too early in the day, or too small a store, to tell
        }
        let metrics: &[Metric] = if hourly { &[Metric::Count] } else { &DAILY_METRICS };
        for &metric in metrics {
            let history: Vec<f64> = past.iter().filter_map(|s| s.value(metric)).collect();
            let Some(actual) = now.value(metric) else { continue };
            if history.len() < MIN_HISTORY || (matches!(metric, Metric::TicketBs | Metric::TicketUsd) && now.count < 5.0) {
                continue;
            }
            let j = seasonal(actual, &history, expected_sales, metric);
            v.push(metric, window, now, actual, j, history.len());
        }
    }
}

/// The original design: today's value so far against the mean and standard deviation of the
/// last 30 full days.
fn judge_zscore(v: &mut Verdicts, daily: &[Sample]) {
    let Some(now) = daily.iter().find(|s| s.k == 0) else { return };
    let past: Vec<&Sample> = daily.iter().filter(|s| s.k > 0).collect();
    for metric in [Metric::RevenueBs, Metric::RevenueUsd, Metric::Count, Metric::TicketBs] {
        let history: Vec<f64> = past.iter().filter_map(|s| s.value(metric)).collect();
        let (Some(actual), Some(j)) = (now.value(metric), plain_zscore(now.value(metric).unwrap_or(0.0), &history)) else {
            continue;
        };
        v.push(metric, Window::Day, now, actual, j, history.len());
    }
}

fn text(row: &pgrx::spi::SpiHeapTupleData, i: usize) -> String {
    row.get::<String>(i).ok().flatten().unwrap_or_default()
}

fn number(row: &pgrx::spi::SpiHeapTupleData, i: usize) -> f64 {
    row.get::<pgrx::AnyNumeric>(i)
        .ok()
        .flatten()
        .and_then(|n| n.to_string().parse().ok())
        .unwrap_or(0.0)
}

/// Every verdict on every store at `at` (normal ones too: they resolve), as JSON objects;
/// `analytics.detect_anomalies` records them and returns the anomalies.
#[pg_extern(stable, parallel_safe, schema = "analytics_internal")]
fn _anomaly_verdicts(store_id: Option<Uuid>, at: TimestampWithTimeZone, method: &str) -> JsonB {
    let (medium, high) = match method {
        "seasonal" => (MEDIUM, HIGH),
        "zscore" => ((2.0, 0.0), (3.0, 0.0)),
        other => pgrx::error!("unknown anomaly method {other:?}; use 'seasonal' (the default) or 'zscore'"),
    };
    let verdicts: Vec<Value> = Spi::connect(|client| {
        let stores: Vec<Uuid> = match store_id {
            Some(s) => vec![s],
            None => client
                .select("SELECT unnest(analytics_internal._active_stores($1))", None, &[at.into()])?
                .filter_map(|r| r.get::<Uuid>(1).ok().flatten())
                .collect(),
        };
        let rows = client.select(
            "SELECT store_id::text, kind, k, period_start::text, period_end::text, sales_count::numeric, total_bs, total_usd,
                    day_sales::numeric, holiday
             FROM analytics_internal._anomaly_samples($1, $2, $3) ORDER BY store_id, kind, k",
            None,
            &[stores.into(), at.into(), WEEKS.into()],
        )?;
        let mut by_store: BTreeMap<String, BTreeMap<String, Vec<Sample>>> = BTreeMap::new();
        for row in rows {
            let sample = Sample {
                k: row.get::<i32>(3)?.unwrap_or(0),
                start: text(&row, 4),
                end: text(&row, 5),
                count: number(&row, 6),
                bs: number(&row, 7),
                usd: number(&row, 8),
                day_sales: number(&row, 9),
                holiday: row.get::<bool>(10)?.unwrap_or(false),
            };
            by_store.entry(text(&row, 1)).or_default().entry(text(&row, 2)).or_default().push(sample);
        }
        let mut all = Vec::new();
        for (store, kinds) in &by_store {
            let mut v = Verdicts { store, method, medium, high, out: Vec::new() };
            let empty = Vec::new();
            if method == "zscore" {
                judge_zscore(&mut v, kinds.get("daily").unwrap_or(&empty));
            } else {
                judge_seasonal(
                    &mut v,
                    kinds.get("day").unwrap_or(&empty),
                    kinds.get("hour").unwrap_or(&empty),
                    kinds.get("recent").unwrap_or(&empty),
                );
            }
            all.extend(v.out);
        }
        Ok::<_, pgrx::spi::Error>(all)
    })
    .unwrap_or_else(|e| pgrx::error!("detect_anomalies: {e}"));
    JsonB(Value::Array(verdicts))
}
