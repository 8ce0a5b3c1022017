//! The decision of `flex_dedupe_assignments()`: every `flex_crew_assignments` row in, in any
//! order; out, the rows that go, the row each of their pairs keeps, and whether the Flex line of
//! a removed row is left without any row pointing at it.
//!
//! One pass with a hash of the pairs, so the table is read once and never sorted. The rule is
//! the SQL one, `ORDER BY created_at ASC NULLS LAST, id`: a uuid orders as its 16 bytes do, a
//! timestamptz as its microseconds.

use std::collections::hash_map::Entry;

use rustc_hash::{FxHashMap, FxHashSet};

pub type Uuid = [u8; 16];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignmentRow {
    /// Where the row is stored (its ctid): the removals are addressed by it.
    pub address: u64,
    pub crew_call_id: Uuid,
    pub technician_id: Uuid,
    /// Microseconds since 2000-01-01, as PostgreSQL stores a timestamptz.
    pub created_at: Option<i64>,
    pub id: Uuid,
    pub line_id: Option<Uuid>,
}

impl AssignmentRow {
    fn pair(&self) -> (Uuid, Uuid) {
        (self.crew_call_id, self.technician_id)
    }
}

/// Smaller is older: the keeper of a pair has the smallest.
fn age(created_at: Option<i64>, id: Uuid) -> (bool, i64, Uuid) {
    (created_at.is_none(), created_at.unwrap_or(0), id)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub row: AssignmentRow,
    pub keeper_id: Uuid,
    /// No kept row points at this row's Flex line: the contact would be no row's any more.
    pub line_orphaned: bool,
}

/// A pair's keeper so far, without the pair (the map's key) and packed into 48 bytes, since one
/// is held per pair of the table. A ctid needs 48 bits of `packed_address`; its top two bits say
/// whether created_at and line_id are NULL.
#[derive(Debug, Clone, Copy)]
struct Keeper {
    packed_address: u64,
    created_at: i64,
    id: Uuid,
    line_id: Uuid,
}

const NO_CREATED_AT: u64 = 1 << 63;
const NO_LINE: u64 = 1 << 62;

impl Keeper {
    fn of(row: &AssignmentRow) -> Self {
        debug_assert!(row.address < NO_LINE, "a ctid fits in 48 bits");
        let mut packed_address = row.address;
        if row.created_at.is_none() {
            packed_address |= NO_CREATED_AT;
        }
        if row.line_id.is_none() {
            packed_address |= NO_LINE;
        }
        Keeper {
            packed_address,
            created_at: row.created_at.unwrap_or(0),
            id: row.id,
            line_id: row.line_id.unwrap_or_default(),
        }
    }

    fn created_at(&self) -> Option<i64> {
        (self.packed_address & NO_CREATED_AT == 0).then_some(self.created_at)
    }

    fn line_id(&self) -> Option<Uuid> {
        (self.packed_address & NO_LINE == 0).then_some(self.line_id)
    }

    fn into_row(self, (crew_call_id, technician_id): (Uuid, Uuid)) -> AssignmentRow {
        AssignmentRow {
            address: self.packed_address & !(NO_CREATED_AT | NO_LINE),
            crew_call_id,
            technician_id,
            created_at: self.created_at(),
            id: self.id,
            line_id: self.line_id(),
        }
    }
}

/// Not sized up front: the planner's row count would round the table up to twice the memory
/// whenever the rows are just over a power of two, while growing costs a few rehashes.
#[derive(Debug, Default)]
pub struct Dedupe {
    keepers: FxHashMap<(Uuid, Uuid), Keeper>,
    displaced: Vec<AssignmentRow>,
}

impl Dedupe {
    pub fn add(&mut self, row: AssignmentRow) {
        match self.keepers.entry(row.pair()) {
            Entry::Vacant(slot) => {
                slot.insert(Keeper::of(&row));
            }
            Entry::Occupied(mut slot) => {
                let keeper = slot.get_mut();
                if age(row.created_at, row.id) < age(keeper.created_at(), keeper.id) {
                    let beaten = std::mem::replace(keeper, Keeper::of(&row));
                    self.displaced.push(beaten.into_row(row.pair()));
                } else {
                    self.displaced.push(row);
                }
            }
        }
    }

    /// The removals in storage order (the delete then reads the table front to back).
    pub fn removals(self) -> Vec<Removal> {
        let removed_lines: FxHashSet<Uuid> = self.displaced.iter().filter_map(|r| r.line_id).collect();
        let kept_lines: FxHashSet<Uuid> =
            self.keepers.values().filter_map(Keeper::line_id).filter(|l| removed_lines.contains(l)).collect();
        let mut removals: Vec<Removal> = self
            .displaced
            .into_iter()
            .map(|row| Removal {
                keeper_id: self.keepers[&row.pair()].id,
                line_orphaned: row.line_id.is_some_and(|l| !kept_lines.contains(&l)),
                row,
            })
            .collect();
        removals.sort_unstable_by_key(|r| r.row.address);
        removals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u8) -> Uuid {
        let mut u = [0; 16];
        u[15] = n;
        u
    }

    fn row(address: u64, pair: (u8, u8), created_at: Option<i64>, id: u8, line: u8) -> AssignmentRow {
        AssignmentRow {
            address,
            crew_call_id: uuid(pair.0),
            technician_id: uuid(pair.1),
            created_at,
            id: uuid(id),
            line_id: Some(uuid(line)),
        }
    }

    fn run(rows: &[AssignmentRow]) -> Vec<Removal> {
        let mut dedupe = Dedupe::default();
        for r in rows {
            dedupe.add(*r);
        }
        dedupe.removals()
    }

    /// The keeper must not depend on the order the table is read in.
    fn every_order(rows: &[AssignmentRow]) -> Vec<Vec<Removal>> {
        let mut results = Vec::new();
        for start in 0..rows.len() {
            let mut turned = rows.to_vec();
            turned.rotate_left(start);
            results.push(run(&turned));
            turned.reverse();
            results.push(run(&turned));
        }
        results
    }

    fn removed_ids(removals: &[Removal]) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = removals.iter().map(|r| r.row.id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn the_oldest_row_of_a_pair_stays_and_null_created_at_counts_as_newest() {
        let rows = [row(1, (1, 1), Some(50), 10, 1), row(2, (1, 1), None, 11, 2), row(3, (1, 1), Some(20), 12, 3)];
        for removals in every_order(&rows) {
            assert_eq!(removed_ids(&removals), vec![uuid(10), uuid(11)]);
            assert!(removals.iter().all(|r| r.keeper_id == uuid(12)));
            assert!(removals.contains(&Removal { row: rows[1], keeper_id: uuid(12), line_orphaned: true }));
        }
    }

    #[test]
    fn equal_times_are_decided_by_the_smaller_id_as_uuid_order_is_byte_order() {
        let mut high_first_byte = uuid(1);
        high_first_byte[0] = 0xff;
        let older_by_id = row(1, (1, 1), Some(5), 2, 1);
        let newer_by_id = AssignmentRow { id: high_first_byte, ..row(2, (1, 1), Some(5), 0, 2) };
        for removals in every_order(&[newer_by_id, older_by_id]) {
            assert_eq!(removed_ids(&removals), vec![high_first_byte]);
            assert_eq!(removals[0].keeper_id, uuid(2));
        }
        let both_null = [row(1, (1, 1), None, 9, 1), row(2, (1, 1), None, 8, 2)];
        for removals in every_order(&both_null) {
            assert_eq!(removed_ids(&removals), vec![uuid(9)]);
        }
    }

    #[test]
    fn pairs_are_apart_and_a_pair_without_twins_removes_nothing() {
        let rows = [
            row(1, (1, 1), Some(1), 1, 1),
            row(2, (1, 2), Some(1), 2, 2),
            row(3, (2, 1), Some(1), 3, 3),
            row(4, (1, 2), Some(0), 4, 4),
        ];
        for removals in every_order(&rows) {
            assert_eq!(removed_ids(&removals), vec![uuid(2)]);
            assert_eq!(removals[0].keeper_id, uuid(4));
        }
        assert!(run(&rows[..3]).is_empty());
    }

    #[test]
    fn a_removed_line_is_orphaned_only_when_no_kept_row_of_any_pair_points_at_it() {
        let rows = [
            // Pair A: the removed twin shares its keeper's line.
            row(1, (1, 1), Some(1), 1, 100),
            row(2, (1, 1), Some(2), 2, 100),
            // Pair B: the removed twin has a line of its own.
            row(3, (1, 2), Some(1), 3, 101),
            row(4, (1, 2), Some(2), 4, 102),
            // Pair C: the removed twin's line is kept by another pair's row.
            row(5, (1, 3), Some(1), 5, 103),
            row(6, (1, 3), Some(2), 6, 104),
            row(7, (1, 4), Some(1), 7, 104),
            // Pair D: two removed rows share a line nobody keeps.
            row(8, (1, 5), Some(1), 8, 105),
            row(9, (1, 5), Some(2), 9, 106),
            row(10, (1, 5), Some(3), 10, 106),
        ];
        for removals in every_order(&rows) {
            let orphaned: Vec<(Uuid, bool)> = removals.iter().map(|r| (r.row.id, r.line_orphaned)).collect();
            assert_eq!(
                orphaned,
                vec![(uuid(2), false), (uuid(4), true), (uuid(6), false), (uuid(9), true), (uuid(10), true)]
            );
        }
    }

    #[test]
    fn a_row_without_a_line_is_removed_and_orphans_nothing() {
        let rows = [row(1, (1, 1), Some(1), 1, 1), AssignmentRow { line_id: None, ..row(2, (1, 1), Some(2), 2, 0) }];
        for removals in every_order(&rows) {
            assert_eq!(removals, vec![Removal { row: rows[1], keeper_id: uuid(1), line_orphaned: false }]);
        }
    }

    #[test]
    fn removals_come_in_storage_order() {
        let rows = [row(9, (1, 1), Some(1), 1, 1), row(3, (1, 1), Some(2), 2, 2), row(7, (1, 1), Some(3), 3, 3)];
        let addresses: Vec<u64> = run(&rows).iter().map(|r| r.row.address).collect();
        assert_eq!(addresses, vec![3, 7]);
    }
}
