//! The scan of a compressed chunk that skips batches: a custom scan node, planned for each
//! compressed chunk beside the sequential scan, that reads the conditions of the query on the
//! chunk's segment column (`store_id = …`) and order column (`created_at >= … AND < …`) and
//! gives them to the access method as a [`BatchFilter`]: a one-store one-day question reads
//! that store's batches of that day, not the whole chunk.
//!
//! Only what is certain is used: a comparison of the column with a value known when the scan
//! starts (a constant, a parameter, `now() - interval '30 days'`) by
//! an operator of its type's default btree family; every condition is still checked on each
//! row returned (the node's qual), so the filter only decides which batches are decoded.
//! Parameters are read when the scan starts (and again on a rescan), as an index scan does.

use super::am::{self, BatchFilter};
use super::batch;
use super::store;
use pgrx::pg_sys;
use pgrx::prelude::*;

static mut PREVIOUS_SET_REL_PATHLIST: pg_sys::set_rel_pathlist_hook_type = None;
static mut PATH_METHODS: Option<pg_sys::CustomPathMethods> = None;
static mut SCAN_METHODS: Option<pg_sys::CustomScanMethods> = None;
static mut EXEC_METHODS: Option<pg_sys::CustomExecMethods> = None;

const NAME: &std::ffi::CStr = c"CompressedChunkScan";

/// What a pushed condition says of the column: `custom_private` holds (column, strategy) pairs,
/// `custom_exprs` the values in the same order.
const SEGMENT: i32 = 0;
const ORDER: i32 = 1;

pub fn init() {
    unsafe {
        PATH_METHODS = Some(pg_sys::CustomPathMethods {
            CustomName: NAME.as_ptr(),
            PlanCustomPath: Some(plan_path),
            ReparameterizeCustomPathByChild: None,
        });
        SCAN_METHODS = Some(pg_sys::CustomScanMethods { CustomName: NAME.as_ptr(), CreateCustomScanState: Some(create_state) });
        EXEC_METHODS = Some(pg_sys::CustomExecMethods {
            CustomName: NAME.as_ptr(),
            BeginCustomScan: Some(begin),
            ExecCustomScan: Some(exec),
            EndCustomScan: Some(end),
            ReScanCustomScan: Some(rescan),
            ..Default::default()
        });
        pg_sys::RegisterCustomScanMethods(scan_methods());
        PREVIOUS_SET_REL_PATHLIST = pg_sys::set_rel_pathlist_hook;
        pg_sys::set_rel_pathlist_hook = Some(add_compressed_path);
    }
}

unsafe fn path_methods() -> *const pg_sys::CustomPathMethods {
    (*std::ptr::addr_of!(PATH_METHODS)).as_ref().unwrap()
}
unsafe fn scan_methods() -> *const pg_sys::CustomScanMethods {
    (*std::ptr::addr_of!(SCAN_METHODS)).as_ref().unwrap()
}
unsafe fn exec_methods() -> *const pg_sys::CustomExecMethods {
    (*std::ptr::addr_of!(EXEC_METHODS)).as_ref().unwrap()
}

unsafe fn list_items<T>(list: *mut pg_sys::List) -> Vec<*mut T> {
    if list.is_null() {
        return Vec::new();
    }
    (0..(*list).length as usize).map(|i| (*(*list).elements.add(i)).ptr_value as *mut T).collect()
}

unsafe fn list_ints(list: *mut pg_sys::List) -> Vec<i32> {
    if list.is_null() {
        return Vec::new();
    }
    (0..(*list).length as usize).map(|i| (*(*list).elements.add(i)).int_value).collect()
}

/// A condition `column op value` (or `value op column`) this node can use: (which column,
/// btree strategy as if the column were on the left, the value).
unsafe fn pushable(
    clause: *mut pg_sys::Node,
    relid: u32,
    columns: &[(i32, pg_sys::AttrNumber, pg_sys::Oid)],
) -> Option<(i32, i32, *mut pg_sys::Node)> {
    if (*clause).type_ != pg_sys::NodeTag::T_OpExpr {
        return None;
    }
    let op = clause as *mut pg_sys::OpExpr;
    let args = list_items::<pg_sys::Node>((*op).args);
    if args.len() != 2 {
        return None;
    }
    // a value known when the scan starts: constants, parameters, and expressions of them such
    // as now() - interval '30 days' (stable, read once, as an index scan reads its keys)
    let is_value = |n: *mut pg_sys::Node| {
        !pg_sys::contain_var_clause(n) && !pg_sys::contain_volatile_functions(n) && !pg_sys::contain_subplans(n)
    };
    let (var, value, commuted) = if (*args[0]).type_ == pg_sys::NodeTag::T_Var && is_value(args[1]) {
        (args[0] as *mut pg_sys::Var, args[1], false)
    } else if (*args[1]).type_ == pg_sys::NodeTag::T_Var && is_value(args[0]) {
        (args[1] as *mut pg_sys::Var, args[0], true)
    } else {
        return None;
    };
    if (*var).varno as u32 != relid || (*var).varlevelsup != 0 || pg_sys::exprType(value) != (*var).vartype {
        return None;
    }
    let &(kind, _, type_oid) = columns.iter().find(|(_, attnum, _)| *attnum == (*var).varattno)?;
    let opclass = pg_sys::GetDefaultOpClass(type_oid, pg_sys::Oid::from(pg_sys::BTREE_AM_OID));
    if opclass == pg_sys::InvalidOid {
        return None;
    }
    let strategy = pg_sys::get_op_opfamily_strategy((*op).opno, pg_sys::get_opclass_family(opclass));
    let strategy = match (strategy, commuted) {
        (0, _) => return None,
        (s, false) => s,
        (s, true) => 6 - s, // a < col  is  col > a
    };
    if kind == SEGMENT && strategy != pg_sys::BTEqualStrategyNumber as i32 {
        return None;
    }
    Some((kind, strategy, value))
}

/// The chunk's segment and order columns: (kind, attribute number, type).
unsafe fn compressed_columns(relation: pg_sys::Relation) -> Vec<(i32, pg_sys::AttrNumber, pg_sys::Oid)> {
    let Some((segment_by, order_by)) = store::compression_columns((*relation).rd_id) else {
        return Vec::new();
    };
    let desc = (*relation).rd_att;
    let attributes = (*desc).attrs.as_slice((*desc).natts as usize);
    let find = |name: &str| {
        attributes.iter().find(|a| !a.attisdropped && std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == name.as_bytes())
    };
    let mut columns = Vec::new();
    if let Some(a) = segment_by.as_deref().and_then(find) {
        columns.push((SEGMENT, a.attnum, a.atttypid));
    }
    if let Some(a) = find(&order_by) {
        columns.push((ORDER, a.attnum, a.atttypid));
    }
    columns
}

#[pg_guard]
unsafe extern "C-unwind" fn add_compressed_path(
    root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    rti: pg_sys::Index,
    rte: *mut pg_sys::RangeTblEntry,
) {
    if let Some(previous) = PREVIOUS_SET_REL_PATHLIST {
        previous(root, rel, rti, rte);
    }
    if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION || (*rte).inh || !(*rel).lateral_relids.is_null() {
        return;
    }
    let relation = pg_sys::RelationIdGetRelation((*rte).relid);
    if relation.is_null() {
        return;
    }
    let compressed = am::is_compressed(relation);
    let columns = if compressed { compressed_columns(relation) } else { Vec::new() };
    pg_sys::RelationClose(relation);
    if !compressed {
        return;
    }
    let seq_scan = list_items::<pg_sys::Path>((*rel).pathlist)
        .into_iter()
        .find(|p| (**p).pathtype == pg_sys::NodeTag::T_SeqScan && (**p).param_info.is_null());
    let Some(seq_scan) = seq_scan else { return };
    let restrictions = list_items::<pg_sys::RestrictInfo>((*rel).baserestrictinfo);
    let narrowing = restrictions.iter().any(|r| pushable((**r).clause as *mut pg_sys::Node, (*rel).relid, &columns).is_some());
    let path = pg_sys::palloc0(std::mem::size_of::<pg_sys::CustomPath>()) as *mut pg_sys::CustomPath;
    (*path).path.type_ = pg_sys::NodeTag::T_CustomPath;
    (*path).path.pathtype = pg_sys::NodeTag::T_CustomScan;
    (*path).path.parent = rel;
    (*path).path.pathtarget = (*rel).reltarget;
    (*path).path.rows = (*seq_scan).rows;
    // one process reads the whole chunk (a non-partial branch of a Parallel Append)
    (*path).path.parallel_safe = (*rel).consider_parallel;
    // the batches a condition rules out are never decoded: such a scan reads a fraction of
    // the chunk (a store's, a day's); without one it reads as much as the sequential scan
    let fraction = if narrowing { 0.1 } else { 0.99 };
    (*path).path.startup_cost = (*seq_scan).startup_cost;
    (*path).path.total_cost = (*seq_scan).startup_cost + ((*seq_scan).total_cost - (*seq_scan).startup_cost) * fraction;
    (*path).methods = path_methods();
    pg_sys::add_path(rel, path as *mut pg_sys::Path);
}

#[pg_guard]
unsafe extern "C-unwind" fn plan_path(
    root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    best_path: *mut pg_sys::CustomPath,
    tlist: *mut pg_sys::List,
    clauses: *mut pg_sys::List,
    _custom_plans: *mut pg_sys::List,
) -> *mut pg_sys::Plan {
    let scan = pg_sys::palloc0(std::mem::size_of::<pg_sys::CustomScan>()) as *mut pg_sys::CustomScan;
    (*scan).scan.plan.type_ = pg_sys::NodeTag::T_CustomScan;
    (*scan).scan.plan.targetlist = tlist;
    (*scan).scan.plan.qual = pg_sys::extract_actual_clauses(clauses, false);
    (*scan).scan.scanrelid = (*rel).relid;
    (*scan).flags = (*best_path).flags;
    (*scan).methods = scan_methods();
    let rte = *(*root).simple_rte_array.add((*rel).relid as usize);
    let relation = pg_sys::RelationIdGetRelation((*rte).relid);
    let columns = compressed_columns(relation);
    pg_sys::RelationClose(relation);
    for restriction in list_items::<pg_sys::RestrictInfo>(clauses) {
        if let Some((kind, strategy, value)) = pushable((*restriction).clause as *mut pg_sys::Node, (*rel).relid, &columns) {
            let attnum = columns.iter().find(|c| c.0 == kind).unwrap().1;
            (*scan).custom_private = pg_sys::lappend_int((*scan).custom_private, kind);
            (*scan).custom_private = pg_sys::lappend_int((*scan).custom_private, strategy);
            (*scan).custom_private = pg_sys::lappend_int((*scan).custom_private, attnum as i32);
            (*scan).custom_exprs = pg_sys::lappend((*scan).custom_exprs, pg_sys::copyObjectImpl(value as *const _));
        }
    }
    scan as *mut pg_sys::Plan
}

#[repr(C)]
struct CompressedScanState {
    css: pg_sys::CustomScanState,
    values: *mut pg_sys::List,
    scan: pg_sys::TableScanDesc,
}

#[pg_guard]
unsafe extern "C-unwind" fn create_state(cscan: *mut pg_sys::CustomScan) -> *mut pg_sys::Node {
    let state = pg_sys::palloc0(std::mem::size_of::<CompressedScanState>()) as *mut CompressedScanState;
    (*state).css.ss.ps.type_ = pg_sys::NodeTag::T_CustomScanState;
    (*state).css.flags = (*cscan).flags;
    (*state).css.methods = exec_methods();
    state as *mut pg_sys::Node
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(node: *mut pg_sys::CustomScanState, estate: *mut pg_sys::EState, _eflags: i32) {
    let state = node as *mut CompressedScanState;
    let cscan = (*node).ss.ps.plan as *mut pg_sys::CustomScan;
    // Postgres 15 gives a custom scan a virtual slot; the chunk's rows come in its own kind
    // (heap's buffer slots), so the slot, and the qual and projection compiled for a slot
    // kind, are made again for it
    let relation = (*node).ss.ss_currentRelation;
    pg_sys::ExecInitScanTupleSlot(estate, &mut (*node).ss, (*relation).rd_att, pg_sys::table_slot_callbacks(relation));
    pg_sys::ExecAssignScanProjectionInfoWithVarno(&mut (*node).ss, (*cscan).scan.scanrelid as i32);
    (*node).ss.ps.qual = pg_sys::ExecInitQual((*cscan).scan.plan.qual, node as *mut pg_sys::PlanState);
    (*state).values = pg_sys::ExecInitExprList((*cscan).custom_exprs, node as *mut pg_sys::PlanState);
}

/// The filter the pushed conditions give, their values read now.
unsafe fn filter_of(state: *mut CompressedScanState) -> BatchFilter {
    let cscan = (*state).css.ss.ps.plan as *mut pg_sys::CustomScan;
    let private = list_ints((*cscan).custom_private);
    let values = list_items::<pg_sys::ExprState>((*state).values);
    let econtext = (*state).css.ss.ps.ps_ExprContext;
    let relation = (*state).css.ss.ss_currentRelation;
    let desc = (*relation).rd_att;
    let mut filter = BatchFilter::default();
    for (i, value_state) in values.into_iter().enumerate() {
        let (kind, strategy, attnum) = (private[i * 3], private[i * 3 + 1], private[i * 3 + 2]);
        let mut is_null = false;
        let datum = pg_sys::ExecEvalExprSwitchContext(value_state, econtext, &mut is_null);
        if is_null {
            filter.nothing = true;
            continue;
        }
        let attribute = &(*desc).attrs.as_slice((*desc).natts as usize)[attnum as usize - 1];
        let value = batch::value_of_datum(attribute, datum);
        if kind == SEGMENT {
            filter.segment = batch::segment_bytes(&value);
            continue;
        }
        let batch::Value::Word(word) = value else { continue };
        // bounds kept inclusive: the rows of kept batches are checked against the condition
        if strategy >= pg_sys::BTEqualStrategyNumber as i32 {
            filter.min_order = Some(filter.min_order.map_or(word, |m| m.max(word)));
        }
        if strategy <= pg_sys::BTEqualStrategyNumber as i32 {
            filter.max_order = Some(filter.max_order.map_or(word, |m| m.min(word)));
        }
    }
    filter
}

#[pg_guard]
unsafe extern "C-unwind" fn next_row(node: *mut pg_sys::ScanState) -> *mut pg_sys::TupleTableSlot {
    let state = node as *mut CompressedScanState;
    let relation = (*node).ss_currentRelation;
    let routine = &*(*relation).rd_tableam;
    if (*state).scan.is_null() {
        let estate = (*node).ps.state;
        let filter = filter_of(state);
        (*state).scan = routine.scan_begin.unwrap()(
            relation,
            (*estate).es_snapshot,
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            pg_sys::ScanOptions::SO_TYPE_SEQSCAN | pg_sys::ScanOptions::SO_ALLOW_STRAT | pg_sys::ScanOptions::SO_ALLOW_SYNC
                | pg_sys::ScanOptions::SO_ALLOW_PAGEMODE,
        );
        am::set_batch_filter((*state).scan, filter);
    }
    let slot = (*node).ss_ScanTupleSlot;
    if routine.scan_getnextslot.unwrap()((*state).scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
        (*slot).tts_tableOid = (*relation).rd_id;
        slot
    } else {
        std::ptr::null_mut()
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn recheck(_node: *mut pg_sys::ScanState, _slot: *mut pg_sys::TupleTableSlot) -> bool {
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn exec(node: *mut pg_sys::CustomScanState) -> *mut pg_sys::TupleTableSlot {
    pg_sys::ExecScan(&mut (*node).ss, Some(next_row), Some(recheck))
}

unsafe fn end_table_scan(state: *mut CompressedScanState) {
    if !(*state).scan.is_null() {
        let relation = (*state).css.ss.ss_currentRelation;
        (*(*relation).rd_tableam).scan_end.unwrap()((*state).scan);
        (*state).scan = std::ptr::null_mut();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn end(node: *mut pg_sys::CustomScanState) {
    end_table_scan(node as *mut CompressedScanState);
}

/// A rescan reads its parameters again (a nested loop's inner side): the next row starts anew.
#[pg_guard]
unsafe extern "C-unwind" fn rescan(node: *mut pg_sys::CustomScanState) {
    end_table_scan(node as *mut CompressedScanState);
    pg_sys::ExecScanReScan(&mut (*node).ss);
}
