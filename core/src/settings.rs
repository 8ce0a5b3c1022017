//! The client options a DBA sets with `flex_sync_configure`, and the Flex origin they apply to.
//! Validation lives here so that configure time and call time apply one rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Deref;
use std::time::{Duration, Instant};

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
    /// The guard's `max_delete_fraction`, in thousandths (JSON has it as a number from 0 to 1).
    pub max_delete_permille: u32,
    /// How long `flex_sync_log` keeps a row, in hours; the queue run prunes older ones
    /// (`flex_sync_private.prune_log`, which reads the `to_json` form, e.g. "30 days").
    pub log_retention_hours: u64,
    /// The Supabase Vault secret that holds the Flex token; read in SQL at call time
    /// (`flex_sync_private.effective_settings`), so the token is never stored by the extension.
    pub api_token_vault_secret: Option<String>,
    pub allow_insecure_loopback: bool,
}

/// The hint for an unknown option: every key `merged` accepts (a unit test holds it to that).
pub const KNOWN_OPTIONS_HINT: &str = "known options: connect_timeout_ms, request_timeout_ms, sync_deadline_ms, \
     max_response_bytes, max_calls_per_sync, max_parallel_requests, retry_max_attempts, orphan_policy, \
     max_delete_fraction, log_retention, api_token_vault_secret, allow_insecure_loopback";

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
            max_delete_permille: 500,
            log_retention_hours: 30 * 24,
            api_token_vault_secret: None,
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
    #[error("a token was given and the option api_token_vault_secret names a Vault secret: use one or the other")]
    TokenAndVaultSecret,
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
                "max_delete_fraction" => {
                    out.max_delete_permille = value
                        .as_f64()
                        .filter(|f| (0.0..=1.0).contains(f))
                        .map(|f| (f * 1000.0).round() as u32)
                        .ok_or_else(|| SettingsError::BadValue { key: key.clone(), expected: "a number from 0 to 1".into() })?
                }
                "log_retention" => {
                    out.log_retention_hours = value.as_str().and_then(parse_retention).ok_or_else(|| {
                        SettingsError::BadValue {
                            key: key.clone(),
                            expected: format!(
                                "a duration such as \"30 days\" or \"12 hours\" (hours, days or weeks), from 1 hour to {MAX_RETENTION_DAYS} days"
                            ),
                        }
                    })?
                }
                "api_token_vault_secret" => {
                    out.api_token_vault_secret = match value {
                        Value::Null => None,
                        Value::String(name) if !name.trim().is_empty() => Some(name.trim().to_string()),
                        _ => {
                            return Err(SettingsError::BadValue {
                                key: key.clone(),
                                expected: "the name of a Vault secret, or null".into(),
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
        map.insert("max_delete_fraction".into(), Value::from(f64::from(self.max_delete_permille) / 1000.0));
        let hours = self.log_retention_hours;
        let retention = if hours.is_multiple_of(24) { format!("{} days", hours / 24) } else { format!("{hours} hours") };
        map.insert("log_retention".into(), Value::from(retention));
        if let Some(secret) = &self.api_token_vault_secret {
            map.insert("api_token_vault_secret".into(), Value::from(secret.as_str()));
        }
        map.insert("allow_insecure_loopback".into(), Value::from(self.allow_insecure_loopback));
        Value::Object(map)
    }
}

const MAX_RETENTION_DAYS: u64 = 3650;

/// "N hours", "N days" or "N weeks" (singular too) as hours, within 1 hour and
/// MAX_RETENTION_DAYS; anything else is None.
fn parse_retention(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    let (count, unit, rest) = (words.next()?.parse::<u64>().ok()?, words.next()?, words.next());
    let hours_per_unit = match unit.to_ascii_lowercase().trim_end_matches('s') {
        "hour" => 1,
        "day" => 24,
        "week" => 7 * 24,
        _ => return None,
    };
    let hours = count.checked_mul(hours_per_unit)?;
    (rest.is_none() && (1..=MAX_RETENTION_DAYS * 24).contains(&hours)).then_some(hours)
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
            if origin.is_refused_host() {
                return Err(bad(
                    "it points at a loopback, private, link-local or other non-public address (accepted only with allow_insecure_loopback)",
                ));
            }
        }
        Ok(origin)
    }

    /// True for names and literal addresses that are not public; other names are checked when
    /// they are resolved, by [`check_resolved`].
    fn is_refused_host(&self) -> bool {
        // A trailing dot names the same host ("localhost." is localhost).
        let host = self.host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
        if host == "localhost" || host.ends_with(".localhost") {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => is_refused_address(ip),
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

/// The address a Flex request may not reach: through RPC the base URL would otherwise be a way
/// into the database's own machine and networks. Literal hosts (at parse time) and every resolved
/// address (at connect time) go through this one rule.
pub fn is_refused_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_refused_v4(v4),
        IpAddr::V6(v6) => is_refused_v6(v6),
    }
}

fn is_refused_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        // 0.0.0.0/8: Linux connects 0.0.0.0 to this machine.
        || a == 0
        // Carrier-grade NAT, 100.64.0.0/10: a provider's internal network.
        || (a == 100 && (b & 0xc0) == 64)
        // Multicast 224/4, then reserved 240/4 with the broadcast address: never a public host.
        || a >= 224
}

fn is_refused_v6(v6: Ipv6Addr) -> bool {
    let first = v6.segments()[0];
    v6.is_loopback()
        || v6.is_unspecified()
        // Unique local fc00::/7.
        || (first & 0xfe00) == 0xfc00
        // Link-local fe80::/10 and the deprecated site-local fec0::/10.
        || (first & 0xff80) == 0xfe80
        || v6.is_multicast()
        || embedded_v4(v6).is_some_and(is_refused_v4)
}

/// The IPv4 address an IPv6 one reaches: mapped `::ffff:a.b.c.d` and compatible `::a.b.c.d` are
/// the v4 host itself to a dual-stack socket, and a NAT64 gateway turns `64:ff9b::a.b.c.d` into
/// a.b.c.d.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = v6.octets();
    let v4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match v6.segments()[..6] {
        [0, 0, 0, 0, 0, 0xffff] | [0, 0, 0, 0, 0, 0] | [0x64, 0xff9b, 0, 0, 0, 0] => Some(v4),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the Flex host resolves to an address that is not public")]
pub struct DestinationRefused;

/// The resolver's rule: the addresses come back unchanged, to be the very ones connected to, or
/// the whole answer is refused. Dropping only the refused addresses would hide a hostile or
/// misconfigured name, and which address a sync reaches would depend on the answer's order.
pub fn check_resolved<A: Deref<Target = [SocketAddr]>>(
    addrs: A,
    allow_insecure_loopback: bool,
) -> Result<A, DestinationRefused> {
    if !allow_insecure_loopback && addrs.iter().any(|a| is_refused_address(a.ip())) {
        return Err(DestinationRefused);
    }
    Ok(addrs)
}

/// How long a checked answer for a host name is used before the name is resolved again. ureq
/// resolves before it looks for a kept-alive connection, so without this every Flex call would
/// wait for a lookup (a thread and a DNS round trip each), even on a connection already open.
pub const RESOLVED_FOR: Duration = Duration::from_secs(30);

/// Answers for host names that passed `check_resolved`, each kept for `RESOLVED_FOR`: a name is
/// still checked once per answer, and only checked addresses are ever handed out.
#[derive(Debug, Default)]
pub struct CheckedAnswers {
    /// Host, port, when resolved, the addresses. A backend calls one origin: a list is enough.
    answers: Vec<(String, u16, Instant, Vec<SocketAddr>)>,
}

impl CheckedAnswers {
    /// The checked addresses of `host:port`, if they were resolved less than `RESOLVED_FOR` ago.
    pub fn get(&self, host: &str, port: u16, now: Instant) -> Option<&[SocketAddr]> {
        self.answers
            .iter()
            .find(|(h, p, resolved, _)| h == host && *p == port && now.saturating_duration_since(*resolved) < RESOLVED_FOR)
            .map(|(_, _, _, addrs)| addrs.as_slice())
    }

    /// Keeps an answer that passed the check, in place of the host's last one; an answer of no
    /// address is not kept. Answers that ran out go.
    pub fn keep(&mut self, host: &str, port: u16, addrs: &[SocketAddr], now: Instant) {
        self.answers.retain(|(h, p, resolved, _)| {
            !(h == host && *p == port) && now.saturating_duration_since(*resolved) < RESOLVED_FOR
        });
        if !addrs.is_empty() {
            self.answers.push((host.to_string(), port, now, addrs.to_vec()));
        }
    }
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
        let vault = o.merged(&json!({"api_token_vault_secret": " flex_key "})).unwrap();
        assert_eq!(vault.api_token_vault_secret.as_deref(), Some("flex_key"));
        assert_eq!(vault.merged(&json!({"api_token_vault_secret": null})).unwrap(), o);
        assert!(o.merged(&json!({"api_token_vault_secret": ""})).is_err());
        assert!(o.merged(&json!({"api_token_vault_secret": 7})).is_err());
        assert_eq!(Options::default().merged(&vault.to_json()).unwrap(), vault);
        let round = Options::default().merged(&o.to_json()).unwrap();
        assert_eq!(round, o);
    }

    #[test]
    fn the_hint_names_every_option() {
        let every = Options::default().merged(&json!({"api_token_vault_secret": "v"})).unwrap().to_json();
        let listed: Vec<&str> = KNOWN_OPTIONS_HINT.trim_start_matches("known options: ").split(", ").collect();
        let mut keys: Vec<&str> = every.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, keys);
    }

    #[test]
    fn max_delete_fraction_is_a_number_from_0_to_1() {
        let fraction = |v: Value| Options::default().merged(&json!({"max_delete_fraction": v})).map(|o| o.max_delete_permille);
        assert_eq!(Options::default().to_json()["max_delete_fraction"], 0.5);
        assert_eq!(fraction(json!(0.25)), Ok(250));
        assert_eq!(fraction(json!(1)), Ok(1000));
        assert_eq!(fraction(json!(0)), Ok(0));
        for bad in [json!(1.5), json!(-0.1), json!("0.5"), Value::Null] {
            assert!(fraction(bad).is_err());
        }
        let round_trip = Options::default().merged(&json!({"max_delete_fraction": 0.3})).unwrap();
        assert_eq!(Options::default().merged(&round_trip.to_json()), Ok(round_trip));
    }

    #[test]
    fn log_retention_is_a_duration_in_hours_days_or_weeks() {
        let retention = |text: &str| Options::default().merged(&json!({"log_retention": text})).map(|o| o.log_retention_hours);
        assert_eq!(Options::default().to_json()["log_retention"], "30 days");
        assert_eq!(retention("12 hours"), Ok(12));
        assert_eq!(retention(" 1 Day "), Ok(24));
        assert_eq!(retention("2 weeks"), Ok(336));
        assert_eq!(retention("3650 days"), Ok(3650 * 24));
        for bad in ["0 days", "3651 days", "30", "days", "30 minutes", "1.5 days", "-1 days", "30 days ago", ""] {
            assert!(retention(bad).is_err(), "{bad}");
        }
        assert!(Options::default().merged(&json!({"log_retention": 30})).is_err());
        let hours = Options::default().merged(&json!({"log_retention": "36 hours"})).unwrap();
        assert_eq!(hours.to_json()["log_retention"], "36 hours");
        assert_eq!(Options::default().merged(&hours.to_json()).unwrap(), hours);
    }

    #[test]
    fn origins() {
        let o = FlexOrigin::parse("https://sectorpro.flexrentalsolutions.com/f5/api/", false).unwrap();
        assert_eq!(o.root(), "https://sectorpro.flexrentalsolutions.com/f5/api");
        for bad in [
            "http://tenant.flexrentalsolutions.com/f5/api",
            "https://127.0.0.1/f5/api",
            "https://localhost:8443/f5/api",
            "https://localhost./f5/api",
            "https://api.localhost./f5/api",
            "https://10.1.2.3/f5/api",
            "https://169.254.169.254/latest",
            "https://[::1]/f5/api",
            "https://100.64.0.1/f5/api",
            "https://[::ffff:127.0.0.1]/f5/api",
            "https://[64:ff9b::a9fe:a9fe]/latest",
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
        assert!(local.is_refused_host());
    }

    /// Each v4 range with its edges and the first allowed address on either side; every form an
    /// IPv6 address can carry a v4 one in must get the same answer.
    #[test]
    fn refused_v4_ranges_and_their_neighbours_in_every_form() {
        let cases: [(&str, bool); 37] = [
            ("0.0.0.0", true),
            ("0.255.255.255", true),
            ("1.0.0.0", false),
            ("9.255.255.255", false),
            ("10.0.0.0", true),
            ("10.255.255.255", true),
            ("11.0.0.0", false),
            ("100.63.255.255", false),
            ("100.64.0.0", true),
            ("100.64.0.1", true),
            ("100.127.255.255", true),
            ("100.128.0.0", false),
            ("126.255.255.255", false),
            ("127.0.0.1", true),
            ("127.255.255.255", true),
            ("128.0.0.0", false),
            ("169.253.255.255", false),
            ("169.254.0.0", true),
            ("169.254.169.254", true),
            ("169.254.255.255", true),
            ("169.255.0.0", false),
            ("172.15.255.255", false),
            ("172.16.0.0", true),
            ("172.31.255.255", true),
            ("172.32.0.0", false),
            ("192.167.255.255", false),
            ("192.168.0.0", true),
            ("192.168.255.255", true),
            ("192.169.0.0", false),
            ("8.8.8.8", false),
            ("223.255.255.255", false),
            ("224.0.0.0", true),
            ("239.255.255.255", true),
            ("240.0.0.0", true),
            ("255.255.255.254", true),
            ("255.255.255.255", true),
            ("52.16.0.1", false),
        ];
        for (text, refused) in cases {
            let v4: Ipv4Addr = text.parse().unwrap();
            let [a, b, c, d] = v4.octets();
            let nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
            let forms = [IpAddr::V4(v4), IpAddr::V6(v4.to_ipv6_mapped()), IpAddr::V6(v4.to_ipv6_compatible()), IpAddr::V6(nat64)];
            for ip in forms {
                assert_eq!(is_refused_address(ip), refused, "{ip} (from {text})");
            }
        }
    }

    #[test]
    fn refused_v6_ranges_and_their_neighbours() {
        for (text, refused) in [
            ("::", true),
            ("::1", true),
            ("2001:4860:4860::8888", false),
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("fc00::", true),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
            ("fe00::", false),
            ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("fe80::", true),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
            ("fec0::1", true),
            ("ff00::", true),
            ("ff02::1", true),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
            // Near the v4-carrying prefixes, but not in them: no v4 address is reached.
            ("::1:ffff:7f00:1", false),
            ("64:ff9a::7f00:1", false),
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(is_refused_address(ip), refused, "{ip}");
        }
    }

    #[test]
    fn a_resolved_answer_with_one_refused_address_is_refused_whole() {
        let public: Vec<SocketAddr> = ["52.16.0.1:443", "[2001:4860:4860::8888]:443", "8.8.8.8:443"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(check_resolved(public.clone(), false), Ok(public.clone()), "exactly the checked addresses");
        for private in ["10.0.0.7:443", "[::ffff:169.254.169.254]:443"] {
            let mut mixed = public.clone();
            mixed.insert(1, private.parse().unwrap());
            assert_eq!(check_resolved(mixed.clone(), false), Err(DestinationRefused), "{private}");
            assert_eq!(check_resolved(mixed.clone(), true), Ok(mixed), "the loopback switch allows it");
        }
    }

    #[test]
    fn a_checked_answer_serves_its_host_and_port_until_it_runs_out() {
        let start = Instant::now();
        let addrs: Vec<SocketAddr> = vec!["203.0.113.7:443".parse().unwrap(), "[2001:db8::7]:443".parse().unwrap()];
        let mut answers = CheckedAnswers::default();
        assert_eq!(answers.get("flex.example", 443, start), None);
        answers.keep("flex.example", 443, &addrs, start);
        assert_eq!(answers.get("flex.example", 443, start + RESOLVED_FOR / 2), Some(addrs.as_slice()));
        assert_eq!(answers.get("flex.example", 8443, start), None, "another port is another answer");
        assert_eq!(answers.get("other.example", 443, start), None);
        assert_eq!(answers.get("flex.example", 443, start + RESOLVED_FOR), None, "ran out");
        answers.keep("other.example", 443, &addrs, start + RESOLVED_FOR);
        assert_eq!(answers.answers.len(), 1, "the answer that ran out went");
        answers.keep("empty.example", 443, &[], start + RESOLVED_FOR);
        assert_eq!(answers.get("empty.example", 443, start + RESOLVED_FOR), None, "no address, nothing kept");
    }
}
