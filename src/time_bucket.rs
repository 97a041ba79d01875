//! `analytics.time_bucket`: TimescaleDB's bucketing, same signatures, results and errors.
//!
//! Buckets shorter than a month are counted in microseconds from an origin (default Monday
//! 2000-01-03, so weeks start on Mondays); month buckets are counted in months from
//! 2000-01-01 and ignore the day. `timestamptz` buckets in UTC unless a time zone is given,
//! in which case local wall time is bucketed (a day is a local day across DST). The
//! `offset` variants are SQL wrappers in sql/timeseries.sql, as in TimescaleDB.

use pgrx::datum::{Date, Interval, Timestamp, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::{direct_function_call, IntoDatum};

const USECS_PER_DAY: i64 = 86_400_000_000;
/// Monday 2000-01-03 in Postgres' internal microseconds (its epoch is 2000-01-01).
const DEFAULT_ORIGIN: i64 = 2 * USECS_PER_DAY;
/// Postgres' valid timestamp range (MIN_TIMESTAMP, END_TIMESTAMP).
const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;

fn error(code: PgSqlErrorCode, message: &'static str) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(code, message, "time_bucket").report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}

fn period_not_positive() -> ! {
    error(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "period must be greater than 0")
}

fn out_of_range() -> ! {
    error(PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE, "timestamp out of range")
}

/// Floor of `value` to a multiple of `period` counted from `offset`, within `[min, max]`
/// (TimescaleDB's integer bucket).
fn bucket_integer(period: i64, value: i64, offset: i64, min: i64, max: i64) -> i64 {
    if period <= 0 {
        period_not_positive();
    }
    let offset = offset % period;
    if (offset > 0 && value < min + offset) || (offset < 0 && value > max + offset) {
        out_of_range();
    }
    let shifted = value - offset;
    let mut result = (shifted / period) * period;
    if shifted < 0 && shifted % period != 0 {
        if result < min + period {
            out_of_range();
        }
        result -= period;
    }
    result + offset
}

/// Floor of a timestamp (microseconds) to a multiple of `period` counted from `origin`.
fn bucket_micros(period: i64, value: i64, origin: i64) -> i64 {
    if period <= 0 {
        period_not_positive();
    }
    let shift = origin % period;
    let shifted = value.checked_sub(shift).unwrap_or_else(|| out_of_range());
    let mut result = (shifted / period) * period;
    if shifted % period < 0 {
        result -= period;
    }
    let result = result.checked_add(shift).unwrap_or_else(|| out_of_range());
    if !(MIN_TIMESTAMP..END_TIMESTAMP).contains(&result) {
        out_of_range();
    }
    result
}

fn period_micros(width: &Interval) -> i64 {
    if width.months() != 0 {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "interval defined in terms of month, year, century etc. not supported"
        );
    }
    (width.days() as i64)
        .checked_mul(USECS_PER_DAY)
        .and_then(|days| days.checked_add(width.micros()))
        .unwrap_or_else(|| out_of_range())
}

fn check_month_width(width: &Interval) {
    if width.days() != 0 || width.micros() != 0 {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "month intervals cannot have day or time component"
        );
    }
}

fn month_index(date: Date) -> i64 {
    date.year() as i64 * 12 + date.month() as i64 - 1
}

/// The first day of the month bucket holding `date`, buckets counted from `origin`'s month.
fn bucket_month(months: i32, date: Date, origin: Date) -> Date {
    let index = bucket_integer(months as i64, month_index(date), month_index(origin), i32::MIN as i64, i32::MAX as i64);
    Date::new(index.div_euclid(12) as i32, (index.rem_euclid(12) + 1) as u8, 1).unwrap_or_else(|_| out_of_range())
}

fn default_month_origin() -> Date {
    Date::new(2000, 1, 1).unwrap()
}

fn timestamp_micros(ts: Timestamp) -> i64 {
    ts.into_inner()
}

fn to_timestamp(micros: i64) -> Timestamp {
    Timestamp::try_from(micros).unwrap_or_else(|_| out_of_range())
}

fn bucket_timestamp(width: Interval, ts: Timestamp, origin: Option<Timestamp>) -> Timestamp {
    if !ts.is_finite() {
        return ts;
    }
    if width.months() != 0 {
        check_month_width(&width);
        // As TimescaleDB: an explicit origin equal to the default counts as none.
        let origin = origin
            .filter(|o| timestamp_micros(*o) != DEFAULT_ORIGIN)
            .map(Date::from)
            .unwrap_or_else(default_month_origin);
        return Timestamp::from(bucket_month(width.months(), Date::from(ts), origin));
    }
    let origin = origin.map(timestamp_micros).unwrap_or(DEFAULT_ORIGIN);
    to_timestamp(bucket_micros(period_micros(&width), timestamp_micros(ts), origin))
}

#[pg_extern(name = "time_bucket", immutable, parallel_safe, strict)]
fn time_bucket_timestamp(bucket_width: Interval, ts: Timestamp) -> Timestamp {
    bucket_timestamp(bucket_width, ts, None)
}

#[pg_extern(name = "time_bucket", immutable, parallel_safe, strict)]
fn time_bucket_timestamp_origin(bucket_width: Interval, ts: Timestamp, origin: Timestamp) -> Timestamp {
    bucket_timestamp(bucket_width, ts, Some(origin))
}

/// A timestamptz is bucketed as the UTC wall time it stores.
fn bucket_timestamptz(width: Interval, ts: TimestampWithTimeZone, origin: Option<TimestampWithTimeZone>) -> TimestampWithTimeZone {
    let utc = |t: TimestampWithTimeZone| to_timestamp(t.into_inner());
    let bucketed = bucket_timestamp(width, utc(ts), origin.map(utc));
    TimestampWithTimeZone::try_from(bucketed.into_inner()).unwrap_or_else(|_| out_of_range())
}

#[pg_extern(name = "time_bucket", immutable, parallel_safe, strict)]
fn time_bucket_timestamptz(bucket_width: Interval, ts: TimestampWithTimeZone) -> TimestampWithTimeZone {
    bucket_timestamptz(bucket_width, ts, None)
}

#[pg_extern(name = "time_bucket", immutable, parallel_safe, strict)]
fn time_bucket_timestamptz_origin(
    bucket_width: Interval,
    ts: TimestampWithTimeZone,
    origin: TimestampWithTimeZone,
) -> TimestampWithTimeZone {
    bucket_timestamptz(bucket_width, ts, Some(origin))
}

fn check_daily(period: i64) {
    if period < USECS_PER_DAY {
        ereport!(ERROR, PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED, "interval must not have sub-day precision");
    }
    if period % USECS_PER_DAY != 0 {
        ereport!(ERROR, PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED, "interval must be a multiple of a day");
    }
}

fn bucket_date(width: Interval, date: Date, origin: Option<Date>) -> Date {
    if !date.is_finite() {
        return date;
    }
    if width.months() != 0 {
        check_month_width(&width);
        return bucket_month(width.months(), date, origin.unwrap_or_else(|| Date::new(2000, 1, 1).unwrap()));
    }
    let period = period_micros(&width);
    check_daily(period);
    let origin = origin.map(|o| timestamp_micros(Timestamp::from(o))).unwrap_or(DEFAULT_ORIGIN);
    Date::from(to_timestamp(bucket_micros(period, timestamp_micros(Timestamp::from(date)), origin)))
}

#[pg_extern(name = "time_bucket", immutable, parallel_safe, strict)]
fn time_bucket_date(bucket_width: Interval, ts: Date) -> Date {
    bucket_date(bucket_width, ts, None)
}

#[pg_extern(name = "time_bucket", immutable, parallel_safe, strict)]
fn time_bucket_date_origin(bucket_width: Interval, ts: Date, origin: Date) -> Date {
    bucket_date(bucket_width, ts, Some(origin))
}

/// Buckets the wall time `ts` shows in `timezone` and returns that local bucket start as an
/// instant: a 1-day bucket is a local day, 23 or 25 hours long across DST.
#[pg_extern(name = "time_bucket", immutable, parallel_safe)]
fn time_bucket_timezone(
    bucket_width: Option<Interval>,
    ts: Option<TimestampWithTimeZone>,
    timezone: Option<&str>,
    origin: default!(Option<TimestampWithTimeZone>, "NULL"),
    offset: default!(Option<Interval>, "NULL"),
) -> Option<TimestampWithTimeZone> {
    let (width, ts, timezone) = (bucket_width?, ts?, timezone?);
    if !ts.is_finite() {
        return Some(ts);
    }
    let local = |t: TimestampWithTimeZone| -> Timestamp {
        unsafe { direct_function_call(pg_sys::timestamptz_zone, &[timezone.into_datum(), t.into_datum()]) }
            .unwrap_or_else(|| out_of_range())
    };
    let mut wall = local(ts);
    if let Some(offset) = offset {
        wall = unsafe { direct_function_call(pg_sys::timestamp_mi_interval, &[wall.into_datum(), offset.into_datum()]) }
            .unwrap_or_else(|| out_of_range());
    }
    let mut bucketed = bucket_timestamp(width, wall, origin.map(local));
    if let Some(offset) = offset {
        bucketed = unsafe { direct_function_call(pg_sys::timestamp_pl_interval, &[bucketed.into_datum(), offset.into_datum()]) }
            .unwrap_or_else(|| out_of_range());
    }
    unsafe { direct_function_call(pg_sys::timestamp_zone, &[timezone.into_datum(), bucketed.into_datum()]) }
}

macro_rules! integer_buckets {
    ($($plain:ident, $with_offset:ident, $t:ty;)*) => {$(
        #[pg_extern(name = "time_bucket", immutable, parallel_safe, strict)]
        fn $plain(bucket_width: $t, ts: $t) -> $t {
            bucket_integer(bucket_width as i64, ts as i64, 0, <$t>::MIN as i64, <$t>::MAX as i64) as $t
        }

        #[pg_extern(name = "time_bucket", immutable, parallel_safe, strict)]
        fn $with_offset(bucket_width: $t, ts: $t, offset: $t) -> $t {
            bucket_integer(bucket_width as i64, ts as i64, offset as i64, <$t>::MIN as i64, <$t>::MAX as i64) as $t
        }
    )*};
}

integer_buckets! {
    time_bucket_int2, time_bucket_int2_offset, i16;
    time_bucket_int4, time_bucket_int4_offset, i32;
    time_bucket_int8, time_bucket_int8_offset, i64;
}
