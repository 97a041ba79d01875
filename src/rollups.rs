//! Rust side of the rollups: the parts of capture that must never raise an error.
//! The set work itself (deltas, upserts, corrections) is SQL in `sql/rollups.sql`.

use std::ffi::{CStr, CString};

use pgrx::prelude::*;
use pgrx::AnyNumeric;

/// Amounts at or beyond 10^MAX_MAGNITUDE count as 0: summing a few of them could overflow
/// `numeric` and abort the sale that carries them.
const MAX_MAGNITUDE: i64 = 1000;
/// Longer strings are not amounts, and parsing them would cost the POS time.
const MAX_AMOUNT_TEXT: usize = 400;

/// Reads a decimal written as text in `totals` ("12.50", " -3e2 "). `NULL` when the text is
/// not a finite decimal of sane magnitude; never raises an error.
#[pg_extern(immutable, parallel_safe, strict, name = "parse_amount")]
fn parse_amount(text: &str) -> Option<AnyNumeric> {
    let trimmed = text.trim();
    if !is_sane_decimal(trimmed) {
        return None;
    }
    AnyNumeric::try_from(trimmed).ok()
}

/// Accepts `[+-]digits[.digits][e[+-]digits]` with at least one digit in the mantissa and a
/// magnitude below 10^MAX_MAGNITUDE; rejects NaN, Infinity and everything else.
pub(crate) fn is_sane_decimal(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_AMOUNT_TEXT {
        return false;
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    if bytes[i] == b'+' || bytes[i] == b'-' {
        i += 1;
    }
    let int_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = &s[int_start..i];
    let mut frac_len = 0;
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        frac_len = i - frac_start;
    }
    if int_digits.is_empty() && frac_len == 0 {
        return false;
    }
    let mut exponent: i64 = 0;
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        i += 1;
        let negative = i < bytes.len() && bytes[i] == b'-';
        if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
            i += 1;
        }
        let exp_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let exp_digits = &s[exp_start..i];
        if exp_digits.is_empty() || exp_digits.len() > 6 {
            return false;
        }
        exponent = exp_digits.parse::<i64>().unwrap_or(i64::MAX);
        if negative {
            exponent = -exponent;
        }
    }
    if i != bytes.len() {
        return false;
    }
    let significant_int_digits = int_digits.trim_start_matches('0').len() as i64;
    // Very small numbers are harmless to sum, but their scale is capped by numeric.
    significant_int_digits + exponent <= MAX_MAGNITUDE && (frac_len as i64 - exponent) < 10_000
}

/// The largest scale among the amounts a histogram of scales counts (each amount of scale `s`
/// adds 2^(32·s), see `scale_mark` in sql/rollups.sql): the position of its highest non-zero
/// base-2^32 digit. Rust because readers call it once per group they show.
#[pg_extern(immutable, parallel_safe, strict, name = "largest_scale", schema = "analytics_internal")]
fn largest_scale(scales: AnyNumeric) -> i32 {
    largest_scale_of(&scales.to_string())
}

/// [`largest_scale`] of a non-negative integer written in decimal (0 for anything else).
pub(crate) fn largest_scale_of(decimal: &str) -> i32 {
    let integer = decimal.split('.').next().unwrap_or("");
    if integer.is_empty() || !integer.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    // The number in base 2^32, least significant digit first.
    let mut digits: Vec<u32> = vec![0];
    for b in integer.bytes() {
        let mut carry = u64::from(b - b'0');
        for digit in digits.iter_mut() {
            let value = u64::from(*digit) * 10 + carry;
            *digit = value as u32;
            carry = value >> 32;
        }
        if carry > 0 {
            digits.push(carry as u32);
        }
    }
    while digits.len() > 1 && digits.last() == Some(&0) {
        digits.pop();
    }
    digits.len() as i32 - 1
}

/// The rollup shard this session writes: its backend id, unique among live sessions, so two
/// sessions never update the same rollup row and can neither wait on nor deadlock each other.
/// Shard 0 is never a backend id; it holds what `refresh_all` and `refresh_store` correct.
#[pg_extern(stable, parallel_unsafe, name = "backend_shard", schema = "analytics_internal")]
fn backend_shard() -> i32 {
    unsafe { pg_sys::MyBackendId }
}

/// The zone of stores without their own: the `lacaja_analytics.default_timezone` setting.
#[pg_extern(stable, parallel_safe, name = "default_timezone")]
fn default_timezone() -> String {
    crate::guc::default_timezone()
}

/// The schema `CREATE EXTENSION` attaches to: `lacaja_analytics.source_schema`.
#[pg_extern(stable, parallel_safe, name = "configured_source_schema", schema = "analytics_internal")]
fn configured_source_schema() -> String {
    crate::guc::source_schema()
}

/// This library's version, for `health()`: after a new release is installed and the server
/// restarted, the library serves the previous release's SQL until `ALTER EXTENSION … UPDATE`.
#[pg_extern(stable, parallel_safe, name = "_library_version", schema = "analytics_internal")]
fn library_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// True when Postgres can load the zone (names of pg_timezone_names, POSIX specs).
#[pg_extern(immutable, parallel_safe, strict, name = "is_valid_timezone")]
fn is_valid_timezone(name: &str) -> bool {
    match CString::new(name) {
        Ok(name) => timezone_is_known(&name),
        Err(_) => false,
    }
}

pub(crate) fn timezone_is_known(name: &CStr) -> bool {
    // pg_tzset fails softly (NULL) for unknown or over-long names.
    !name.to_bytes().is_empty() && unsafe { !pg_sys::pg_tzset(name.as_ptr()).is_null() }
}

/// Makes a capture trigger part of the extension (an automatic dependency), so that a plain
/// `DROP EXTENSION lacaja_analytics` removes it and leaves the table and its data alone.
#[pg_extern(volatile, parallel_unsafe, name = "_bind_trigger_to_extension", schema = "analytics_internal")]
fn bind_trigger_to_extension(table: pg_sys::Oid, trigger: &str) {
    let trigger = CString::new(trigger).expect("trigger names have no NUL byte");
    unsafe {
        let trigger_oid = pg_sys::get_trigger_oid(table, trigger.as_ptr(), false);
        let extension_oid = pg_sys::get_extension_oid(c"lacaja_analytics".as_ptr(), false);
        let dependent = pg_sys::ObjectAddress {
            classId: pg_sys::TriggerRelationId,
            objectId: trigger_oid,
            objectSubId: 0,
        };
        let referenced = pg_sys::ObjectAddress {
            classId: pg_sys::ExtensionRelationId,
            objectId: extension_oid,
            objectSubId: 0,
        };
        pg_sys::recordDependencyOn(&dependent, &referenced, pg_sys::DependencyType::DEPENDENCY_AUTO);
    }
}

#[cfg(test)]
mod tests {
    use super::{is_sane_decimal, largest_scale_of};

    #[test]
    fn largest_scale_is_the_highest_base_2_32_digit() {
        for (scales, expected) in [
            ("0", 0),
            ("1", 0),
            ("4294967295", 0),
            ("4294967296", 1),                                      // one amount of scale 1
            ("4294967297", 1),                                      // scales 0 and 1
            ("18446744073709551615", 1),
            ("18446744073709551616", 2),                            // 2^64: scale 2
            ("36893488151714070528", 2),                            // two amounts of scale 2
            ("79228162514264337593543950336", 3),                   // 2^96
            ("340282366920938463463374607431768211456", 4),         // 2^128
            ("340282366920938463463374607431768211455", 3),
            ("6277101735386680763835789423207666416102355444464034512896", 6), // 2^192
            ("-5", 0),
            ("12.5", 0),
        ] {
            assert_eq!(largest_scale_of(scales), expected, "{scales}");
        }
    }

    #[test]
    fn decimals_that_count() {
        for s in ["0", "12.50", "-3", "+4.", ".5", "1e3", "1E-2", "000000123.4500", "9e999"] {
            assert!(is_sane_decimal(s), "{s} should parse");
        }
    }

    #[test]
    fn text_that_is_not_an_amount() {
        for s in ["", "abc", "NaN", "nan", "Infinity", "-Infinity", "1,5", "1.2.3", "e5", ".", "-", "1e", "1e+", "0x10", "1 2", "1e1000", "1e1000000", "12abc"] {
            assert!(!is_sane_decimal(s), "{s} should not parse");
        }
        assert!(!is_sane_decimal(&"9".repeat(1001)));
    }
}
