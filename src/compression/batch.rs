//! Rows ↔ batches: a chunk's rows taken column by column into the codecs, and a stored batch
//! turned back into rows of the chunk's row type, every value byte for byte as it was.
//!
//! Values are kept as Postgres stores them, whatever the type: a by-value column (integers,
//! times, booleans, floats) as its datum's 64 bits, through delta of delta; any other as its
//! bytes (fixed-length types as they are, varlena types detoasted without their header,
//! cstrings without their terminator), through the dictionary or plain codec. So a round trip
//! is exact for every type, jsonb and numeric included, with no output or input function run.

use super::codec;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Rows in a batch at most: TimescaleDB's size, small enough that a point read decodes
/// little, large enough for the codecs to find runs. Also the highest offset of a compressed
/// row's item pointer (am.rs), well under Postgres' MaxOffsetNumber.
pub const MAX_BATCH_ROWS: usize = 1000;

/// A memory context for one row's by-reference values, reset before the next row: a scan
/// keeps the values of the row it returned until it returns the next one.
pub unsafe fn row_context(name: &'static std::ffi::CStr) -> pg_sys::MemoryContext {
    pg_sys::AllocSetContextCreateInternal(
        pg_sys::CurrentMemoryContext,
        name.as_ptr(),
        pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
        pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
        pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
    )
}

/// One column of a row, owned.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    Null,
    Word(i64),
    Bytes(Vec<u8>),
}

/// What a column's values are stored as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// by value: the datum's bits
    Word,
    /// by reference, fixed length
    Fixed(usize),
    Varlena,
    CString,
    /// dropped column: NULL in every row, stored as nothing
    Dropped,
}

unsafe fn kind(attribute: &pg_sys::FormData_pg_attribute) -> Kind {
    if attribute.attisdropped {
        Kind::Dropped
    } else if attribute.attbyval {
        Kind::Word
    } else if attribute.attlen > 0 {
        Kind::Fixed(attribute.attlen as usize)
    } else if attribute.attlen == -1 {
        Kind::Varlena
    } else {
        Kind::CString
    }
}

unsafe fn attributes(desc: pg_sys::TupleDesc) -> &'static [pg_sys::FormData_pg_attribute] {
    (*desc).attrs.as_slice((*desc).natts as usize)
}

/// A slot's values as owned values (the slot's attributes all fetched first).
pub unsafe fn row_of_slot(slot: *mut pg_sys::TupleTableSlot) -> Vec<Value> {
    let desc = (*slot).tts_tupleDescriptor;
    let natts = (*desc).natts;
    if ((*slot).tts_nvalid as i32) < natts as i32 {
        // (a virtual row from a batch has them all already; asking its slot would deform nothing)
        pg_sys::slot_getsomeattrs_int(slot, natts);
    }
    let values = std::slice::from_raw_parts((*slot).tts_values, natts as usize);
    let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts as usize);
    attributes(desc)
        .iter()
        .enumerate()
        .map(|(i, attribute)| {
            if nulls[i] {
                return Value::Null;
            }
            value_of_datum(attribute, values[i])
        })
        .collect()
}

/// A non-null value of `attribute` as a batch stores it.
pub unsafe fn value_of_datum(attribute: &pg_sys::FormData_pg_attribute, datum: pg_sys::Datum) -> Value {
    match kind(attribute) {
        Kind::Dropped => Value::Null,
        Kind::Word => Value::Word(datum.value() as i64),
        Kind::Fixed(len) => Value::Bytes(std::slice::from_raw_parts(datum.cast_mut_ptr::<u8>(), len).to_vec()),
        Kind::Varlena => {
            let flat = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
            let len = pgrx::varlena::varsize_any_exhdr(flat);
            Value::Bytes(std::slice::from_raw_parts(pgrx::varlena::vardata_any(flat) as *const u8, len).to_vec())
        }
        Kind::CString => Value::Bytes(std::ffi::CStr::from_ptr(datum.cast_mut_ptr()).to_bytes().to_vec()),
    }
}

/// The bytes a batch's catalog row keeps of its segment value (compressed_batches.segment).
pub fn segment_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Null => None,
        Value::Word(w) => Some(w.to_le_bytes().to_vec()),
        Value::Bytes(b) => Some(b.clone()),
    }
}

/// Encodes rows (all of one row type) as one batch.
pub unsafe fn encode(desc: pg_sys::TupleDesc, rows: &[Vec<Value>]) -> Vec<u8> {
    let columns: Vec<Vec<u8>> = attributes(desc)
        .iter()
        .enumerate()
        .map(|(i, attribute)| match kind(attribute) {
            Kind::Dropped => Vec::new(),
            Kind::Word => codec::encode_i64s(
                &rows.iter().map(|row| if let Value::Word(w) = row[i] { Some(w) } else { None }).collect::<Vec<_>>(),
            ),
            _ => codec::encode_bytes(
                &rows
                    .iter()
                    .map(|row| if let Value::Bytes(b) = &row[i] { Some(b.as_slice()) } else { None })
                    .collect::<Vec<_>>(),
            ),
        })
        .collect();
    codec::encode_batch(&columns)
}

enum Column {
    Words(Vec<Option<i64>>),
    Bytes(Vec<Option<Vec<u8>>>),
    /// not in the batch: the attribute's missing value (NULL, or ADD COLUMN's default)
    Missing,
}

/// A batch decoded, ready to be read row by row into slots.
pub struct Batch {
    pub rows: usize,
    columns: Vec<Column>,
}

impl Batch {
    pub unsafe fn decode(desc: pg_sys::TupleDesc, bytes: &[u8]) -> Batch {
        let streams = codec::decode_batch(bytes).unwrap_or_else(|e| error!("lacaja_analytics: {e}"));
        let mut rows = None;
        let columns = attributes(desc)
            .iter()
            .enumerate()
            .map(|(i, attribute)| {
                let stream = match streams.get(i) {
                    Some(stream) if !stream.is_empty() => *stream,
                    _ => return Column::Missing,
                };
                let column = match kind(attribute) {
                    Kind::Dropped => Column::Missing,
                    Kind::Word => Column::Words(codec::decode_i64s(stream).unwrap_or_else(|e| error!("lacaja_analytics: {e}"))),
                    _ => Column::Bytes(codec::decode_bytes(stream).unwrap_or_else(|e| error!("lacaja_analytics: {e}"))),
                };
                let len = match &column {
                    Column::Words(v) => Some(v.len()),
                    Column::Bytes(v) => Some(v.len()),
                    Column::Missing => None,
                };
                if let Some(len) = len {
                    if *rows.get_or_insert(len) != len {
                        error!("lacaja_analytics: a compressed batch's columns disagree on its row count");
                    }
                }
                column
            })
            .collect();
        Batch { rows: rows.unwrap_or(0), columns }
    }

    /// Stores row `row` into `slot` as a virtual tuple; by-reference values are allocated in
    /// the current memory context, which the caller resets before the next row.
    pub unsafe fn store_row(&self, row: usize, slot: *mut pg_sys::TupleTableSlot) {
        pg_sys::ExecClearTuple(slot);
        let desc = (*slot).tts_tupleDescriptor;
        let natts = (*desc).natts as usize;
        let values = std::slice::from_raw_parts_mut((*slot).tts_values, natts);
        let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, natts);
        for (i, attribute) in attributes(desc).iter().enumerate() {
            let (value, null) = match self.columns.get(i).unwrap_or(&Column::Missing) {
                Column::Missing => {
                    let mut null = true;
                    let value = if attribute.attisdropped {
                        pg_sys::Datum::from(0usize)
                    } else {
                        pg_sys::getmissingattr(desc, (i + 1) as i32, &mut null)
                    };
                    (value, null)
                }
                Column::Words(words) => match words[row] {
                    Some(word) => (pg_sys::Datum::from(word as usize), false),
                    None => (pg_sys::Datum::from(0usize), true),
                },
                Column::Bytes(bytes) => match &bytes[row] {
                    Some(b) => (datum_of_bytes(kind(attribute), b), false),
                    None => (pg_sys::Datum::from(0usize), true),
                },
            };
            values[i] = value;
            nulls[i] = null;
        }
        pg_sys::ExecStoreVirtualTuple(slot);
    }
}

unsafe fn datum_of_bytes(kind: Kind, bytes: &[u8]) -> pg_sys::Datum {
    match kind {
        Kind::Varlena => {
            let total = bytes.len() + pg_sys::VARHDRSZ;
            let ptr = pg_sys::palloc(total) as *mut pg_sys::varlena;
            pgrx::varlena::set_varsize_4b(ptr, total as i32);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), (ptr as *mut u8).add(pg_sys::VARHDRSZ), bytes.len());
            pg_sys::Datum::from(ptr)
        }
        Kind::CString => {
            let ptr = pg_sys::palloc(bytes.len() + 1) as *mut u8;
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len());
            *ptr.add(bytes.len()) = 0;
            pg_sys::Datum::from(ptr)
        }
        _ => {
            let ptr = pg_sys::palloc(bytes.len().max(1)) as *mut u8;
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len());
            pg_sys::Datum::from(ptr)
        }
    }
}
