//! The guard against mass deletion: a sync that would delete more than `max_delete_fraction` of
//! a crew call's contacts, or any contact while its desired set is empty, makes its adds and
//! role changes and holds the deletes until it is forced. Fewer than [`MIN_GUARDED_DELETES`]
//! deletes are never mass deletion (1 of 2 is a crew change), but for the empty desired set,
//! which is how a blanked `flex_resource_id` or a broken desired-set rule looks. Removing a
//! duplicate contact never leaves a resource without one: duplicates are not counted.

use serde_json::{json, Value};

use crate::plan::{Delete, DeleteReason};

pub const MIN_GUARDED_DELETES: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// `max_delete_fraction` in thousandths.
    pub max_delete_permille: u32,
    /// The caller asked for the deletes to be applied whatever their number.
    pub force: bool,
}

impl Default for Guard {
    fn default() -> Self {
        Guard { max_delete_permille: 500, force: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    EmptyDesiredSet,
    OverFraction,
}

impl HoldReason {
    /// The stable code summaries, the queue and the views carry.
    pub fn code(self) -> &'static str {
        match self {
            HoldReason::EmptyDesiredSet => "empty_desired_set",
            HoldReason::OverFraction => "max_delete_fraction",
        }
    }
}

/// Deletes a sync held, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub reason: HoldReason,
    /// Contacts the crew call had in Flex when it was listed.
    pub contacts: usize,
    pub deletes: Vec<Delete>,
    pub max_delete_permille: u32,
}

impl Guard {
    /// Why deletes would be held without `force`, if they would: `deletes` counts those that
    /// remove a resource's contact (not duplicates), `contacts` every contact listed.
    pub fn hold_reason(&self, deletes: usize, contacts: usize, desired: usize) -> Option<HoldReason> {
        if deletes == 0 {
            None
        } else if desired == 0 {
            Some(HoldReason::EmptyDesiredSet)
        } else if deletes >= MIN_GUARDED_DELETES && deletes * 1000 > contacts * self.max_delete_permille as usize {
            Some(HoldReason::OverFraction)
        } else {
            None
        }
    }
}

pub fn reason_name(reason: DeleteReason) -> &'static str {
    match reason {
        DeleteReason::NotDesired => "not_desired",
        DeleteReason::Duplicate => "duplicate",
        DeleteReason::Orphan => "orphan",
    }
}

impl Held {
    pub fn note(&self) -> String {
        let fraction = f64::from(self.max_delete_permille) / 1000.0;
        match self.reason {
            HoldReason::EmptyDesiredSet => format!(
                "would delete {} contact{} while the desired set is empty; call flex_sync_job(..., force => true) to apply",
                self.deletes.len(),
                if self.deletes.len() == 1 { "" } else { "s" }
            ),
            HoldReason::OverFraction => format!(
                "would delete {} of {} contacts, more than max_delete_fraction {fraction}; call flex_sync_job(..., force => true) to apply",
                self.deletes.len(),
                self.contacts
            ),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "reason": self.reason.code(),
            "note": self.note(),
            "contacts": self.contacts,
            "deletes": self.deletes.iter().map(|d| json!({"line_id": d.line_id, "reason": reason_name(d.reason)})).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_desired_set_is_held_whatever_the_crew_size() {
        let guard = Guard::default();
        assert_eq!(guard.hold_reason(6, 6, 0), Some(HoldReason::EmptyDesiredSet));
        assert_eq!(guard.hold_reason(1, 1, 0), Some(HoldReason::EmptyDesiredSet));
        // Under keep a contact made by hand stays: the rest going is still the empty set's wipe.
        assert_eq!(guard.hold_reason(2, 3, 0), Some(HoldReason::EmptyDesiredSet));
        assert_eq!(guard.hold_reason(0, 3, 0), None);
    }

    #[test]
    fn the_fraction_applies_from_three_deletes() {
        let guard = Guard::default();
        assert_eq!(guard.hold_reason(1, 8, 5), None);
        assert_eq!(guard.hold_reason(1, 2, 1), None);
        assert_eq!(guard.hold_reason(2, 2, 2), None, "two replaced of two is a crew change");
        assert_eq!(guard.hold_reason(3, 6, 3), None, "half is not more than half");
        assert_eq!(guard.hold_reason(4, 6, 2), Some(HoldReason::OverFraction));
        assert_eq!(guard.hold_reason(0, 6, 0), None);
        let strict = Guard { max_delete_permille: 100, force: false };
        assert_eq!(strict.hold_reason(3, 20, 17), Some(HoldReason::OverFraction));
        assert_eq!(strict.hold_reason(2, 20, 18), None);
    }
}
