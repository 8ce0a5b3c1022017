//! The model database: the committed state of one crew call (the application's assignments, the
//! rows, the extension's line records), its advisory lock, and the writes of `delete_rows.sql` and
//! `write_rows.sql` applied with their SQL's semantics. A transaction's writes reach it only
//! at commit, all at once; a rollback or a killed backend never reaches it.

use std::collections::{BTreeMap, BTreeSet};

use crate::guard::Guard;
use crate::plan::{DbRow, DesiredTech, KnownLine, OrphanPolicy};
use crate::protocol::{CrewInput, Writes};
use crate::roles::RoleMap;

pub const ELEMENT: &str = "element-1";

/// The Flex resource of a technician: one each, so a desired set never shares one.
pub fn resource_of(technician: &str) -> String {
    format!("res-{technician}")
}

pub fn role_map() -> RoleMap {
    RoleMap([('R', "ROLE-R".to_string()), ('T', "ROLE-T".to_string())].into_iter().collect())
}

#[derive(Default)]
pub struct ModelDb {
    /// The application's assignments: technician to role code (the desired set's rule is
    /// "assigned"; role codes without a mapped tier are diagnostics).
    pub assigned: BTreeMap<String, Option<String>>,
    /// `flex_crew_assignments` as (technician, line), in insertion order. A Vec, not a map, so
    /// that a second row for a technician would be seen (I1) rather than made impossible.
    pub rows: Vec<(String, String)>,
    pub lines: BTreeMap<String, KnownLine>,
    /// Which actor holds the crew call's advisory lock.
    pub lock: Option<usize>,
    /// Lines a committed write ever pointed a row at or recorded as made by the sync: what the
    /// sync may consider its own.
    pub ever_owned: BTreeSet<String>,
}

impl ModelDb {
    /// What `load_crew.sql` reads: the committed state as of now.
    pub fn input(&self, orphan_policy: OrphanPolicy, guard: Guard) -> CrewInput {
        CrewInput {
            department: "sound".into(),
            flex_element_id: ELEMENT.into(),
            desired: self
                .assigned
                .iter()
                .map(|(t, role)| DesiredTech { technician_id: t.clone(), resource_id: resource_of(t), role_code: role.clone() })
                .collect(),
            rows: self.rows.iter().map(|(t, l)| DbRow { technician_id: t.clone(), line_id: l.clone() }).collect(),
            known: self.lines.iter().map(|(l, k)| (l.clone(), k.clone())).collect(),
            roles: role_map(),
            orphan_policy,
            guard,
        }
    }

    pub fn try_lock(&mut self, actor: usize) -> bool {
        match self.lock {
            None => {
                self.lock = Some(actor);
                true
            }
            Some(holder) => holder == actor,
        }
    }

    pub fn unlock(&mut self, actor: usize) {
        if self.lock == Some(actor) {
            self.lock = None;
        }
    }

    pub fn lock_is_free_for(&self, actor: usize) -> bool {
        self.lock.is_none() || self.lock == Some(actor)
    }

    /// `delete_rows.sql`, then `write_rows.sql`, as one commit.
    pub fn commit(&mut self, writes: &Writes) {
        let adopted: BTreeSet<&str> = writes.adopted_rows.iter().map(|(t, _)| t.as_str()).collect();
        self.rows.retain(|(t, l)| {
            let stale = writes.stale_rows.iter().any(|(st, sl)| st == t && sl == l);
            let gone = writes.deleted_lines.contains(l) && !adopted.contains(t.as_str());
            !stale && !gone
        });
        for line in &writes.deleted_lines {
            self.lines.remove(line);
        }
        for (technician, line) in writes.rows() {
            match self.rows.iter_mut().find(|(t, _)| *t == technician) {
                Some(row) => row.1 = line.clone(),
                None => self.rows.push((technician, line.clone())),
            }
            self.ever_owned.insert(line);
        }
        for record in &writes.line_records {
            let known = self.lines.entry(record.line_id.clone()).or_default();
            known.created_by_sync |= record.created_by_sync;
            if record.applied_role.is_some() {
                known.applied_role = record.applied_role.clone();
            }
            if known.created_by_sync {
                self.ever_owned.insert(record.line_id.clone());
            }
        }
    }

    /// What PostgreSQL would refuse in the writes of one commit: ON CONFLICT DO UPDATE cannot
    /// touch one row twice in a statement, so a technician or a line repeated in one batch
    /// fails the whole write.
    pub fn refused(writes: &Writes) -> Option<String> {
        let mut technicians = BTreeSet::new();
        if let Some((t, _)) = writes.rows().into_iter().find(|(t, _)| !technicians.insert(t.clone())) {
            return Some(format!("technician {t} twice in one upsert"));
        }
        let mut lines = BTreeSet::new();
        writes
            .line_records
            .iter()
            .find(|r| !lines.insert(r.line_id.as_str()))
            .map(|r| format!("line {} twice in one upsert", r.line_id))
    }

    /// I1: a technician with two rows, if any.
    pub fn technician_with_two_rows(&self) -> Option<&str> {
        let mut seen = BTreeSet::new();
        self.rows.iter().map(|(t, _)| t.as_str()).find(|t| !seen.insert(*t))
    }

    /// Whether the sync would count the line as its own now (a row points at it, or it is
    /// recorded as made by the sync): the plan's rule for what `keep` may delete.
    pub fn owns(&self, line: &str) -> bool {
        self.rows.iter().any(|(_, l)| l == line) || self.lines.get(line).is_some_and(|k| k.created_by_sync)
    }
}
