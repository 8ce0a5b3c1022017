//! Business-role tiers. The tier is the last segment of a role code: `SND-FOH-R` is R
//! (responsable), `SND-RF-E` is E (especialista), `SND-PA-T` is T (tecnico). The live app searched
//! the whole code for "-R" first and so filed `SND-RF-E` under responsable.

use std::collections::HashMap;

/// The tier letter of a role code, upper-cased, or None when the code has no recognised suffix.
pub fn tier_of(role_code: &str) -> Option<char> {
    let last = role_code.trim().rsplit('-').next()?.trim();
    match last.to_ascii_uppercase().as_str() {
        "R" => Some('R'),
        "E" => Some('E'),
        "T" => Some('T'),
        _ => None,
    }
}

/// The business roles configured for one department: tier letter to Flex business-role id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleMap(pub HashMap<char, String>);

/// What the sync should do about a technician's business role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleTarget {
    /// No role code for the department: leave whatever Flex has.
    Unspecified,
    Set(String),
    /// A role code exists but cannot be applied; the text says why.
    Diagnostic(String),
}

impl RoleMap {
    pub fn target(&self, department: &str, role_code: Option<&str>) -> RoleTarget {
        let Some(code) = role_code.map(str::trim).filter(|c| !c.is_empty()) else {
            return RoleTarget::Unspecified;
        };
        let Some(tier) = tier_of(code) else {
            return RoleTarget::Diagnostic(format!(
                "role code {code:?}: no tier could be inferred for {department}; expected a suffix of -R, -E or -T"
            ));
        };
        match self.0.get(&tier) {
            Some(id) => RoleTarget::Set(id.clone()),
            None => RoleTarget::Diagnostic(format!(
                "role code {code:?}: {department} has no Flex business-role id for tier {tier}; add one to flex_sync_business_roles"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_is_the_last_segment() {
        assert_eq!(tier_of("SND-FOH-R"), Some('R'));
        assert_eq!(tier_of("SND-RF-E"), Some('E'));
        assert_eq!(tier_of("LGT-PA-T"), Some('T'));
        assert_eq!(tier_of("snd-mon-r"), Some('R'));
        assert_eq!(tier_of("SND-FOH"), None);
        assert_eq!(tier_of(""), None);
    }

    #[test]
    fn targets_and_diagnostics() {
        let map = RoleMap([('R', "role-r".to_string())].into_iter().collect());
        assert_eq!(map.target("sound", None), RoleTarget::Unspecified);
        assert_eq!(map.target("sound", Some("  ")), RoleTarget::Unspecified);
        assert_eq!(map.target("sound", Some("SND-FOH-R")), RoleTarget::Set("role-r".into()));
        assert!(matches!(map.target("sound", Some("SND-RF-E")), RoleTarget::Diagnostic(d) if d.contains("tier E")));
        assert!(matches!(map.target("sound", Some("BOSS")), RoleTarget::Diagnostic(d) if d.contains("no tier")));
    }
}
