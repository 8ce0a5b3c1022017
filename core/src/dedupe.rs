//! The decision of `flex_dedupe_assignments()`: every `flex_crew_assignments` row in, in any
//! order; out, the rows that go with the row each of their pairs keeps, how many pairs had
//! twins, and the Flex lines the removed rows leave without any row pointing at them.
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
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// In storage order: the delete then reads the table front to back.
    pub removals: Vec<Removal>,
    /// Pairs with more than one row.
    pub duplicate_groups: usize,
    /// `(crew_call_id, line_id)` of each Flex line only removed rows point at: those contacts
    /// would be no row's any more. Distinct, in uuid order.
    pub orphaned_lines: Vec<(Uuid, Uuid)>,
}

/// A pair's keeper so far, without the pair (`Dedupe::places` says whose it is) and packed into
/// 48 bytes, since one is held per pair of the table. A ctid needs 48 bits of `packed_address`; its top two bits say
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

/// Numbers the distinct uuids of one column in order of first sight. Crew calls and technicians
/// are few next to their pairs, so these maps stay in cache while the pairs do not.
#[derive(Debug, Default)]
struct Numbering {
    numbers: FxHashMap<Uuid, u32>,
}

impl Numbering {
    fn number(&mut self, uuid: Uuid) -> u32 {
        let next = self.numbers.len() as u32;
        *self.numbers.entry(uuid).or_insert(next)
    }
}

/// The keepers are kept in the order their pairs were first seen; what is looked up for every
/// row is the keeper's place, in one small map per crew call from the technician's number (8
/// bytes an entry, not the 32 of two uuids). Rows of one crew call tend to be stored together,
/// as a job's crew is assigned together, so the map a row needs is usually the one the rows
/// before it warmed: one map of all pairs missed the cache on nearly every row. Nothing is
/// sized up front: the planner's row count would round the maps up to twice the memory
/// whenever the rows are just over a power of two, while growing costs a few copies.
#[derive(Debug, Default)]
pub struct Dedupe {
    crew_calls: Numbering,
    technicians: Numbering,
    /// Indexed by the crew call's number: technician's number to the place in `keepers`.
    places: Vec<FxHashMap<u32, u32>>,
    keepers: Vec<Keeper>,
    /// Each row that lost, with its pair's place in `keepers`: the place outlives any later
    /// change of keeper, so the final keeper is read there without looking the pair up again.
    displaced: Vec<(AssignmentRow, u32)>,
}

impl Dedupe {
    pub fn add(&mut self, row: AssignmentRow) {
        let crew_call = self.crew_calls.number(row.crew_call_id) as usize;
        let technician = self.technicians.number(row.technician_id);
        if crew_call == self.places.len() {
            self.places.push(FxHashMap::default());
        }
        match self.places[crew_call].entry(technician) {
            Entry::Vacant(slot) => {
                slot.insert(self.keepers.len() as u32);
                self.keepers.push(Keeper::of(&row));
            }
            Entry::Occupied(slot) => {
                let place = *slot.get();
                let keeper = &mut self.keepers[place as usize];
                if age(row.created_at, row.id) < age(keeper.created_at(), keeper.id) {
                    let beaten = std::mem::replace(keeper, Keeper::of(&row));
                    self.displaced.push((beaten.into_row(row.pair()), place));
                } else {
                    self.displaced.push((row, place));
                }
            }
        }
    }

    pub fn finish(self) -> Outcome {
        let mut twinned = vec![false; self.keepers.len()];
        let duplicate_groups =
            self.displaced.iter().filter(|&&(_, place)| !std::mem::replace(&mut twinned[place as usize], true)).count();
        let removed_lines: FxHashSet<Uuid> = self.displaced.iter().filter_map(|(r, _)| r.line_id).collect();
        let kept_lines: FxHashSet<Uuid> =
            self.keepers.iter().filter_map(Keeper::line_id).filter(|l| removed_lines.contains(l)).collect();
        let mut orphaned_lines: Vec<(Uuid, Uuid)> = self
            .displaced
            .iter()
            .filter_map(|(r, _)| Some((r.crew_call_id, r.line_id.filter(|l| !kept_lines.contains(l))?)))
            .collect();
        orphaned_lines.sort_unstable();
        orphaned_lines.dedup();
        let mut removals: Vec<Removal> = self
            .displaced
            .iter()
            .map(|&(row, place)| Removal { keeper_id: self.keepers[place as usize].id, row })
            .collect();
        removals.sort_unstable_by_key(|r| r.row.address);
        Outcome { removals, duplicate_groups, orphaned_lines }
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

    fn run(rows: &[AssignmentRow]) -> Outcome {
        let mut dedupe = Dedupe::default();
        for r in rows {
            dedupe.add(*r);
        }
        dedupe.finish()
    }

    /// The outcome must not depend on the order the table is read in.
    fn every_order(rows: &[AssignmentRow]) -> Vec<Outcome> {
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
        for outcome in every_order(&rows) {
            assert_eq!(removed_ids(&outcome.removals), vec![uuid(10), uuid(11)]);
            assert!(outcome.removals.iter().all(|r| r.keeper_id == uuid(12)));
            assert!(outcome.removals.contains(&Removal { row: rows[1], keeper_id: uuid(12) }));
            assert_eq!(outcome.duplicate_groups, 1);
        }
    }

    #[test]
    fn equal_times_are_decided_by_the_smaller_id_as_uuid_order_is_byte_order() {
        let mut high_first_byte = uuid(1);
        high_first_byte[0] = 0xff;
        let older_by_id = row(1, (1, 1), Some(5), 2, 1);
        let newer_by_id = AssignmentRow { id: high_first_byte, ..row(2, (1, 1), Some(5), 0, 2) };
        for outcome in every_order(&[newer_by_id, older_by_id]) {
            assert_eq!(removed_ids(&outcome.removals), vec![high_first_byte]);
            assert_eq!(outcome.removals[0].keeper_id, uuid(2));
        }
        let both_null = [row(1, (1, 1), None, 9, 1), row(2, (1, 1), None, 8, 2)];
        for outcome in every_order(&both_null) {
            assert_eq!(removed_ids(&outcome.removals), vec![uuid(9)]);
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
        for outcome in every_order(&rows) {
            assert_eq!(removed_ids(&outcome.removals), vec![uuid(2)]);
            assert_eq!(outcome.removals[0].keeper_id, uuid(4));
            assert_eq!(outcome.duplicate_groups, 1);
        }
        assert_eq!(run(&rows[..3]), Outcome::default());
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
        for outcome in every_order(&rows) {
            assert_eq!(removed_ids(&outcome.removals), vec![uuid(2), uuid(4), uuid(6), uuid(9), uuid(10)]);
            assert_eq!(outcome.duplicate_groups, 4);
            // Pair D's shared line counts once; a line of another crew call counts apart.
            assert_eq!(outcome.orphaned_lines, vec![(uuid(1), uuid(102)), (uuid(1), uuid(106))]);
        }
        let mut other_call = rows.to_vec();
        other_call.push(row(11, (2, 5), Some(1), 11, 107));
        other_call.push(row(12, (2, 5), Some(2), 12, 106));
        assert_eq!(
            run(&other_call).orphaned_lines,
            vec![(uuid(1), uuid(102)), (uuid(1), uuid(106)), (uuid(2), uuid(106))]
        );
    }

    #[test]
    fn a_row_without_a_line_is_removed_and_orphans_nothing() {
        let rows = [row(1, (1, 1), Some(1), 1, 1), AssignmentRow { line_id: None, ..row(2, (1, 1), Some(2), 2, 0) }];
        for outcome in every_order(&rows) {
            assert_eq!(outcome.removals, vec![Removal { row: rows[1], keeper_id: uuid(1) }]);
            assert!(outcome.orphaned_lines.is_empty());
        }
    }

    #[test]
    fn removals_come_in_storage_order() {
        let rows = [row(9, (1, 1), Some(1), 1, 1), row(3, (1, 1), Some(2), 2, 2), row(7, (1, 1), Some(3), 3, 3)];
        let addresses: Vec<u64> = run(&rows).removals.iter().map(|r| r.row.address).collect();
        assert_eq!(addresses, vec![3, 7]);
    }
}
