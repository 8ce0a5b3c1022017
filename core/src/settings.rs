//! The client options a DBA sets with `flex_sync_configure`, and the Flex origin they apply to.
//! Validation lives here so that configure time and call time apply one rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value};

use crate::plan::OrphanPolicy;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub sync_deadline_ms: u64,
    pub max_response_bytes: u64,
    pub max_calls_per_sync: u64,
    pub max_parallel_requests: u64,
    pub retry_max_attempts: u64,
    pub orphan_policy: OrphanPolicy,
    pub allow_insecure_loopback: bool,
}

/// Flex allows a customer 30 requests in flight, across all of its keys.
pub const FLEX_MAX_CONCURRENT_REQUESTS: u64 = 30;

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout_ms: 5_000,
            request_timeout_ms: 15_000,
            // Below the 8 s statement timeout Supabase gives the `authenticated` role.
            sync_deadline_ms: 7_000,
            max_response_bytes: 4 * 1024 * 1024,
            max_calls_per_sync: 400,
            max_parallel_requests: 4,
            retry_max_attempts: 3,
            orphan_policy: OrphanPolicy::Prune,
            allow_insecure_loopback: false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("options must be a JSON object")]
    NotAnObject,
    #[error("unknown option {0:?}")]
    UnknownOption(String),
    #[error("option {key:?} must be {expected}")]
    BadValue { key: String, expected: String },
    #[error("base_url {url:?} is not usable: {why}")]
    BadUrl { url: String, why: &'static str },
}

/// Every integer option: its key, its range and its field. Parsing, the error text and
/// `to_json` all read this one table.
type Field = fn(&mut Options) -> &mut u64;
const INTEGER_OPTIONS: [(&str, u64, u64, Field); 7] = [
    ("connect_timeout_ms", 1, 600_000, |o| &mut o.connect_timeout_ms),
    ("request_timeout_ms", 1, 3_600_000, |o| &mut o.request_timeout_ms),
    ("sync_deadline_ms", 1, 3_600_000, |o| &mut o.sync_deadline_ms),
    ("max_response_bytes", 1_024, 1 << 30, |o| &mut o.max_response_bytes),
    ("max_calls_per_sync", 1, 100_000, |o| &mut o.max_calls_per_sync),
    // Flex allows a customer 30 requests in flight.
    ("max_parallel_requests", 1, FLEX_MAX_CONCURRENT_REQUESTS, |o| &mut o.max_parallel_requests),
    ("retry_max_attempts", 1, 10, |o| &mut o.retry_max_attempts),
];

impl Options {
    /// Applies `changes` (a JSON object) on top of `self`. Unknown keys and bad values are errors.
    pub fn merged(&self, changes: &Value) -> Result<Options, SettingsError> {
        let object = changes.as_object().ok_or(SettingsError::NotAnObject)?;
        let mut out = self.clone();
        for (key, value) in object {
            if let Some(&(_, lo, hi, field)) = INTEGER_OPTIONS.iter().find(|(k, ..)| k == key) {
                let n = value.as_u64().filter(|n| (lo..=hi).contains(n)).ok_or_else(|| {
                    SettingsError::BadValue { key: key.clone(), expected: format!("an integer from {lo} to {hi}") }
                })?;
                *field(&mut out) = n;
                continue;
            }
            match key.as_str() {
                "orphan_policy" => {
                    out.orphan_policy = match value.as_str() {
                        Some("prune") => OrphanPolicy::Prune,
                        Some("keep") => OrphanPolicy::Keep,
                        _ => {
                            return Err(SettingsError::BadValue {
                                key: key.clone(),
                                expected: "\"prune\" or \"keep\"".into(),
                            })
                        }
                    }
                }
                "allow_insecure_loopback" => {
                    out.allow_insecure_loopback = value
                        .as_bool()
                        .ok_or_else(|| SettingsError::BadValue { key: key.clone(), expected: "a boolean".into() })?
                }
                _ => return Err(SettingsError::UnknownOption(key.clone())),
            }
        }
        Ok(out)
    }

    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        let mut fields = self.clone();
        for (key, _, _, field) in INTEGER_OPTIONS {
            map.insert(key.to_string(), Value::from(*field(&mut fields)));
        }
        let policy = match self.orphan_policy {
            OrphanPolicy::Prune => "prune",
            OrphanPolicy::Keep => "keep",
        };
        map.insert("orphan_policy".into(), Value::from(policy));
        map.insert("allow_insecure_loopback".into(), Value::from(self.allow_insecure_loopback));
        Value::Object(map)
    }
}

/// The Flex API root every request is built from: scheme, host, port and base path, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlexOrigin {
    pub scheme: &'static str,
    pub host: String,
    pub port: Option<u16>,
    /// Without a trailing slash, e.g. `/f5/api`.
    pub base_path: String,
}

impl FlexOrigin {
    pub fn parse(url: &str, allow_insecure_loopback: bool) -> Result<FlexOrigin, SettingsError> {
        let bad = |why| SettingsError::BadUrl { url: url.to_string(), why };
        let trimmed = url.trim();
        let (scheme, rest) = if let Some(rest) = trimmed.strip_prefix("https://") {
            ("https", rest)
        } else if let Some(rest) = trimmed.strip_prefix("http://") {
            ("http", rest)
        } else {
            return Err(bad("it must start with https://"));
        };
        if rest.contains(['?', '#', '@', '\\']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("only scheme, host, port and path are allowed (no credentials, query or fragment)"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("the host or port is malformed"))?;
        if path.split('/').any(|seg| seg == ".." || seg == ".") {
            return Err(bad("the path may not contain . or .. segments"));
        }
        let origin = FlexOrigin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            base_path: path.trim_end_matches('/').to_string(),
        };
        if !allow_insecure_loopback {
            if scheme == "http" {
                return Err(bad("it must use https (http is accepted only with allow_insecure_loopback)"));
            }
            if origin.is_local() {
                return Err(bad(
                    "it points at a loopback, private or link-local address (accepted only with allow_insecure_loopback)",
                ));
            }
        }
        Ok(origin)
    }

    /// True for names and literal addresses that stay on this machine or its private networks.
    pub fn is_local(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        if host == "localhost" || host.ends_with(".localhost") {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => is_local_address(ip),
            Err(_) => false,
        }
    }

    pub fn root(&self) -> String {
        match self.port {
            Some(port) => format!("{}://{}:{}{}", self.scheme, self.host, port, self.base_path),
            None => format!("{}://{}{}", self.scheme, self.host, self.base_path),
        }
    }
}

pub fn is_local_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_local_v4(v4),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(is_local_v4)
                || v6 == Ipv6Addr::LOCALHOST
        }
    }
}

fn is_local_v4(v4: Ipv4Addr) -> bool {
    v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() || v4.octets()[0] == 0
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        (host, rest.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let valid_host = !host.is_empty()
        && (host.starts_with('[')
            || host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    if !valid_host {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_merge_and_reject() {
        let o = Options::default()
            .merged(&json!({"max_parallel_requests": 8, "orphan_policy": "keep"}))
            .unwrap();
        assert_eq!(o.max_parallel_requests, 8);
        assert_eq!(o.orphan_policy, OrphanPolicy::Keep);
        assert_eq!(o.merged(&json!({})).unwrap(), o);
        assert_eq!(
            Options::default().merged(&json!({"max_parallel": 8})),
            Err(SettingsError::UnknownOption("max_parallel".into()))
        );
        assert!(Options::default().merged(&json!({"max_parallel_requests": 31})).is_err());
        assert!(Options::default().merged(&json!({"request_timeout_ms": "5"})).is_err());
        assert!(Options::default().merged(&json!({"orphan_policy": "all"})).is_err());
        assert!(Options::default().merged(&json!([1])).is_err());
        let round = Options::default().merged(&o.to_json()).unwrap();
        assert_eq!(round, o);
    }

    #[test]
    fn origins() {
        let o = FlexOrigin::parse("https://sectorpro.flexrentalsolutions.com/f5/api/", false).unwrap();
        assert_eq!(o.root(), "https://sectorpro.flexrentalsolutions.com/f5/api");
        for bad in [
            "http://tenant.flexrentalsolutions.com/f5/api",
            "https://127.0.0.1/f5/api",
            "https://localhost:8443/f5/api",
            "https://10.1.2.3/f5/api",
            "https://169.254.169.254/latest",
            "https://[::1]/f5/api",
            "https://user:pw@tenant.flexrentalsolutions.com/f5/api",
            "https://tenant.flexrentalsolutions.com/f5/api?x=1",
            "https://tenant.flexrentalsolutions.com/f5/../admin",
            "ftp://x/",
            "https://:443/",
            "https://host:99999/",
        ] {
            assert!(FlexOrigin::parse(bad, false).is_err(), "{bad} should be refused");
        }
        let local = FlexOrigin::parse("http://127.0.0.1:8080/f5/api", true).unwrap();
        assert_eq!(local.root(), "http://127.0.0.1:8080/f5/api");
        assert!(local.is_local());
    }
}
