//! The capture triggers: statement-level, with transition tables, read here without SQL.
//! Each copies the columns the rollups need into the transaction's capture (see `mod.rs`) and
//! returns; nothing in them can fail on what a sale carries (values are copied, not parsed).

use std::collections::HashSet;

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::{record, Id, ItemRow, Location, SaleRow, StockRow};

/// The transition tables of one trigger call and the table's row type.
struct Transition {
    desc: pg_sys::TupleDesc,
    old: *mut pg_sys::Tuplestorestate,
    new: *mut pg_sys::Tuplestorestate,
}

impl Transition {
    fn of(trigger: &PgTrigger) -> Transition {
        let data = trigger.trigger_data();
        let is_ours = trigger.name().map(|n| n.starts_with("lacaja_analytics_")).unwrap_or(false);
        if !is_ours || data.tg_trigger.is_null() {
            pgrx::error!("this function is one of lacaja_analytics' capture triggers; it cannot be attached by hand");
        }
        Transition { desc: unsafe { (*data.tg_relation).rd_att }, old: data.tg_oldtable, new: data.tg_newtable }
    }

    /// The column's number, when the table has it (not dropped) with type `expected`
    /// (`InvalidOid`: any type).
    fn column(&self, name: &str, expected: pg_sys::Oid) -> Option<i32> {
        super::column_number(self.desc, name, expected)
    }

    /// Reads `table` (old or new rows) in the order Postgres stored them.
    fn reader(&self, table: *mut pg_sys::Tuplestorestate) -> Reader {
        if table.is_null() {
            return Reader { table, slot: std::ptr::null_mut(), pointer: 0 };
        }
        unsafe {
            let slot = pg_sys::MakeSingleTupleTableSlot(self.desc, &pg_sys::TTSOpsMinimalTuple);
            // A read pointer of our own, rewound: other triggers of the statement read the
            // same tuplestore with theirs.
            let pointer = pg_sys::tuplestore_alloc_read_pointer(table, pg_sys::EXEC_FLAG_REWIND as i32);
            pg_sys::tuplestore_select_read_pointer(table, pointer);
            pg_sys::tuplestore_rescan(table);
            Reader { table, slot, pointer }
        }
    }

    /// The distinct values of uuid column `name` in the old and new rows.
    fn distinct_ids(&self, name: &str) -> HashSet<Id> {
        let column = self.column(name, pg_sys::UUIDOID);
        let mut ids = HashSet::new();
        for rows in [self.old, self.new] {
            self.rows(rows, |row| ids.extend(row.uuid(column)));
        }
        ids
    }

    /// Calls `each` for every row of `table`.
    fn rows(&self, table: *mut pg_sys::Tuplestorestate, mut each: impl FnMut(&Row)) {
        let mut reader = self.reader(table);
        while let Some(row) = reader.next() {
            each(&row);
        }
    }
}

/// A cursor over a transition table (the old and new tables of an update are read in step).
struct Reader {
    table: *mut pg_sys::Tuplestorestate,
    slot: *mut pg_sys::TupleTableSlot,
    pointer: i32,
}

impl Reader {
    /// The next row; valid until the next call.
    fn next(&mut self) -> Option<Row> {
        if self.table.is_null() {
            return None;
        }
        unsafe {
            pg_sys::tuplestore_select_read_pointer(self.table, self.pointer);
            pg_sys::tuplestore_gettupleslot(self.table, true, false, self.slot).then_some(Row { slot: self.slot })
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if !self.slot.is_null() {
            unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.slot) };
        }
    }
}

/// One transition row.
struct Row {
    slot: *mut pg_sys::TupleTableSlot,
}

impl Row {
    fn datum(&self, column: Option<i32>) -> Option<pg_sys::Datum> {
        let column = column?;
        let mut is_null = false;
        let datum = unsafe { pg_sys::slot_getattr(self.slot, column, &mut is_null) };
        (!is_null).then_some(datum)
    }

    fn is_null(&self, column: Option<i32>) -> bool {
        self.datum(column).is_none()
    }

    fn uuid(&self, column: Option<i32>) -> Option<Id> {
        self.datum(column).map(|d| unsafe { *(d.cast_mut_ptr::<Id>()) })
    }

    fn boolean(&self, column: Option<i32>) -> Option<bool> {
        self.datum(column).map(|d| d.value() != 0)
    }

    fn time(&self, column: Option<i32>) -> Option<i64> {
        self.datum(column).map(|d| d.value() as i64)
    }

    /// A varlena column (jsonb) detoasted and copied with a 4-byte header.
    fn varlena(&self, column: Option<i32>) -> Option<Box<[u8]>> {
        self.datum(column).map(|d| unsafe {
            let original = d.cast_mut_ptr::<pg_sys::varlena>();
            let plain = pg_sys::pg_detoast_datum(original);
            let size = pgrx::varlena::varsize_any(plain);
            let copy: Box<[u8]> = std::slice::from_raw_parts(plain as *const u8, size).into();
            if plain != original {
                pg_sys::pfree(plain.cast());
            }
            copy
        })
    }

    /// Any column as its text (output function of its type).
    fn text(&self, column: Option<i32>, desc: pg_sys::TupleDesc) -> Option<String> {
        let column = column?;
        let datum = self.datum(Some(column))?;
        unsafe {
            let attribute = &(*desc).attrs.as_slice((*desc).natts as usize)[column as usize - 1];
            let (mut output, mut is_varlena) = (pg_sys::InvalidOid, false);
            pg_sys::getTypeOutputInfo(attribute.atttypid, &mut output, &mut is_varlena);
            let text = pg_sys::OidOutputFunctionCall(output, datum);
            let owned = std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned();
            pg_sys::pfree(text.cast());
            Some(owned)
        }
    }
}

fn none() -> Result<Option<PgHeapTuple<'static, pgrx::AllocatedByPostgres>>, PgTriggerError> {
    Ok(None)
}

/// The columns of `sales` the rollups read, and how validity is decided (trigger argument,
/// from attach(): `voided_at`, `status`, `status_voided_at` or `all`).
struct SalesColumns {
    id: Option<i32>,
    store: Option<i32>,
    sold_at: Option<i32>,
    customer: Option<i32>,
    totals: Option<i32>,
    payment: Option<i32>,
    voided_at: Option<i32>,
    status: Option<i32>,
}

impl SalesColumns {
    fn of(table: &Transition, validity: &str) -> SalesColumns {
        let uses = |c: &str| validity.contains(c);
        SalesColumns {
            id: table.column("id", pg_sys::UUIDOID),
            store: table.column("store_id", pg_sys::UUIDOID),
            sold_at: table.column("sold_at", pg_sys::TIMESTAMPTZOID),
            customer: table.column("customer_id", pg_sys::UUIDOID),
            totals: table.column("totals", pg_sys::JSONBOID),
            payment: table.column("payment", pg_sys::JSONBOID),
            voided_at: if uses("voided_at") { table.column("voided_at", pg_sys::InvalidOid) } else { None },
            status: if uses("status") { table.column("status", pg_sys::InvalidOid) } else { None },
        }
    }

    fn valid(&self, row: &Row, table: &Transition) -> bool {
        (self.voided_at.is_none() || row.is_null(self.voided_at))
            && (self.status.is_none() || row.text(self.status, table.desc).as_deref() == Some("completed"))
    }

    fn read(&self, row: &Row, table: &Transition, sign: i32) -> Option<SaleRow> {
        let id = row.uuid(self.id)?;
        let store = row.uuid(self.store);
        let sold_at = row.time(self.sold_at);
        let valid = self.valid(row, table);
        Some(SaleRow {
            sign,
            id,
            store,
            sold_at,
            customer: row.uuid(self.customer),
            totals: row.varlena(self.totals),
            payment: row.varlena(self.payment),
            counts: valid && store.is_some() && sold_at.is_some(),
        })
    }
}

/// Whether two versions of a sale put its items in the same place and state.
fn same_place(old: &SaleRow, new: &SaleRow) -> bool {
    old.id == new.id && old.store == new.store && old.sold_at == new.sold_at && old.counts == new.counts
}

fn same_measure(old: &SaleRow, new: &SaleRow) -> bool {
    same_place(old, new) && old.customer == new.customer && old.totals == new.totals && old.payment == new.payment
}

/// Rows of one statement's chunk: old rows count −1 and new rows +1 where they differ;
/// sales whose place or validity changed get their item facts recomputed at commit.
fn record_sales(old: Vec<SaleRow>, new: Vec<SaleRow>, is_insert: bool) {
    let paired = !old.is_empty() && old.len() == new.len() && old.iter().zip(&new).all(|(o, n)| o.id == n.id);
    record(|frame, inserted_below| {
        let inserted = |id: &Id| frame.new_sales.contains(id) || inserted_below(id);
        let mut changed: Vec<(Id, Option<Location>)> = Vec::new();
        if paired {
            for (o, n) in old.into_iter().zip(new) {
                if !same_place(&o, &n) && !inserted(&o.id) {
                    changed.push((o.id, Some(Location { store: o.store, sold_at: o.sold_at })));
                }
                if same_measure(&o, &n) {
                    continue;
                }
                if o.counts {
                    frame.sales.push(o);
                }
                frame.sales.push(n);
            }
        } else {
            for o in old {
                if !inserted(&o.id) {
                    changed.push((o.id, Some(Location { store: o.store, sold_at: o.sold_at })));
                }
                if o.counts {
                    frame.sales.push(o);
                }
            }
            for n in new {
                if is_insert {
                    frame.new_sales.insert(n.id);
                } else if !frame.new_sales.contains(&n.id) && !inserted_below(&n.id) {
                    changed.push((n.id, None));
                }
                frame.sales.push(n);
            }
        }
        for (id, from) in changed {
            frame.changed_sales.push(id);
            if let Some(from) = from {
                frame.moved_from.push((id, from));
            }
        }
    });
}

/// The columns of `sale_items` the item facts read, when all are there with the types the
/// direct fold handles.
struct ItemColumns {
    id: i32,
    sale_id: i32,
    product: i32,
    qty: i32,
    unit_price_bs: i32,
    unit_price_usd: i32,
    discount_bs: i32,
    discount_usd: i32,
    weight: i32,
}

impl ItemColumns {
    fn of(table: &Transition) -> Option<ItemColumns> {
        let numeric = |name| table.column(name, pg_sys::NUMERICOID);
        Some(ItemColumns {
            id: table.column("id", pg_sys::UUIDOID)?,
            sale_id: table.column("sale_id", pg_sys::UUIDOID)?,
            product: table.column("product_id", pg_sys::UUIDOID)?,
            qty: numeric("qty")?,
            unit_price_bs: numeric("unit_price_bs")?,
            unit_price_usd: numeric("unit_price_usd")?,
            discount_bs: numeric("discount_bs")?,
            discount_usd: numeric("discount_usd")?,
            weight: table.column("is_weight_product", pg_sys::BOOLOID)?,
        })
    }

    /// The item, unless it has no id or sale (then no fact is made of it).
    fn read(&self, row: &Row) -> Option<ItemRow> {
        Some(ItemRow {
            id: row.uuid(Some(self.id))?,
            sale_id: row.uuid(Some(self.sale_id))?,
            product: row.uuid(Some(self.product)),
            qty: row.varlena(Some(self.qty)),
            unit_price_bs: row.varlena(Some(self.unit_price_bs)),
            unit_price_usd: row.varlena(Some(self.unit_price_usd)),
            discount_bs: row.varlena(Some(self.discount_bs)),
            discount_usd: row.varlena(Some(self.discount_usd)),
            weight: row.datum(Some(self.weight)).map(|d| d.value() != 0),
        })
    }
}

/// Rows read from a transition table before they are handed over.
const CHUNK_ROWS: usize = 5_000;

#[pg_schema]
mod analytics_internal {
    use super::*;

    /// `sales`: the sales rollups (rows) and, for sales whose place or validity changed, the
    /// item facts (ids). Argument: how validity is decided.
    #[pg_trigger]
    fn _capture_sales<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, PgTriggerError> {
        let table = Transition::of(trigger);
        let validity = trigger.extra_args()?.into_iter().next().unwrap_or_else(|| "voided_at".into());
        let columns = SalesColumns::of(&table, &validity);
        let is_insert = table.old.is_null();
        let (mut old_rows, mut new_rows) = (table.reader(table.old), table.reader(table.new));
        // In chunks, so that a statement of a million rows folds early instead of holding them.
        loop {
            let (mut old, mut new) = (Vec::new(), Vec::new());
            while old.len() < CHUNK_ROWS && new.len() < CHUNK_ROWS {
                let o = old_rows.next().map(|row| columns.read(&row, &table, -1));
                let n = new_rows.next().map(|row| columns.read(&row, &table, 1));
                if o.is_none() && n.is_none() {
                    break;
                }
                old.extend(o.flatten());
                new.extend(n.flatten());
            }
            if old.is_empty() && new.is_empty() {
                break;
            }
            record_sales(old, new, is_insert);
        }
        none()
    }

    /// `sale_items`: the sales whose item facts change. Items of a sale this transaction
    /// inserted need nothing: its facts are computed at commit from what it then holds — from
    /// the rows copied here (argument `direct`, see `direct.rs`), or by SQL from the source.
    #[pg_trigger]
    fn _capture_items<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, PgTriggerError> {
        let table = Transition::of(trigger);
        let direct = trigger.extra_args()?.first().map(String::as_str) == Some("direct");
        let columns = ItemColumns::of(&table);
        let namespace = unsafe { (*(*trigger.trigger_data().tg_relation).rd_rel).relnamespace };
        if table.old.is_null() && direct && columns.is_some() {
            let columns = columns.expect("checked");
            let mut new_rows = table.reader(table.new);
            loop {
                let mut chunk = Vec::new();
                while chunk.len() < CHUNK_ROWS {
                    let Some(row) = new_rows.next() else { break };
                    chunk.push(columns.read(&row));
                }
                if chunk.is_empty() {
                    break;
                }
                record(|frame, inserted_below| {
                    for item in chunk {
                        let Some(item) = item else { continue };
                        if !frame.new_sales.contains(&item.sale_id) && !inserted_below(&item.sale_id) {
                            frame.changed_sales.push(item.sale_id);
                        } else if !frame.items_by_sql {
                            frame.items_namespace = Some(namespace);
                            frame.new_items.push(item);
                            if frame.new_items.len() > crate::capture::DIRECT_ITEMS {
                                frame.keep_items_for_sql();
                            }
                        }
                    }
                });
            }
            return none();
        }
        let sales = table.distinct_ids("sale_id");
        record(|frame, inserted_below| {
            for id in sales {
                if !frame.new_sales.contains(&id) && !inserted_below(&id) {
                    frame.changed_sales.push(id);
                } else {
                    // Items of a new sale rewritten (or copied from a table without a
                    // column the direct fold reads): what they now hold is read at commit.
                    frame.keep_items_for_sql();
                }
            }
        });
        none()
    }

    /// `sale_return_items`: the items whose returned quantities change.
    #[pg_trigger]
    fn _capture_item_returns<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, PgTriggerError> {
        let table = Transition::of(trigger);
        let items = table.distinct_ids("sale_item_id");
        record(|frame, _| frame.returned_items.extend(items));
        none()
    }

    /// `events`, while streaming to Redis is on (src/streaming.rs): the inserted events into
    /// the stream outbox, in this transaction, copied as stored — no SQL, no output function,
    /// nothing that could fail a sync on what an event carries. A column missing or of another
    /// type than LA-CAJA's gives NULL.
    #[pg_trigger]
    fn _stream_events<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, PgTriggerError> {
        if !crate::streaming::enabled() {
            return none();
        }
        let table = Transition::of(trigger);
        let Some(mut outbox) = crate::capture::direct::StreamOutbox::open() else { return none() };
        let store = table.column("store_id", pg_sys::UUIDOID);
        let event = table.column("event_id", pg_sys::UUIDOID);
        let kind = table.column("type", pg_sys::TEXTOID).or_else(|| table.column("type", pg_sys::VARCHAROID));
        let payload = table.column("payload", pg_sys::JSONBOID);
        let created_at = table.column("created_at", pg_sys::TIMESTAMPTZOID);
        let seq = table.column("seq", pg_sys::INT8OID);
        let seq_int4 = table.column("seq", pg_sys::INT4OID);
        let mut rows = table.reader(table.new);
        while let Some(row) = rows.next() {
            let seq = row.datum(seq).or_else(|| row.datum(seq_int4).map(|d| pg_sys::Datum::from(d.value() as i32 as i64)));
            outbox.push([row.datum(store), row.datum(event), row.datum(kind), row.datum(payload), row.datum(created_at), seq]);
        }
        none()
    }

    /// `inventory_movements` (argument `movements`) or `products` (`current_stock`).
    #[pg_trigger]
    fn _capture_stock<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, PgTriggerError> {
        let table = Transition::of(trigger);
        let current_stock = trigger.extra_args()?.first().map(String::as_str) == Some("current_stock");
        let store = table.column("store_id", pg_sys::UUIDOID);
        let (product, qty) = if current_stock {
            (table.column("id", pg_sys::UUIDOID), table.column("current_stock", pg_sys::InvalidOid))
        } else {
            (table.column("product_id", pg_sys::UUIDOID), table.column("qty_delta", pg_sys::InvalidOid))
        };
        // A movement's warehouse and escrow flag, when the table has them with these types
        // (the SQL reads the same: analytics_internal._capture_columns).
        let (warehouse, escrow) = if current_stock {
            (None, None)
        } else {
            (table.column("warehouse_id", pg_sys::UUIDOID), table.column("from_escrow", pg_sys::BOOLOID))
        };
        let read = |row: &Row, sign: i32| -> Option<StockRow> {
            Some(StockRow {
                sign,
                store: row.uuid(store)?,
                warehouse: row.uuid(warehouse),
                product: row.uuid(product)?,
                qty: row.text(qty, table.desc),
                escrow: row.boolean(escrow).unwrap_or(false),
            })
        };
        let unchanged = |o: &Option<StockRow>, n: &Option<StockRow>| match (o, n) {
            (Some(o), Some(n)) => {
                o.store == n.store && o.warehouse == n.warehouse && o.product == n.product && o.qty == n.qty && o.escrow == n.escrow
            }
            (None, None) => true,
            _ => false,
        };
        // Old and new rows in step, in chunks (a movement import of a million rows folds early).
        // A pair of equal rows nets to zero whichever rows they are, so it is skipped.
        let (mut old_rows, mut new_rows) = (table.reader(table.old), table.reader(table.new));
        loop {
            let mut pairs: Vec<(Option<StockRow>, Option<StockRow>)> = Vec::new();
            while pairs.len() < CHUNK_ROWS {
                let o = old_rows.next().map(|row| read(&row, -1));
                let n = new_rows.next().map(|row| read(&row, 1));
                if o.is_none() && n.is_none() {
                    break;
                }
                pairs.push((o.flatten(), n.flatten()));
            }
            if pairs.is_empty() {
                break;
            }
            record(|frame, _| {
                for (o, n) in pairs {
                    if !unchanged(&o, &n) {
                        frame.stock.extend(o);
                        frame.stock.extend(n);
                    }
                }
            });
        }
        none()
    }
}
