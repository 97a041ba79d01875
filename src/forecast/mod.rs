//! Predictions: tomorrow's sales (`analytics.forecast_sales`, `…_hourly`) and the products
//! about to run out (`analytics.stock_forecast`), from the rollups. The statistics are in
//! `model.rs`; this module reads the history its SQL (`forecast.sql`) gathers and returns
//! JSON the SQL turns into rows.

pub mod model;
#[cfg(any(test, feature = "pg_test"))]
mod forecast_tests;

use model::{DayForecast, DemandCalendar, Figures, HistoryDay, Interval, SalesModel, Status};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

pgrx::extension_sql_file!(
    "forecast.sql",
    name = "forecast",
    requires = ["anomalies", "dashboard", "jobs", _forecast_sales_json, _forecast_hourly_json, _stock_forecast_json]
);

/// The rows of a forecast, or its SPI error raised as the function's.
fn rows_or_raise(what: &str, rows: Result<Vec<Value>, pgrx::spi::Error>) -> JsonB {
    JsonB(Value::Array(rows.unwrap_or_else(|e| pgrx::error!("{what}: {e}"))))
}

/// Each store's days before the origin's (the forecast window, from its first sale on).
fn histories(client: &pgrx::spi::SpiClient, stores: &[Uuid], at: TimestampWithTimeZone, days: i32) -> Result<HashMap<Uuid, Vec<HistoryDay>>, pgrx::spi::Error> {
    let rows = client.select(
        "SELECT store_id, day_offset, weekday, sales_count::float8, total_bs::float8, total_usd::float8, holiday
         FROM analytics_internal._forecast_history($1, $2, $3) ORDER BY store_id, day_offset",
        None,
        &[stores.to_vec().into(), at.into(), days.into()],
    )?;
    let mut by_store: HashMap<Uuid, Vec<HistoryDay>> = HashMap::new();
    for row in rows {
        let Some(store) = row.get::<Uuid>(1)? else { continue };
        by_store.entry(store).or_default().push(HistoryDay {
            offset: row.get::<i32>(2)?.unwrap_or(0),
            weekday: row.get::<i32>(3)?.unwrap_or(0).clamp(0, 6) as usize,
            figures: Figures {
                count: row.get::<f64>(4)?.unwrap_or(0.0),
                bs: row.get::<f64>(5)?.unwrap_or(0.0),
                usd: row.get::<f64>(6)?.unwrap_or(0.0),
            },
            holiday: row.get::<bool>(7)?.unwrap_or(false),
        });
    }
    Ok(by_store)
}

/// A day to forecast: offset from the origin's day, the date, its weekday, whether a holiday,
/// and the store's local clock at the origin (hours since midnight).
struct Target {
    offset: i32,
    day: String,
    weekday: usize,
    holiday: bool,
    clock_hours: f64,
}

fn targets(client: &pgrx::spi::SpiClient, stores: &[Uuid], at: TimestampWithTimeZone, days: i32) -> Result<BTreeMap<Uuid, Vec<Target>>, pgrx::spi::Error> {
    let rows = client.select(
        "SELECT store_id, day_offset, day::text, weekday, holiday, clock_hours
         FROM analytics_internal._forecast_days($1, $2, $3) ORDER BY store_id, day_offset",
        None,
        &[stores.to_vec().into(), at.into(), days.into()],
    )?;
    let mut by_store: BTreeMap<Uuid, Vec<Target>> = BTreeMap::new();
    for row in rows {
        let Some(store) = row.get::<Uuid>(1)? else { continue };
        by_store.entry(store).or_default().push(Target {
            offset: row.get::<i32>(2)?.unwrap_or(0),
            day: row.get::<String>(3)?.unwrap_or_default(),
            weekday: row.get::<i32>(4)?.unwrap_or(0).clamp(0, 6) as usize,
            holiday: row.get::<bool>(5)?.unwrap_or(false),
            clock_hours: row.get::<f64>(6)?.unwrap_or(0.0),
        });
    }
    Ok(by_store)
}

fn rounded(value: f64, digits: i32) -> Value {
    let scale = 10f64.powi(digits);
    serde_json::Number::from_f64((value * scale).round() / scale).map_or(Value::Null, Value::Number)
}

/// The figures of a forecast as JSON fields (null when it was refused).
fn figure_fields(out: &mut Map<String, Value>, figures: Option<&[Interval; 3]>) {
    for (metric, (name, digits)) in [("sales", 1), ("bs", 2), ("usd", 2)].into_iter().enumerate() {
        let interval = figures.map(|f| f[metric]);
        out.insert(format!("expected_{name}"), interval.map_or(Value::Null, |i| rounded(i.expected, digits)));
        out.insert(format!("{name}_low"), interval.map_or(Value::Null, |i| rounded(i.low, digits)));
        out.insert(format!("{name}_high"), interval.map_or(Value::Null, |i| rounded(i.high, digits)));
    }
}

fn day_json(store: &Uuid, target: &Target, forecast: &DayForecast) -> Value {
    let mut out = Map::new();
    out.insert("store_id".into(), json!(store.to_string()));
    out.insert("day".into(), json!(target.day));
    out.insert("status".into(), json!(forecast.status.as_str()));
    figure_fields(&mut out, forecast.figures.as_ref());
    out.insert("note".into(), if forecast.note.is_empty() { Value::Null } else { json!(forecast.note) });
    Value::Object(out)
}

/// Daily forecasts of `stores` from the local day of `at` on, `days` days: one JSON object per
/// store and day (`analytics.forecast_sales` and the forecast policy read it).
#[pg_extern(stable, parallel_safe, schema = "analytics_internal")]
fn _forecast_sales_json(stores: Vec<Uuid>, at: TimestampWithTimeZone, days: i32) -> JsonB {
    let rows = Spi::connect(|client| {
        let histories = histories(&client, &stores, at, model::WINDOW_DAYS)?;
        let targets = targets(&client, &stores, at, days)?;
        let mut rows = Vec::new();
        for (store, days) in &targets {
            let model = SalesModel::fit(histories.get(store).map_or(&[][..], |h| &h[..]));
            for target in days {
                rows.push(day_json(store, target, &model.day(target.offset, target.weekday, target.holiday)));
            }
        }
        Ok::<_, pgrx::spi::Error>(rows)
    });
    rows_or_raise("forecast_sales", rows)
}

/// Each store's weekday hour shares over its open ordinary days of the window.
fn hour_shares(client: &pgrx::spi::SpiClient, stores: &[Uuid], at: TimestampWithTimeZone) -> Result<HashMap<Uuid, [[f64; 24]; 7]>, pgrx::spi::Error> {
    let mut samples: HashMap<Uuid, Vec<(usize, usize, f64)>> = HashMap::new();
    for row in client.select(
        "SELECT store_id, weekday, hour, sales_count::float8 FROM analytics_internal._forecast_hours($1, $2, $3)",
        None,
        &[stores.to_vec().into(), at.into(), model::WINDOW_DAYS.into()],
    )? {
        let Some(store) = row.get::<Uuid>(1)? else { continue };
        samples.entry(store).or_default().push((
            row.get::<i32>(2)?.unwrap_or(0).clamp(0, 6) as usize,
            row.get::<i32>(3)?.unwrap_or(0).clamp(0, 23) as usize,
            row.get::<f64>(4)?.unwrap_or(0.0),
        ));
    }
    Ok(samples.into_iter().map(|(store, samples)| (store, model::hour_shares(&samples))).collect())
}

/// Hourly forecasts of the store's local day of `at` and the next: the day's forecast spread
/// over its hours as the same weekday's hours have shared it.
#[pg_extern(stable, parallel_safe, schema = "analytics_internal")]
fn _forecast_hourly_json(store: Uuid, at: TimestampWithTimeZone) -> JsonB {
    let rows = Spi::connect(|client| {
        let history = histories(&client, &[store], at, model::WINDOW_DAYS)?.remove(&store).unwrap_or_default();
        let days = targets(&client, &[store], at, 2)?.remove(&store).unwrap_or_default();
        let shares = hour_shares(&client, &[store], at)?.remove(&store).unwrap_or([[0.0; 24]; 7]);
        let model = SalesModel::fit(&history);
        let mut rows = Vec::new();
        for target in &days {
            let day = model.day(target.offset, target.weekday, target.holiday);
            for hour in 0..24 {
                let figures = day.figures.as_ref().map(|f| model::hour_of(f, shares[target.weekday][hour]));
                let mut out = Map::new();
                out.insert("day".into(), json!(target.day));
                out.insert("hour".into(), json!(hour));
                out.insert("status".into(), json!(day.status.as_str()));
                figure_fields(&mut out, figures.as_ref());
                out.insert("note".into(), if day.note.is_empty() { Value::Null } else { json!(day.note) });
                rows.push(Value::Object(out));
            }
        }
        Ok::<_, pgrx::spi::Error>(rows)
    });
    rows_or_raise("forecast_sales_hourly", rows)
}

/// A product to forecast, as `_stock_outlook` hands it over.
#[derive(serde::Deserialize)]
struct Product {
    #[serde(deserialize_with = "uuid_text")]
    store_id: Uuid,
    product_id: String,
    stock: Option<f64>,
    low_stock_threshold: Option<f64>,
    by_weight: Option<bool>,
}

/// A uuid from its text (as jsonb writes a uuid).
fn uuid_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Uuid, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    let bytes: Option<Vec<u8>> = (hex.len() == 32)
        .then(|| hex.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()).collect())
        .flatten();
    bytes.and_then(|b| Uuid::from_slice(&b).ok()).ok_or_else(|| serde::de::Error::custom(format!("not a uuid: {text}")))
}

/// What the stock outlook of one store's products needs to know of the store, read for all
/// the stores at once.
struct StoreDemand {
    histories: HashMap<Uuid, Vec<HistoryDay>>,
    today: BTreeMap<Uuid, Vec<Target>>,
    shares: HashMap<Uuid, [[f64; 24]; 7]>,
    /// each product's net quantity by day offset
    sold: HashMap<(Uuid, String), HashMap<i32, f64>>,
    holidays: HashMap<Uuid, Vec<(i32, f64)>>,
}

impl StoreDemand {
    fn read(client: &pgrx::spi::SpiClient, stores: &[Uuid], at: TimestampWithTimeZone) -> Result<StoreDemand, pgrx::spi::Error> {
        let mut sold: HashMap<(Uuid, String), HashMap<i32, f64>> = HashMap::new();
        for row in client.select(
            "SELECT store_id, product_id::text, day_offset, net_qty::float8 FROM analytics_internal._forecast_demand($1, $2, $3)",
            None,
            &[stores.to_vec().into(), at.into(), model::DEMAND_DAYS.into()],
        )? {
            if let (Some(store), Some(product)) = (row.get::<Uuid>(1)?, row.get::<String>(2)?) {
                sold.entry((store, product)).or_default().insert(row.get::<i32>(3)?.unwrap_or(0), row.get::<f64>(4)?.unwrap_or(0.0));
            }
        }
        let mut holidays: HashMap<Uuid, Vec<(i32, f64)>> = HashMap::new();
        for row in client.select(
            "SELECT store_id, day_offset, sales_count::float8 FROM analytics_internal._forecast_holidays($1, $2, $3)",
            None,
            &[stores.to_vec().into(), at.into(), model::STOCK_HORIZON.into()],
        )? {
            if let Some(store) = row.get::<Uuid>(1)? {
                holidays.entry(store).or_default().push((row.get::<i32>(2)?.unwrap_or(0), row.get::<f64>(3)?.unwrap_or(0.0)));
            }
        }
        Ok(StoreDemand {
            histories: histories(client, stores, at, model::WINDOW_DAYS)?,
            today: targets(client, stores, at, 1)?,
            shares: hour_shares(client, stores, at)?,
            sold,
            holidays,
        })
    }

    /// The outlooks of one store's products.
    fn outlooks(&self, store: Uuid, products: &[&Product], cover_days: i32, rows: &mut Vec<Value>) {
        let history = self.histories.get(&store).map_or(&[][..], |h| &h[..]);
        let sales = SalesModel::fit(history);
        // the usable days of the demand window, with how busy the store was on each
        let usable: Vec<(i32, f64)> = history
            .iter()
            .filter(|d| d.offset >= -model::DEMAND_DAYS && !d.holiday && d.figures.count > 0.0 && !sales.closed(d.weekday))
            .map(|d| (d.offset, sales.activity(d.offset, d.weekday)))
            .collect();
        let (weekday, rest_of_today) = match self.today.get(&store).and_then(|t| t.first()) {
            Some(t) => {
                let day = self.shares.get(&store).map_or([0.0; 24], |s| s[t.weekday]);
                let hour = (t.clock_hours.floor() as usize).min(23);
                let rest: f64 = day[hour + 1..].iter().sum::<f64>() + day[hour] * (1.0 - t.clock_hours.fract());
                let seen: f64 = day.iter().sum();
                (t.weekday, if seen > 0.0 { rest } else { (24.0 - t.clock_hours) / 24.0 })
            }
            None => (0, 1.0),
        };
        let calendar = DemandCalendar::new(&sales, weekday, rest_of_today, self.holidays.get(&store).map_or(&[][..], |h| &h[..]));
        let empty = HashMap::new();
        for product in products {
            let days = self.sold.get(&(store, product.product_id.clone())).unwrap_or(&empty);
            let demand: Vec<(f64, f64)> = usable.iter().map(|(offset, factor)| (days.get(offset).copied().unwrap_or(0.0), *factor)).collect();
            let by_unit = !product.by_weight.unwrap_or(false);
            let outlook = model::stock_outlook(
                product.stock.unwrap_or(0.0),
                &demand,
                &calendar,
                cover_days,
                product.low_stock_threshold.unwrap_or(0.0),
                by_unit,
            );
            let digits = if by_unit { 2 } else { 3 };
            rows.push(json!({
                "store_id": store.to_string(),
                "product_id": product.product_id,
                "status": outlook.status.as_str(),
                "daily_demand": outlook.daily_demand.map_or(Value::Null, |d| rounded(d, 3)),
                "days_of_cover": outlook.days_of_cover.map_or(Value::Null, |d| rounded(d, 1)),
                "stockout_offset": outlook.stockout,
                "stockout_earliest_offset": outlook.stockout_earliest,
                "stockout_latest_offset": outlook.stockout_latest,
                "reorder_qty": outlook.reorder.map_or(Value::Null, |q| rounded(q, digits)),
                "note": match outlook.status {
                    Status::InsufficientHistory => json!(format!(
                        "{} usable days (open, not holidays) in the last {}; a stock forecast needs {}",
                        demand.len(), model::DEMAND_DAYS, model::MIN_DEMAND_DAYS)),
                    Status::NoDemand => json!(format!("no net demand in the last {} days", model::DEMAND_DAYS)),
                    _ => Value::Null,
                },
            }));
        }
    }
}

/// Stock outlooks of `products` (JSON array: store_id, product_id, stock,
/// low_stock_threshold, by_weight; any number of stores) at `at`: each product's net demand
/// over the last `DEMAND_DAYS` usable days of its store, shaped by the store's week. Every
/// store's history is read in one pass (the alerts ask for all stores at once).
#[pg_extern(stable, parallel_safe, schema = "analytics_internal")]
fn _stock_forecast_json(at: TimestampWithTimeZone, cover_days: i32, products: JsonB) -> JsonB {
    let products: Vec<Product> =
        serde_json::from_value(products.0).unwrap_or_else(|e| pgrx::error!("stock_forecast: products are not as expected: {e}"));
    let mut by_store: BTreeMap<Uuid, Vec<&Product>> = BTreeMap::new();
    for product in &products {
        by_store.entry(product.store_id).or_default().push(product);
    }
    let stores: Vec<Uuid> = by_store.keys().copied().collect();
    let rows = Spi::connect(|client| {
        let mut rows = Vec::with_capacity(products.len());
        if !stores.is_empty() {
            let known = StoreDemand::read(&client, &stores, at)?;
            for (store, products) in &by_store {
                known.outlooks(*store, products, cover_days, &mut rows);
            }
        }
        Ok::<_, pgrx::spi::Error>(rows)
    });
    rows_or_raise("stock_forecast", rows)
}
