//! The side tables a compressed chunk keeps its batches in (compression.sql), read directly
//! through their primary keys with the snapshot of the scan that asks, so that a batch and the
//! chunk's own rows are always seen as of the same instant: a reader never sees a row twice
//! (in the heap and in a batch) or not at all while a chunk is compressed or decompressed.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

/// A row of `compressed_row_deletions`: a compressed row deleted, or updated (its new version
/// is a heap row of the chunk, `moved_to`).
#[derive(Clone, Copy)]
pub struct Deletion {
    pub row: usize,
    pub xmin: pg_sys::TransactionId,
    pub moved_to: Option<pg_sys::ItemPointerData>,
}

/// The snapshot that decides which deletions a reader sees: its own when it is an MVCC one;
/// none for SnapshotAny (a trigger fetching the row it just deleted); the latest committed
/// state for the others (a unique check's dirty snapshot): a deletion still in progress then
/// leaves the row standing, so a duplicate is refused rather than let through.
pub enum DeletionsSeen {
    As(pg_sys::Snapshot),
    Ignored,
}

pub unsafe fn deletions_seen(snapshot: pg_sys::Snapshot) -> DeletionsSeen {
    if snapshot.is_null() {
        return DeletionsSeen::As(pg_sys::GetLatestSnapshot());
    }
    match (*snapshot).snapshot_type {
        pg_sys::SnapshotType::SNAPSHOT_MVCC => DeletionsSeen::As(snapshot),
        pg_sys::SnapshotType::SNAPSHOT_ANY => DeletionsSeen::Ignored,
        _ => DeletionsSeen::As(pg_sys::GetLatestSnapshot()),
    }
}

unsafe fn side_table(name: &CStr) -> pg_sys::Oid {
    let schema = pg_sys::get_namespace_oid(c"analytics_internal".as_ptr(), false);
    let relation = pg_sys::get_relname_relid(name.as_ptr(), schema);
    if relation == pg_sys::InvalidOid {
        error!("lacaja_analytics: analytics_internal.{} is missing; run ALTER EXTENSION lacaja_analytics UPDATE", name.to_string_lossy());
    }
    relation
}

/// One index scan of a side table by the leading columns of its primary key, calling `each`
/// with every tuple visible to `snapshot`.
unsafe fn scan_by_key(
    table: &CStr,
    keys: &[(pg_sys::RegProcedure, pg_sys::Datum)],
    snapshot: pg_sys::Snapshot,
    mut each: impl FnMut(pg_sys::HeapTuple, pg_sys::TupleDesc),
) {
    let relation = pg_sys::table_open(side_table(table), pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    let index = pg_sys::RelationGetPrimaryKeyIndex(relation);
    let mut scan_keys: Vec<pg_sys::ScanKeyData> = vec![pg_sys::ScanKeyData::default(); keys.len()];
    for (i, (procedure, value)) in keys.iter().enumerate() {
        pg_sys::ScanKeyInit(
            &mut scan_keys[i],
            (i + 1) as pg_sys::AttrNumber,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            *procedure,
            *value,
        );
    }
    let scan = pg_sys::systable_beginscan(relation, index, true, snapshot, keys.len() as i32, scan_keys.as_mut_ptr());
    loop {
        let tuple = pg_sys::systable_getnext(scan);
        if tuple.is_null() {
            break;
        }
        each(tuple, (*relation).rd_att);
    }
    pg_sys::systable_endscan(scan);
    pg_sys::table_close(relation, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
}

unsafe fn deform<const N: usize>(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> ([pg_sys::Datum; N], [bool; N]) {
    let natts = (*desc).natts as usize;
    let mut values = vec![pg_sys::Datum::from(0usize); natts];
    let mut nulls = vec![true; natts];
    pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
    let mut v = [pg_sys::Datum::from(0usize); N];
    let mut n = [true; N];
    v.copy_from_slice(&values[..N]);
    n.copy_from_slice(&nulls[..N]);
    (v, n)
}

fn oid_key(chunk: pg_sys::Oid) -> (pg_sys::RegProcedure, pg_sys::Datum) {
    (pg_sys::Oid::from(pg_sys::F_OIDEQ), pg_sys::Datum::from(chunk))
}

fn int4_key(value: i32) -> (pg_sys::RegProcedure, pg_sys::Datum) {
    (pg_sys::Oid::from(pg_sys::F_INT4EQ), pg_sys::Datum::from(value))
}

/// A batch as its catalog row describes it: what a scan may skip it by.
pub struct BatchMeta {
    pub id: i32,
    /// the segment value's bytes (as batch.rs stores values); None: NULL or no segment column
    pub segment: Option<Vec<u8>>,
    pub min_order: Option<i64>,
    pub max_order: Option<i64>,
}

/// The chunk's batches, in the order of their ids (the same for every reader of a snapshot).
pub unsafe fn batches(chunk: pg_sys::Oid, snapshot: pg_sys::Snapshot) -> Vec<BatchMeta> {
    let mut found = Vec::new();
    scan_by_key(c"compressed_batches", &[oid_key(chunk)], snapshot, |tuple, desc| {
        // columns: chunk, batch_id, row_count, segment, min_order, max_order (data not read)
        let (values, nulls) = deform::<6>(tuple, desc);
        let segment = (!nulls[3]).then(|| {
            let flat = pg_sys::pg_detoast_datum_packed(values[3].cast_mut_ptr());
            let len = pgrx::varlena::varsize_any_exhdr(flat);
            std::slice::from_raw_parts(pgrx::varlena::vardata_any(flat) as *const u8, len).to_vec()
        });
        found.push(BatchMeta {
            id: values[1].value() as i32,
            segment,
            min_order: (!nulls[4]).then(|| values[4].value() as i64),
            max_order: (!nulls[5]).then(|| values[5].value() as i64),
        });
    });
    found
}

pub unsafe fn batch_ids(chunk: pg_sys::Oid, snapshot: pg_sys::Snapshot) -> Vec<i32> {
    batches(chunk, snapshot).into_iter().map(|b| b.id).collect()
}

/// The segment_by and order_by columns the chunk was compressed with.
pub unsafe fn compression_columns(chunk: pg_sys::Oid) -> Option<(Option<String>, String)> {
    let mut found = None;
    scan_by_key(c"compressed_chunks", &[oid_key(chunk)], pg_sys::GetLatestSnapshot(), |tuple, desc| {
        // columns: chunk, hypertable, segment_by, order_by
        let (values, nulls) = deform::<4>(tuple, desc);
        let name = |d: pg_sys::Datum| std::ffi::CStr::from_ptr(d.cast_mut_ptr::<std::ffi::c_char>()).to_string_lossy().into_owned();
        found = Some(((!nulls[2]).then(|| name(values[2])), name(values[3])));
    });
    found
}

/// A batch's bytes (detoasted), if it exists in `snapshot`.
pub unsafe fn batch_data(chunk: pg_sys::Oid, batch: i32, snapshot: pg_sys::Snapshot) -> Option<Vec<u8>> {
    let mut data = None;
    scan_by_key(c"compressed_batches", &[oid_key(chunk), int4_key(batch)], snapshot, |tuple, desc| {
        // columns: chunk, batch_id, row_count, segment, min_order, max_order, data
        let (values, nulls) = deform::<7>(tuple, desc);
        if !nulls[6] {
            let detoasted = pg_sys::pg_detoast_datum_packed(values[6].cast_mut_ptr());
            let len = pgrx::varlena::varsize_any_exhdr(detoasted);
            let bytes = std::slice::from_raw_parts(pgrx::varlena::vardata_any(detoasted) as *const u8, len);
            data = Some(bytes.to_vec());
        }
    });
    data
}

/// The deletions of a batch's rows seen by `seen`.
pub unsafe fn deletions(chunk: pg_sys::Oid, batch: i32, seen: &DeletionsSeen) -> Vec<Deletion> {
    let snapshot = match seen {
        DeletionsSeen::As(snapshot) => *snapshot,
        DeletionsSeen::Ignored => return Vec::new(),
    };
    let mut found = Vec::new();
    scan_by_key(c"compressed_row_deletions", &[oid_key(chunk), int4_key(batch)], snapshot, |tuple, desc| {
        // columns: chunk, batch_id, row_no, moved_to
        let (values, nulls) = deform::<4>(tuple, desc);
        let moved_to = if nulls[3] { None } else { Some(*(values[3].cast_mut_ptr::<pg_sys::ItemPointerData>())) };
        found.push(Deletion {
            row: values[2].value() as i32 as usize,
            xmin: (*(*tuple).t_data).t_choice.t_heap.t_xmin,
            moved_to,
        });
    });
    found
}

/// Records that a compressed row is gone (deleted, or updated into `moved_to`). The caller
/// holds the batch's row lock, so no other transaction records the same row meanwhile.
pub fn record_deletion(chunk: pg_sys::Oid, batch: i32, row: usize, moved_to: Option<pg_sys::ItemPointerData>) {
    let moved_to = moved_to.map(|tid| {
        format!("({},{})", ((tid.ip_blkid.bi_hi as u32) << 16) | tid.ip_blkid.bi_lo as u32, tid.ip_posid)
    });
    crate::security::as_extension_owner(|| {
        Spi::run_with_args(
            "INSERT INTO analytics_internal.compressed_row_deletions (chunk, batch_id, row_no, moved_to) VALUES ($1, $2, $3, $4::tid)",
            &[chunk.into(), batch.into(), (row as i32).into(), moved_to.into()],
        )
    })
    .unwrap_or_else(|e| error!("lacaja_analytics: could not record the deletion of a compressed row: {e}"));
}

/// What the planner adds for a compressed chunk's batches: their rows and their size in pages.
pub unsafe fn compressed_size(chunk: pg_sys::Oid) -> Option<(f64, f64)> {
    let mut found = None;
    let snapshot = pg_sys::GetLatestSnapshot();
    scan_by_key(c"compressed_chunks", &[oid_key(chunk)], snapshot, |tuple, desc| {
        // columns: chunk, hypertable, segment_by, order_by, row_count, compressed_bytes
        let (values, nulls) = deform::<6>(tuple, desc);
        if !nulls[4] && !nulls[5] {
            found = Some((values[4].value() as i64 as f64, values[5].value() as i64 as f64 / pg_sys::BLCKSZ as f64));
        }
    });
    found
}
