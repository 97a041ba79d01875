//! Columnar compression of old chunks (SPEC §3: compress_chunk, decompress_chunk,
//! add_compression_policy). A compressed chunk stays a partition of its hypertable, with the
//! table access method `lacaja_compressed` (am.rs): its rows in batches of a segment's rows
//! ordered by time, each column through its own codec (codec.rs), the batches in side tables
//! (compression.sql, store.rs). docs/design.md, "Compression", says why this shape.

mod am;
mod batch;
pub mod chunks;
pub mod codec;
mod scan;
mod store;

pub fn init() {
    am::init();
    scan::init();
}
