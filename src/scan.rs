//! Reads every `flex_crew_assignments` row for the dedupe straight from the table's access
//! method, with the statement's snapshot: one sequential scan and no executor or SPI in between,
//! which copied each of a million rows twice (into a result tuple and into SPI's batch) before
//! the hash saw it. The columns are read in their declared types, so the types are checked first.

use flex_sync_core::dedupe::AssignmentRow;
use pgrx::pg_sys;

use crate::error::FlexSyncError;

/// The columns the dedupe reads, with their required types; `scan` reads them by their place here.
const COLUMNS: [(&str, pg_sys::Oid, &str); 5] = [
    ("crew_call_id", pg_sys::UUIDOID, "uuid"),
    ("technician_id", pg_sys::UUIDOID, "uuid"),
    ("created_at", pg_sys::TIMESTAMPTZOID, "timestamp with time zone"),
    ("id", pg_sys::UUIDOID, "uuid"),
    ("flex_line_item_id", pg_sys::UUIDOID, "uuid"),
];

/// Calls `visit` with every row of `table` visible to the active snapshot, in storage order.
/// Refuses when the current user (the SECURITY DEFINER owner) may not read the table or would
/// see it through row-level security: the delete that follows would then act on other rows
/// than the ones decided on.
pub fn scan_assignments(table: pg_sys::Oid, mut visit: impl FnMut(AssignmentRow)) -> Result<(), FlexSyncError> {
    // SAFETY: plain catalog lookups and a scan opened and closed here; a PostgreSQL error raised
    // in between aborts the transaction, whose resource owner closes the scan and the relation.
    unsafe {
        let user = pg_sys::GetUserId();
        if pg_sys::pg_class_aclcheck(table, user, pg_sys::ACL_SELECT as pg_sys::AclMode)
            != pg_sys::AclResult::ACLCHECK_OK
        {
            return Err(FlexSyncError::CannotReadAssignments("the function's owner may not SELECT from it"));
        }
        if pg_sys::check_enable_rls(table, pg_sys::InvalidOid, false) == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 {
            return Err(FlexSyncError::CannotReadAssignments("row-level security applies to the function's owner"));
        }
        let relation = pg_sys::table_open(table, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scanned = column_numbers(relation).and_then(|columns| scan(relation, columns, &mut visit));
        pg_sys::table_close(relation, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        scanned
    }
}

/// Each column's position in the row (0-based), checked against its required type.
unsafe fn column_numbers(relation: pg_sys::Relation) -> Result<[usize; COLUMNS.len()], FlexSyncError> {
    let desc = (*relation).rd_att;
    let attributes = (*desc).attrs.as_slice((*desc).natts as usize);
    let mut numbers = [0; COLUMNS.len()];
    for (number, (name, type_oid, type_name)) in numbers.iter_mut().zip(COLUMNS) {
        let position = attributes
            .iter()
            .position(|a| !a.attisdropped && pg_sys::name_data_to_str(&a.attname) == name)
            .ok_or(FlexSyncError::MissingColumn(name))?;
        if attributes[position].atttypid != type_oid {
            return Err(FlexSyncError::ColumnType { column: name, expected: type_name });
        }
        *number = position;
    }
    Ok(numbers)
}

unsafe fn scan(
    relation: pg_sys::Relation,
    columns: [usize; COLUMNS.len()],
    visit: &mut impl FnMut(AssignmentRow),
) -> Result<(), FlexSyncError> {
    use pg_sys::ScanOptions::*;
    let access_method = &*(*relation).rd_tableam;
    let flags = SO_TYPE_SEQSCAN | SO_ALLOW_STRAT | SO_ALLOW_SYNC | SO_ALLOW_PAGEMODE;
    let scan = access_method.scan_begin.expect("every table access method scans")(
        relation,
        pg_sys::GetActiveSnapshot(),
        0,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        flags,
    );
    let next = access_method.scan_getnextslot.expect("every table access method scans");
    let slot = pg_sys::table_slot_create(relation, std::ptr::null_mut());
    let needed = columns.iter().max().map_or(0, |&c| c + 1) as i32;
    let mut result = Ok(());
    let mut rows: u32 = 0;
    while next(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
        if ((*slot).tts_nvalid as i32) < needed {
            pg_sys::slot_getsomeattrs_int(slot, needed);
        }
        let values = std::slice::from_raw_parts((*slot).tts_values, needed as usize);
        let nulls = std::slice::from_raw_parts((*slot).tts_isnull, needed as usize);
        // A uuid is 16 bytes by reference; a timestamptz is microseconds by value.
        let uuid = |c: usize| (!nulls[columns[c]]).then(|| std::ptr::read(values[columns[c]].cast_mut_ptr::<[u8; 16]>()));
        let key = |c: usize| uuid(c).ok_or_else(|| FlexSyncError::NullKey(COLUMNS[c].0));
        let row = (|| {
            Ok(AssignmentRow {
                address: pgrx::itemptr::item_pointer_to_u64((*slot).tts_tid),
                crew_call_id: key(0)?,
                technician_id: key(1)?,
                created_at: (!nulls[columns[2]]).then(|| values[columns[2]].value() as i64),
                id: key(3)?,
                line_id: uuid(4),
            })
        })();
        match row {
            Ok(row) => visit(row),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        rows = rows.wrapping_add(1);
        if rows % 4096 == 0 {
            pgrx::check_for_interrupts!();
        }
    }
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    access_method.scan_end.expect("every table access method scans")(scan);
    result
}
