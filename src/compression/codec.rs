//! Column codecs for compressed batches (docs/design.md, "Compression").
//!
//! A batch stores each column as one byte stream: a null map, then the non-null values in a
//! codec chosen for the column's type and values, the whole stream compressed with zstd. The
//! codecs are plain functions over slices so that they are tested here without a server:
//! - integers and times (`i64`): delta of delta, zig-zag, LEB128 varints — a clock that
//!   ticks regularly (sequence numbers, `created_at` of a store's events) is a run of zeros;
//! - values that repeat (store, device, event type, version): a dictionary of the distinct
//!   values and one index per row;
//! - anything else (uuids, jsonb, text): the values length-prefixed, left to zstd.
//!
//! Every stream starts with a one-byte tag naming its codec, so a reader never guesses.

use std::collections::HashMap;

/// zstd's level for the streams. Measured on the payloads of LA-CAJA-like events (batches of
/// one store's rows; bytes per row after zstd, payload compression speed in rows/s):
/// level 3 (zstd's default) 52.8 B at 1.4M/s, 5 42.9 B at 470k/s, 8 40.5 B at 360k/s,
/// 12 40.2 B at 200k/s, 15 39.1 B at 57k/s. From 5 on zstd searches lazily, which finds the
/// repeated product and cashier ids a row apart; past 8 the size barely moves while the time
/// grows. Decompression is no slower at 8 than at 3. Small columns are unaffected either way.
const ZSTD_LEVEL: i32 = 8;

/// The codec a stream was written with (its first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Tag {
    DeltaOfDelta = 1,
    Dictionary = 2,
    Plain = 3,
}

impl Tag {
    fn of(byte: u8) -> Result<Tag, CodecError> {
        match byte {
            1 => Ok(Tag::DeltaOfDelta),
            2 => Ok(Tag::Dictionary),
            3 => Ok(Tag::Plain),
            other => Err(CodecError(format!("unknown codec tag {other}"))),
        }
    }
}

/// A stream that cannot be read (truncated, or not written by these codecs).
#[derive(Debug, PartialEq, Eq)]
pub struct CodecError(pub String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "compressed batch: {}", self.0)
    }
}

fn truncated() -> CodecError {
    CodecError("stream ends early".into())
}

// Varints ------------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Reads a byte stream front to back.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        let byte = *self.bytes.get(self.at).ok_or_else(truncated)?;
        self.at += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CodecError("varint longer than 64 bits".into()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len()).ok_or_else(truncated)?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn finish(&self) -> Result<(), CodecError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(CodecError(format!("{} bytes left over", self.bytes.len() - self.at)))
        }
    }
}

// Null maps -----------------------------------------------------------------------------------

/// The rows' null flags as a bitmap (bit set: NULL), preceded by the row count; all-present
/// columns (the common case) cost the count and one flag byte.
fn put_nulls(out: &mut Vec<u8>, nulls: &[bool]) {
    put_varint(out, nulls.len() as u64);
    if !nulls.iter().any(|n| *n) {
        out.push(0);
        return;
    }
    out.push(1);
    for chunk in nulls.chunks(8) {
        out.push(chunk.iter().enumerate().fold(0u8, |bits, (i, null)| bits | ((*null as u8) << i)));
    }
}

fn read_nulls(reader: &mut Reader) -> Result<Vec<bool>, CodecError> {
    let rows = reader.varint()? as usize;
    match reader.byte()? {
        0 => Ok(vec![false; rows]),
        1 => {
            let bitmap = reader.take(rows.div_ceil(8))?;
            Ok((0..rows).map(|i| bitmap[i / 8] & (1 << (i % 8)) != 0).collect())
        }
        other => Err(CodecError(format!("unknown null map kind {other}"))),
    }
}

// Integer columns -------------------------------------------------------------------------------

/// An integer (or time, as microseconds) column: `None` is NULL.
pub fn encode_i64s(values: &[Option<i64>]) -> Vec<u8> {
    let mut raw = vec![Tag::DeltaOfDelta as u8];
    put_nulls(&mut raw, &values.iter().map(Option::is_none).collect::<Vec<_>>());
    let (mut previous, mut delta) = (0i64, 0i64);
    for value in values.iter().flatten() {
        // wrapping: any i64 sequence round-trips, extremes included
        let next_delta = value.wrapping_sub(previous);
        put_varint(&mut raw, zigzag(next_delta.wrapping_sub(delta)));
        previous = *value;
        delta = next_delta;
    }
    compress(&raw)
}

pub fn decode_i64s(stream: &[u8]) -> Result<Vec<Option<i64>>, CodecError> {
    let raw = decompress(stream)?;
    let mut reader = Reader::new(&raw);
    expect_tag(&mut reader, Tag::DeltaOfDelta)?;
    let nulls = read_nulls(&mut reader)?;
    let (mut previous, mut delta) = (0i64, 0i64);
    let mut values = Vec::with_capacity(nulls.len());
    for null in nulls {
        if null {
            values.push(None);
            continue;
        }
        delta = delta.wrapping_add(unzigzag(reader.varint()?));
        previous = previous.wrapping_add(delta);
        values.push(Some(previous));
    }
    reader.finish()?;
    Ok(values)
}

// Byte columns (uuid, text, jsonb as stored) ----------------------------------------------------

/// A column of byte strings: a dictionary when few distinct values repeat (at most a quarter
/// of the rows, and at most 65,536), else the values in order.
pub fn encode_bytes(values: &[Option<&[u8]>]) -> Vec<u8> {
    let present: Vec<&[u8]> = values.iter().flatten().copied().collect();
    let mut distinct: Vec<&[u8]> = Vec::new();
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    for value in &present {
        if !index.contains_key(value) {
            index.insert(value, distinct.len());
            distinct.push(value);
        }
    }
    let nulls: Vec<bool> = values.iter().map(Option::is_none).collect();
    let use_dictionary = !present.is_empty() && distinct.len() <= 65_536 && distinct.len() * 4 <= present.len();
    let mut raw = vec![if use_dictionary { Tag::Dictionary } else { Tag::Plain } as u8];
    put_nulls(&mut raw, &nulls);
    let put_value = |raw: &mut Vec<u8>, value: &[u8]| {
        put_varint(raw, value.len() as u64);
        raw.extend_from_slice(value);
    };
    if use_dictionary {
        put_varint(&mut raw, distinct.len() as u64);
        for value in &distinct {
            put_value(&mut raw, value);
        }
        // indexes as one or two bytes: fixed width lets zstd see the runs
        let wide = distinct.len() > 256;
        for value in &present {
            let i = index[value];
            if wide {
                raw.extend_from_slice(&(i as u16).to_le_bytes());
            } else {
                raw.push(i as u8);
            }
        }
    } else {
        for value in &present {
            put_value(&mut raw, value);
        }
    }
    compress(&raw)
}

pub fn decode_bytes(stream: &[u8]) -> Result<Vec<Option<Vec<u8>>>, CodecError> {
    let raw = decompress(stream)?;
    let mut reader = Reader::new(&raw);
    let tag = Tag::of(reader.byte()?)?;
    let nulls = read_nulls(&mut reader)?;
    let read_value = |reader: &mut Reader| -> Result<Vec<u8>, CodecError> {
        let len = reader.varint()? as usize;
        Ok(reader.take(len)?.to_vec())
    };
    let mut values = Vec::with_capacity(nulls.len());
    match tag {
        Tag::Dictionary => {
            let count = reader.varint()? as usize;
            if count > 65_536 {
                return Err(CodecError(format!("dictionary of {count} values")));
            }
            let distinct = (0..count).map(|_| read_value(&mut reader)).collect::<Result<Vec<_>, _>>()?;
            let wide = count > 256;
            for null in nulls {
                if null {
                    values.push(None);
                    continue;
                }
                let i = if wide {
                    let b = reader.take(2)?;
                    u16::from_le_bytes([b[0], b[1]]) as usize
                } else {
                    reader.byte()? as usize
                };
                values.push(Some(distinct.get(i).ok_or_else(|| CodecError(format!("dictionary index {i} of {count}")))?.clone()));
            }
        }
        Tag::Plain => {
            for null in nulls {
                values.push(if null { None } else { Some(read_value(&mut reader)?) });
            }
        }
        Tag::DeltaOfDelta => return Err(CodecError("an integer stream read as bytes".into())),
    }
    reader.finish()?;
    Ok(values)
}

// Batches ---------------------------------------------------------------------------------------

/// A batch as stored: the column streams one after the other, each length-prefixed. An
/// empty stream is a column the batch does not hold (dropped, or added after compression):
/// the reader answers it with the column's missing value.
pub fn encode_batch(columns: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(columns.iter().map(|c| c.len() + 4).sum::<usize>() + 4);
    put_varint(&mut out, columns.len() as u64);
    for column in columns {
        put_varint(&mut out, column.len() as u64);
        out.extend_from_slice(column);
    }
    out
}

/// The column streams of a batch, borrowed from it.
pub fn decode_batch(batch: &[u8]) -> Result<Vec<&[u8]>, CodecError> {
    let mut reader = Reader::new(batch);
    let count = reader.varint()? as usize;
    if count > 1600 {
        return Err(CodecError(format!("a batch of {count} columns")));
    }
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let len = reader.varint()? as usize;
        columns.push(reader.take(len)?);
    }
    reader.finish()?;
    Ok(columns)
}

fn expect_tag(reader: &mut Reader, expected: Tag) -> Result<(), CodecError> {
    let tag = Tag::of(reader.byte()?)?;
    if tag == expected {
        Ok(())
    } else {
        Err(CodecError(format!("a {tag:?} stream read as {expected:?}")))
    }
}

fn compress(raw: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(raw, ZSTD_LEVEL).expect("zstd compresses any input in memory")
}

/// The decompressed size is bounded: a batch holds at most a few thousand rows, and a
/// corrupted header must not make us allocate gigabytes.
const MAX_STREAM_BYTES: usize = 256 << 20;

fn decompress(stream: &[u8]) -> Result<Vec<u8>, CodecError> {
    // the frame says its size (bulk compression writes it): allocate that, not the bound
    let size = match zstd::zstd_safe::get_frame_content_size(stream) {
        Ok(Some(size)) if size as usize <= MAX_STREAM_BYTES => size as usize,
        Ok(Some(size)) => return Err(CodecError(format!("a stream of {size} bytes"))),
        _ => return Err(CodecError("zstd: a frame without its size".into())),
    };
    zstd::bulk::decompress(stream, size).map_err(|e| CodecError(format!("zstd: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip() {
        let cases: Vec<(&str, Vec<Option<i64>>)> = vec![
            ("empty", vec![]),
            ("one", vec![Some(42)]),
            ("all null", vec![None, None, None]),
            ("regular clock", (0..1000).map(|i| Some(1_700_000_000_000_000 + i * 1_000_000)).collect()),
            ("sequence with gaps and nulls", vec![Some(1), Some(2), None, Some(3), Some(10), None, Some(11)]),
            ("extremes", vec![Some(i64::MIN), Some(i64::MAX), Some(0), Some(-1), Some(i64::MIN), Some(i64::MAX)]),
            ("descending", (0..100).rev().map(Some).collect()),
        ];
        for (name, values) in cases {
            let stream = encode_i64s(&values);
            assert_eq!(decode_i64s(&stream).unwrap(), values, "{name}");
        }
    }

    #[test]
    fn batches_frame_their_columns() {
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("no columns", vec![]),
            ("one empty column", vec![vec![]]),
            ("mixed", vec![encode_i64s(&[Some(1), None]), vec![], encode_bytes(&[Some(b"x"), None])]),
        ];
        for (name, columns) in cases {
            let batch = encode_batch(&columns);
            let read: Vec<Vec<u8>> = decode_batch(&batch).unwrap().into_iter().map(<[u8]>::to_vec).collect();
            assert_eq!(read, columns, "{name}");
        }
        let batch = encode_batch(&[vec![1, 2, 3]]);
        assert!(decode_batch(&batch[..batch.len() - 1]).is_err(), "a truncated batch is refused");
        assert!(decode_batch(&[batch.clone(), vec![0]].concat()).is_err(), "trailing bytes are refused");
    }

    #[test]
    fn a_regular_clock_costs_almost_nothing() {
        let times: Vec<Option<i64>> = (0..1000).map(|i| Some(1_700_000_000_000_000 + i * 1_000_000)).collect();
        let stream = encode_i64s(&times);
        assert!(stream.len() < 64, "1,000 evenly spaced times took {} bytes", stream.len());
    }

    #[test]
    fn bytes_round_trip_with_and_without_a_dictionary() {
        let store_a = [1u8; 16];
        let store_b = [2u8; 16];
        let repeated: Vec<Option<&[u8]>> =
            (0..400).map(|i| if i % 7 == 0 { None } else if i % 2 == 0 { Some(&store_a[..]) } else { Some(&store_b[..]) }).collect();
        let payloads: Vec<Vec<u8>> = (0..300).map(|i| format!("{{\"sale_id\": {i}, \"total\": {}}}", i * 3).into_bytes()).collect();
        let distinct: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
        let wide_values: Vec<Vec<u8>> = (0..2000u32).map(|i| (i % 300).to_le_bytes().to_vec()).collect();
        let wide: Vec<Option<&[u8]>> = wide_values.iter().map(|v| Some(v.as_slice())).collect();
        let cases: Vec<(&str, Vec<Option<&[u8]>>, Tag)> = vec![
            ("empty", vec![], Tag::Plain),
            ("nulls only", vec![None, None], Tag::Plain),
            ("empty strings", vec![Some(&b""[..]), Some(&b""[..]), Some(&b""[..]), Some(&b""[..])], Tag::Dictionary),
            ("two stores", repeated, Tag::Dictionary),
            ("distinct payloads", distinct, Tag::Plain),
            ("300 values over 2,000 rows: two-byte indexes", wide, Tag::Dictionary),
        ];
        for (name, values, tag) in cases {
            let stream = encode_bytes(&values);
            let raw = decompress(&stream).unwrap();
            assert_eq!(raw[0], tag as u8, "{name}: codec");
            let expected: Vec<Option<Vec<u8>>> = values.iter().map(|v| v.map(<[u8]>::to_vec)).collect();
            assert_eq!(decode_bytes(&stream).unwrap(), expected, "{name}");
        }
    }

    #[test]
    fn damaged_streams_are_refused_not_misread() {
        let good = encode_i64s(&[Some(1), Some(2), Some(3)]);
        let raw = decompress(&good).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not zstd", vec![1, 2, 3]),
            ("truncated", compress(&raw[..raw.len() - 1])),
            ("extra bytes", compress(&[raw.clone(), vec![0]].concat())),
            ("unknown tag", compress(&[vec![9], raw[1..].to_vec()].concat())),
            ("bytes read as integers", encode_bytes(&[Some(&b"x"[..])])),
        ];
        for (name, stream) in cases {
            assert!(decode_i64s(&stream).is_err(), "{name}: read without an error");
        }
        assert!(decode_bytes(&good).is_err(), "integers read as bytes");
    }
}
