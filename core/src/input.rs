//! Checking what a caller passed to `flex_sync_job` before anything is read or sent.

/// The departments the live application knows; a crew call may add others.
pub const STANDARD_DEPARTMENTS: [&str; 3] = ["lights", "sound", "video"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("departments is an empty array")]
    EmptyDepartments,
    #[error("departments contains NULL")]
    NullDepartment,
    #[error("unknown department {0:?}")]
    UnknownDepartment(String),
}

/// The form a department name is compared in: trimmed and lower-cased.
pub fn department_key(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Trims and lower-cases the names, rejects unknown ones, collapses repeats and returns them in
/// the one canonical order in which locks are taken (sorted), so two callers never deadlock.
pub fn normalize_departments(
    requested: &[Option<String>],
    known: &[String],
) -> Result<Vec<String>, InputError> {
    if requested.is_empty() {
        return Err(InputError::EmptyDepartments);
    }
    let mut out = Vec::with_capacity(requested.len());
    for name in requested {
        let name = department_key(name.as_deref().ok_or(InputError::NullDepartment)?);
        if !known.contains(&name) {
            return Err(InputError::UnknownDepartment(name));
        }
        out.push(name);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        STANDARD_DEPARTMENTS.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn trims_lowercases_sorts_and_collapses() {
        let req = [Some(" Sound ".into()), Some("LIGHTS".into()), Some("sound".into())];
        assert_eq!(normalize_departments(&req, &known()).unwrap(), vec!["lights", "sound"]);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(normalize_departments(&[], &known()), Err(InputError::EmptyDepartments));
        assert_eq!(normalize_departments(&[None], &known()), Err(InputError::NullDepartment));
        assert_eq!(
            normalize_departments(&[Some("rigging".into())], &known()),
            Err(InputError::UnknownDepartment("rigging".into()))
        );
        assert_eq!(
            normalize_departments(&[Some("".into())], &known()),
            Err(InputError::UnknownDepartment("".into()))
        );
    }
}
