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

/// The names asked for that only the database can tell apart from a typo: neither standard nor
/// a department of the job's own crew calls (`normalize_departments` then accepts the ones some
/// crew call uses).
pub fn names_to_look_up(requested: &[Option<String>], job_departments: &[String]) -> Vec<String> {
    let mut names: Vec<String> = requested
        .iter()
        .flatten()
        .map(|name| department_key(name))
        .filter(|key| !STANDARD_DEPARTMENTS.contains(&key.as_str()) && !job_departments.contains(key))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What `normalize_departments` accepts: the standard names, the job's crew calls' departments
/// and the looked-up names that some crew call uses.
pub fn known_departments(job_departments: &[String], in_use: Vec<String>) -> Vec<String> {
    let mut known: Vec<String> = STANDARD_DEPARTMENTS.iter().map(|d| d.to_string()).collect();
    known.extend(job_departments.iter().cloned());
    known.extend(in_use);
    known
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
    fn only_names_neither_standard_nor_the_jobs_are_looked_up() {
        let req = [Some(" Rigging ".into()), Some("SOUND".into()), Some("staging".into()), None, Some("rigging".into())];
        assert_eq!(names_to_look_up(&req, &["staging".to_string()]), vec!["rigging"]);
        assert!(names_to_look_up(&[Some("Lights".into())], &[]).is_empty());
        let known = known_departments(&["staging".to_string()], vec!["rigging".to_string()]);
        assert_eq!(normalize_departments(&req[..3], &known).unwrap(), vec!["rigging", "sound", "staging"]);
        assert_eq!(
            normalize_departments(&[Some("catering".into())], &known),
            Err(InputError::UnknownDepartment("catering".into()))
        );
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
