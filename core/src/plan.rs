//! The reconcile of one crew call: the desired technicians, the database rows and Flex's listing
//! in; the actions that make all three agree out.
//!
//! Order matters and is the whole point: the database is first
//! reconciled with what Flex really holds (stale rows dropped, unknown contacts of desired
//! technicians adopted, duplicate contacts collapsed), and only then is the diff taken, so one run
//! converges instead of deleting and re-adding the same people.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::flex_response::{CrewListing, FlexContact};
use crate::roles::{RoleMap, RoleTarget};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTech {
    pub technician_id: String,
    pub resource_id: String,
    pub role_code: Option<String>,
}

/// A `flex_crew_assignments` row of the crew call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbRow {
    pub technician_id: String,
    pub line_id: String,
}

/// What the extension remembers about a Flex line it has seen or made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownLine {
    pub created_by_sync: bool,
    pub applied_role: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrphanPolicy {
    /// Remove every contact that is not desired.
    #[default]
    Prune,
    /// Remove only contacts that the sync made or that a database row points at.
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// The technician is no longer desired.
    NotDesired,
    /// A second contact for a resource that already has one.
    Duplicate,
    /// A contact that no row and no desired technician accounts for.
    Orphan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    pub technician_id: String,
    pub resource_id: String,
    pub role_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// Once Flex confirms a delete, every row that pointed at the line goes with it.
pub struct Delete {
    pub line_id: String,
    pub reason: DeleteReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSet {
    pub line_id: String,
    /// The contact's resource, for the record of the applied role.
    pub resource_id: String,
    pub role_id: String,
}

/// A row to write because Flex already holds the technician's contact under another line id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    pub technician_id: String,
    pub line_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Technicians whose row points at a line Flex no longer has; the row goes before any add.
    pub stale_rows: Vec<String>,
    pub adoptions: Vec<Adoption>,
    pub adds: Vec<Add>,
    pub deletes: Vec<Delete>,
    pub role_sets: Vec<RoleSet>,
    /// Desired technicians whose row already pointed at their live contact.
    pub kept: usize,
    pub diagnostics: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.stale_rows.is_empty()
            && self.adoptions.is_empty()
            && self.adds.is_empty()
            && self.deletes.is_empty()
            && self.role_sets.is_empty()
    }

    pub fn count_deletes(&self, reason: DeleteReason) -> usize {
        self.deletes.iter().filter(|d| d.reason == reason).count()
    }
}

pub struct CrewState<'a> {
    pub department: &'a str,
    pub desired: &'a [DesiredTech],
    pub rows: &'a [DbRow],
    pub listing: &'a CrewListing,
    pub known: &'a HashMap<String, KnownLine>,
    pub roles: &'a RoleMap,
    pub orphan_policy: OrphanPolicy,
}

pub fn plan(state: &CrewState<'_>) -> Plan {
    let mut plan = Plan::default();
    let contacts_by_resource = group_by_resource(&state.listing.contacts);
    let contact_lines: HashMap<&str, &FlexContact> =
        state.listing.contacts.iter().map(|c| (c.line_id.as_str(), c)).collect();
    let row_line: HashMap<&str, &str> =
        state.rows.iter().map(|r| (r.technician_id.as_str(), r.line_id.as_str())).collect();
    let referenced: HashSet<&str> = state.rows.iter().map(|r| r.line_id.as_str()).collect();
    let owned = |line: &str| {
        referenced.contains(line) || state.known.get(line).is_some_and(|k| k.created_by_sync)
    };
    let may_delete = |line: &str| state.orphan_policy == OrphanPolicy::Prune || owned(line);

    // Lines that stay, and lines already scheduled to go: every contact ends in exactly one.
    let mut claimed: HashSet<&str> = HashSet::new();
    let mut scheduled: HashSet<&str> = HashSet::new();

    let mut desired_techs: HashSet<&str> = HashSet::new();
    for tech in unique_by_resource(state.desired, &mut plan.diagnostics) {
        desired_techs.insert(tech.technician_id.as_str());
        let contacts = contacts_by_resource.get(tech.resource_id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let current = row_line.get(tech.technician_id.as_str()).copied();
        let keep = current
            .and_then(|line| contacts.iter().find(|c| c.line_id == line))
            .or_else(|| contacts.first())
            .copied();
        let role = state.roles.target(state.department, tech.role_code.as_deref());
        if let RoleTarget::Diagnostic(text) = &role {
            plan.diagnostics.push(format!("tech {}: {text}", tech.technician_id));
        }
        let role_id = match role {
            RoleTarget::Set(id) => Some(id),
            _ => None,
        };
        match keep {
            Some(contact) => {
                claimed.insert(&contact.line_id);
                if current == Some(contact.line_id.as_str()) {
                    plan.kept += 1;
                } else {
                    plan.adoptions.push(Adoption {
                        technician_id: tech.technician_id.clone(),
                        line_id: contact.line_id.clone(),
                    });
                }
                for dup in contacts.iter().filter(|c| c.line_id != contact.line_id) {
                    if may_delete(&dup.line_id) && scheduled.insert(&dup.line_id) {
                        plan.deletes.push(Delete { line_id: dup.line_id.clone(), reason: DeleteReason::Duplicate });
                    }
                }
                if let Some(role_id) = role_id {
                    let applied = contact
                        .business_role
                        .as_deref()
                        .or_else(|| state.known.get(&contact.line_id).and_then(|k| k.applied_role.as_deref()));
                    if applied != Some(role_id.as_str()) {
                        plan.role_sets.push(RoleSet {
                            line_id: contact.line_id.clone(),
                            resource_id: contact.resource_id.clone(),
                            role_id,
                        });
                    }
                }
            }
            None => {
                if current.is_some_and(|line| !contact_lines.contains_key(line)) {
                    plan.stale_rows.push(tech.technician_id.clone());
                }
                plan.adds.push(Add {
                    technician_id: tech.technician_id.clone(),
                    resource_id: tech.resource_id.clone(),
                    role_id,
                });
            }
        }
    }

    let mut rows: Vec<&DbRow> = state.rows.iter().collect();
    rows.sort_by(|a, b| a.technician_id.cmp(&b.technician_id));
    for row in rows {
        let line = row.line_id.as_str();
        if !contact_lines.contains_key(line) {
            if !desired_techs.contains(row.technician_id.as_str()) {
                plan.stale_rows.push(row.technician_id.clone());
            }
        } else if !claimed.contains(line) && scheduled.insert(line) {
            // A row's line that no desired technician keeps: the technician left the crew, or
            // their resource changed and they get a contact under another line.
            plan.deletes.push(Delete { line_id: line.to_string(), reason: DeleteReason::NotDesired });
        }
    }

    for contact in &state.listing.contacts {
        let line = contact.line_id.as_str();
        if !claimed.contains(line) && !scheduled.contains(line) && may_delete(line) {
            scheduled.insert(line);
            plan.deletes.push(Delete { line_id: contact.line_id.clone(), reason: DeleteReason::Orphan });
        }
    }
    plan
}

fn group_by_resource(contacts: &[FlexContact]) -> HashMap<&str, Vec<&FlexContact>> {
    let mut map: HashMap<&str, Vec<&FlexContact>> = HashMap::new();
    for contact in contacts {
        map.entry(contact.resource_id.as_str()).or_default().push(contact);
    }
    map
}

/// Two technicians sharing one Flex resource would need two contacts for one resource; the first
/// by technician id gets it and the other is reported.
fn unique_by_resource<'a>(desired: &'a [DesiredTech], diagnostics: &mut Vec<String>) -> Vec<&'a DesiredTech> {
    let mut by_resource: BTreeMap<&str, Vec<&DesiredTech>> = BTreeMap::new();
    for tech in desired {
        by_resource.entry(tech.resource_id.as_str()).or_default().push(tech);
    }
    let mut unique = Vec::with_capacity(by_resource.len());
    for (resource, mut techs) in by_resource {
        techs.sort_by(|a, b| a.technician_id.cmp(&b.technician_id));
        techs.dedup_by(|a, b| a.technician_id == b.technician_id);
        for other in &techs[1..] {
            diagnostics.push(format!(
                "tech {}: shares Flex resource {resource} with tech {}; only one contact is kept",
                other.technician_id, techs[0].technician_id
            ));
        }
        unique.push(techs[0]);
    }
    unique.sort_by(|a, b| a.technician_id.cmp(&b.technician_id));
    unique
}

/// After adds whose outcome is unknown (a timeout, a reset, a 5xx once the request was sent, or an
/// answer without a line id), one fresh listing tells which of them Flex applied. Returns, for each
/// ambiguous add in order, the contact line Flex holds for its resource that is not yet claimed.
pub fn resolve_ambiguous_adds(
    ambiguous: &[&Add],
    listing: &CrewListing,
    claimed_lines: &HashSet<String>,
) -> Vec<Option<String>> {
    let mut taken: HashSet<&str> = claimed_lines.iter().map(String::as_str).collect();
    ambiguous
        .iter()
        .map(|add| {
            let found = listing
                .contacts
                .iter()
                .find(|c| c.resource_id == add.resource_id && !taken.contains(c.line_id.as_str()))?;
            taken.insert(&found.line_id);
            Some(found.line_id.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tech(t: &str, r: &str, role: Option<&str>) -> DesiredTech {
        DesiredTech { technician_id: t.into(), resource_id: r.into(), role_code: role.map(Into::into) }
    }
    fn row(t: &str, l: &str) -> DbRow {
        DbRow { technician_id: t.into(), line_id: l.into() }
    }
    fn contact(l: &str, r: &str, role: Option<&str>) -> FlexContact {
        FlexContact { line_id: l.into(), resource_id: r.into(), business_role: role.map(Into::into) }
    }
    fn roles() -> RoleMap {
        RoleMap([('R', "ROLE-R".to_string()), ('T', "ROLE-T".to_string())].into_iter().collect())
    }

    fn run(
        desired: &[DesiredTech],
        rows: &[DbRow],
        contacts: Vec<FlexContact>,
        known: &HashMap<String, KnownLine>,
        policy: OrphanPolicy,
    ) -> Plan {
        let listing = CrewListing { contacts, other_line_ids: vec!["container".into()] };
        plan(&CrewState {
            department: "sound",
            desired,
            rows,
            listing: &listing,
            known,
            roles: &roles(),
            orphan_policy: policy,
        })
    }

    #[test]
    fn nothing_to_change_plans_nothing() {
        let desired = [tech("t1", "r1", Some("SND-FOH-R")), tech("t2", "r2", None)];
        let rows = [row("t1", "l1"), row("t2", "l2")];
        let contacts = vec![contact("l1", "r1", Some("ROLE-R")), contact("l2", "r2", None)];
        let p = run(&desired, &rows, contacts, &HashMap::new(), OrphanPolicy::Prune);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.kept, 2);
    }

    #[test]
    fn a_contact_deleted_by_hand_is_re_added_in_the_same_run() {
        let desired = [tech("t1", "r1", Some("SND-PA-T"))];
        let p = run(&desired, &[row("t1", "gone")], vec![], &HashMap::new(), OrphanPolicy::Prune);
        assert_eq!(p.stale_rows, vec!["t1"]);
        assert_eq!(
            p.adds,
            vec![Add { technician_id: "t1".into(), resource_id: "r1".into(), role_id: Some("ROLE-T".into()) }]
        );
        assert!(p.deletes.is_empty());
    }

    #[test]
    fn an_unknown_contact_of_a_desired_tech_is_adopted_not_re_added() {
        let desired = [tech("t1", "r1", None)];
        let p = run(&desired, &[], vec![contact("lx", "r1", None)], &HashMap::new(), OrphanPolicy::Prune);
        assert!(p.adds.is_empty());
        assert_eq!(p.adoptions, vec![Adoption { technician_id: "t1".into(), line_id: "lx".into() }]);
    }

    #[test]
    fn duplicate_contacts_collapse_to_the_one_the_row_references() {
        let desired = [tech("t1", "r1", None)];
        let contacts = vec![contact("a", "r1", None), contact("b", "r1", None), contact("c", "r1", None)];
        let p = run(&desired, &[row("t1", "b")], contacts, &HashMap::new(), OrphanPolicy::Prune);
        assert_eq!(p.kept, 1);
        let gone: Vec<_> = p.deletes.iter().map(|d| (d.line_id.as_str(), d.reason)).collect();
        assert_eq!(gone, vec![("a", DeleteReason::Duplicate), ("c", DeleteReason::Duplicate)]);
    }

    #[test]
    fn not_desired_and_orphans_go_under_prune() {
        let desired = [tech("t1", "r1", None)];
        let rows = [row("t1", "l1"), row("t2", "l2"), row("t3", "gone")];
        let contacts = vec![contact("l1", "r1", None), contact("l2", "r2", None), contact("hand", "r9", None)];
        let p = run(&desired, &rows, contacts, &HashMap::new(), OrphanPolicy::Prune);
        assert_eq!(p.stale_rows, vec!["t3"]);
        assert_eq!(
            p.deletes,
            vec![
                Delete { line_id: "l2".into(), reason: DeleteReason::NotDesired },
                Delete { line_id: "hand".into(), reason: DeleteReason::Orphan },
            ]
        );
    }

    #[test]
    fn keep_policy_never_deletes_a_contact_the_sync_did_not_make() {
        let known: HashMap<String, KnownLine> =
            [("mine".to_string(), KnownLine { created_by_sync: true, applied_role: None })].into();
        let desired = [tech("t1", "r1", None)];
        let contacts = vec![
            contact("l1", "r1", None),
            contact("hand-dup", "r1", None),
            contact("hand", "r9", None),
            contact("mine", "r8", None),
        ];
        let p = run(&desired, &[row("t1", "l1")], contacts, &known, OrphanPolicy::Keep);
        let gone: Vec<_> = p.deletes.iter().map(|d| d.line_id.as_str()).collect();
        assert_eq!(gone, vec!["mine"]);
    }

    #[test]
    fn roles_are_sent_only_when_they_differ_from_what_is_applied() {
        let desired = [
            tech("t1", "r1", Some("SND-FOH-R")),
            tech("t2", "r2", Some("SND-PA-T")),
            tech("t3", "r3", Some("SND-RF-E")),
        ];
        let known: HashMap<String, KnownLine> =
            [("l2".to_string(), KnownLine { created_by_sync: true, applied_role: Some("ROLE-T".into()) })].into();
        let rows = [row("t1", "l1"), row("t2", "l2"), row("t3", "l3")];
        let contacts = vec![contact("l1", "r1", Some("ROLE-T")), contact("l2", "r2", None), contact("l3", "r3", None)];
        let p = run(&desired, &rows, contacts, &known, OrphanPolicy::Prune);
        assert_eq!(
            p.role_sets,
            vec![RoleSet { line_id: "l1".into(), resource_id: "r1".into(), role_id: "ROLE-R".into() }]
        );
        assert_eq!(p.diagnostics.len(), 1, "{:?}", p.diagnostics);
        assert!(p.diagnostics[0].starts_with("tech t3"));
    }

    #[test]
    fn a_changed_resource_replaces_the_old_contact() {
        let desired = [tech("t1", "new", None)];
        let p = run(&desired, &[row("t1", "l-old")], vec![contact("l-old", "old", None)], &HashMap::new(), OrphanPolicy::Keep);
        assert_eq!(p.adds.len(), 1);
        assert_eq!(p.deletes, vec![Delete { line_id: "l-old".into(), reason: DeleteReason::NotDesired }]);
        assert!(p.stale_rows.is_empty(), "the row is rewritten by the add, not dropped");
    }

    #[test]
    fn two_technicians_on_one_resource_get_one_contact() {
        let desired = [tech("t2", "r1", None), tech("t1", "r1", None)];
        let p = run(&desired, &[], vec![], &HashMap::new(), OrphanPolicy::Prune);
        assert_eq!(p.adds.len(), 1);
        assert_eq!(p.adds[0].technician_id, "t1");
        assert_eq!(p.diagnostics.len(), 1);
    }

    #[test]
    fn ambiguous_adds_match_unclaimed_contacts_by_resource() {
        let a = Add { technician_id: "t1".into(), resource_id: "r1".into(), role_id: None };
        let b = Add { technician_id: "t2".into(), resource_id: "r2".into(), role_id: None };
        let listing = CrewListing {
            contacts: vec![contact("old", "r1", None), contact("new", "r1", None)],
            other_line_ids: vec![],
        };
        let claimed: HashSet<String> = ["old".to_string()].into();
        assert_eq!(resolve_ambiguous_adds(&[&a, &b], &listing, &claimed), vec![Some("new".to_string()), None]);
    }
}
