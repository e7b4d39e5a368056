//! Domain values that are valid by construction ("parse, don't validate").
//!
//! The HTTP edge parses raw strings into these types once; everything behind it (repositories,
//! the queue, the worker) takes the types and so can never see an invalid tenant id or URL.
//! Each type owns its rule: `parse` applies it, and the constants next to it (pattern, length)
//! are what the OpenAPI document shows for it (`api::text` turns the types into request types).

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

/// Why a raw value was refused; the message is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidValue {
    /// The field that was refused.
    pub field: &'static str,
    /// What the field must look like.
    pub reason: &'static str,
}

/// A tenant's public identifier: 1–100 chars of `[a-z0-9][a-z0-9_-]*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

/// Pattern of [`TenantId`], as the OpenAPI document shows it; [`TenantId::parse`] applies it.
pub const TENANT_ID_PATTERN: &str = "^[a-z0-9][a-z0-9_-]*$";

impl TenantId {
    /// Longest tenant id, in characters.
    pub const MAX_CHARS: usize = 100;

    /// Parses a tenant id.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let invalid = |reason| InvalidValue {
            field: "tenant_id",
            reason,
        };
        let mut chars = raw.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if raw.is_empty() || raw.len() > Self::MAX_CHARS {
            return Err(invalid("must be 1 to 100 characters"));
        }
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !first_ok || !rest_ok {
            return Err(invalid(
                "must be lowercase letters, digits, `_` and `-`, starting with a letter or digit",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, InvalidValue> {
        Self::parse(&value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lets code (and tests) compare a tenant id with text without building one.
impl PartialEq<str> for TenantId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// Pattern of one line of text ([`TicketId`], [`TenantName`]), as the OpenAPI document shows
/// it: not blank, no control characters (`char::is_control`, the Unicode class Cc).
pub const LINE_PATTERN: &str =
    r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";

/// Defines a type holding one line of 1 to `$max` characters ([`LINE_PATTERN`]), refused as
/// `$field` otherwise.
macro_rules! one_line_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            /// Longest value, in characters.
            pub const MAX_CHARS: usize = $max;

            /// Parses one line of text: 1 to `MAX_CHARS` characters, not blank, no control
            /// characters.
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                let invalid = |reason| InvalidValue {
                    field: $field,
                    reason,
                };
                let count = raw.chars().count();
                if count == 0 || count > $max || raw.trim().is_empty() {
                    return Err(invalid(concat!(
                        "must be 1 to ",
                        stringify!($max),
                        " characters, not blank"
                    )));
                }
                if raw.chars().any(char::is_control) {
                    return Err(invalid("must not contain control characters"));
                }
                Ok(Self(raw.to_owned()))
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

one_line_type!(
    /// A ticket id in the tenant's service desk: 1–100 characters, not blank.
    TicketId,
    "ticket_id",
    100
);

one_line_type!(
    /// A display name: 1–255 characters, not blank.
    TenantName,
    "name",
    255
);

/// Pattern of [`ServiceDeskUrl`], as the OpenAPI document shows it: a DNS name or IPv4
/// address, or an IPv6 address in brackets, then an optional port and path.
/// [`ServiceDeskUrl::parse`] applies it (and more: the host policy, valid IP literals).
pub const SERVICEDESK_URL_PATTERN: &str =
    r"^https?://([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/\S*)?$";

/// Which hosts a service-desk URL may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPolicy {
    /// Public hosts only: the service will call this URL, and a URL naming an internal
    /// address would make it a proxy into its own network (SSRF; contract section 9).
    PublicOnly,
    /// Any host (`AI_AGENTS_ALLOW_INTERNAL_URLS=true`: local development against a stub).
    AllowInternal,
}

/// A tenant's service desk base URL: absolute http(s), at most 500 characters, and (unless
/// the policy allows it) not naming an internal host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDeskUrl(String);

impl ServiceDeskUrl {
    /// Longest URL, in bytes (the pattern allows non-ASCII only in the path).
    pub const MAX_LEN: usize = 500;

    /// Parses a service desk URL: `http(s)://HOST[:PORT][/PATH]` ([`SERVICEDESK_URL_PATTERN`]),
    /// refusing internal hosts under [`HostPolicy::PublicOnly`] (see `internal_host`).
    pub fn parse(raw: &str, policy: HostPolicy) -> Result<Self, InvalidValue> {
        let invalid = |reason| InvalidValue {
            field: "servicedesk_url",
            reason,
        };
        if raw.len() > Self::MAX_LEN {
            return Err(invalid("must be at most 500 characters"));
        }
        let not_url = || invalid("must be an absolute http(s) URL");
        let rest = raw
            .strip_prefix("https://")
            .or_else(|| raw.strip_prefix("http://"))
            .ok_or_else(not_url)?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let (host, port) = split_host_port(authority).ok_or_else(not_url)?;
        let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
            None => {
                !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            }
        };
        let port_ok =
            port.is_none_or(|p| p.chars().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok());
        let path_ok = !path.chars().any(char::is_whitespace);
        if !(host_ok && port_ok && path_ok) {
            return Err(not_url());
        }
        match internal_host(host) {
            Err(()) => Err(not_url()),
            Ok(true) if policy == HostPolicy::PublicOnly => Err(invalid(
                "must name a public host, not localhost, a single-label, .internal or .local name, \
                 or a loopback, private, link-local, unique-local, CGNAT or unspecified address",
            )),
            Ok(_) => Ok(Self(raw.to_owned())),
        }
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `host[:port]` of an authority, where host may be a bracketed IPv6 address.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        let (host, rest) = authority.split_at(end);
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        };
    }
    Some(
        authority
            .split_once(':')
            .map_or((authority, None), |(h, p)| (h, Some(p))),
    )
}

/// Whether `host` (as written in a URL) names a machine inside the deployment's own network:
/// `localhost`, a single-label name (`redis`, `postgres`), a `.internal`, `.local` or `.svc`
/// name, or an IP literal — in any notation a URL parser accepts (dotted, decimal `2130706433`,
/// hex `0x7f000001`, octal `0177.1`, bracketed IPv6, IPv4-mapped IPv6) — in a loopback,
/// private, link-local, unique-local, CGNAT or unspecified range. `Err` when the host looks
/// like an IPv4 address but is not a valid one.
///
/// This judges the URL as written. A public name can still resolve to an internal address
/// (DNS rebinding), so the code that calls the URL must check the address it connects to.
fn internal_host(host: &str) -> Result<bool, ()> {
    let host = host.to_ascii_lowercase();
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().map(internal_v6).map_err(|_| ());
    }
    let host = host.strip_suffix('.').unwrap_or(&host);
    if ends_in_a_number(host) {
        return parse_ipv4(host).map(internal_v4);
    }
    let name_internal = host == "localhost"
        || !host.contains('.')
        || [".localhost", ".internal", ".local", ".svc"]
            .iter()
            .any(|suffix| host.ends_with(suffix));
    Ok(name_internal)
}

/// The WHATWG URL rule that makes a host an IPv4 address: its last label is a number.
fn ends_in_a_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or(host);
    !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())))
}

/// An IPv4 address in any notation of the WHATWG URL standard: 1–4 parts, each decimal,
/// `0x` hex or `0`-prefixed octal; the last part fills the remaining bytes.
fn parse_ipv4(host: &str) -> Result<Ipv4Addr, ()> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return Err(());
    }
    let numbers = parts
        .iter()
        .map(|part| {
            let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
            match (digits.is_empty(), part.is_empty()) {
                (_, true) => Err(()),
                (true, false) => Ok(0),
                _ => u64::from_str_radix(digits, radix).map_err(|_| ()),
            }
        })
        .collect::<Result<Vec<u64>, ()>>()?;
    let (last, leading) = numbers.split_last().ok_or(())?;
    if leading.iter().any(|&n| n > 255) {
        return Err(());
    }
    let room = 8 * (5 - numbers.len() as u32);
    if *last >= 1_u64 << room {
        return Err(());
    }
    let mut value = *last;
    for (i, &n) in leading.iter().enumerate() {
        value += n << (8 * (3 - i as u32));
    }
    u32::try_from(value).map(Ipv4Addr::from).map_err(|_| ())
}

/// Loopback, private, link-local, CGNAT (100.64/10) or "this network" (0/8).
fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

/// Loopback, unspecified, unique-local (fc00::/7), link-local (fe80::/10), site-local
/// (fec0::/10), or an IPv4-mapped, -compatible or NAT64 (64:ff9b::/96) form of an internal
/// IPv4 address.
fn internal_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let embedded_v4 = || {
        let [.., a, b, c, d] = ip.octets();
        Ipv4Addr::new(a, b, c, d)
    };
    ip.is_loopback()
        || ip.is_unspecified()
        || (segments[0] & 0xfe00) == 0xfc00
        || (segments[0] & 0xffc0) == 0xfe80
        || (segments[0] & 0xffc0) == 0xfec0
        || ip.to_ipv4_mapped().is_some_and(internal_v4)
        || (segments[..6] == [0; 6] && internal_v4(embedded_v4()))
        || (segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && internal_v4(embedded_v4()))
}

/// Checks a client-supplied JSON object for NUL characters, which PostgreSQL's `jsonb` cannot
/// store (it would fail the insert with a data exception).
pub fn storable_json(field: &'static str, value: &serde_json::Value) -> Result<(), InvalidValue> {
    let has_nul = |s: &str| s.contains('\0');
    let ok = match value {
        serde_json::Value::String(s) => !has_nul(s),
        serde_json::Value::Array(items) => {
            return items.iter().try_for_each(|v| storable_json(field, v));
        }
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                if has_nul(key) {
                    return Err(InvalidValue {
                        field,
                        reason: "must not contain NUL characters",
                    });
                }
                storable_json(field, v)?;
            }
            true
        }
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(InvalidValue {
            field,
            reason: "must not contain NUL characters",
        })
    }
}

/// Lifecycle of an enhancement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, poem_openapi::Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename = "Status", rename_all = "snake_case")]
pub enum EnhancementStatus {
    /// Stored and queued, not yet taken by a worker.
    Pending,
    /// A worker is on it.
    Processing,
    /// Finished with a result.
    Completed,
    /// Gave up; `error_message` says why.
    Failed,
}

impl EnhancementStatus {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// Parses the database spelling. This is the one status type from the database to the API
    /// (rows, list filters, the `Status` schema), so a value it does not know is an error for
    /// the caller to report, never silently taken for another status.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "pending" => Ok(Self::Pending),
            "processing" => Ok(Self::Processing),
            "completed" => Ok(Self::Completed),
            "failed" => Ok(Self::Failed),
            _ => Err(InvalidValue {
                field: "status",
                reason: "must be pending, processing, completed or failed",
            }),
        }
    }

    /// Whether the enhancement can no longer change.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tenant ids that are valid, and some that are not (also samples of the pattern test).
    const GOOD_TENANT_IDS: [&str; 4] = ["a", "acme", "acme-corp_2", "0abc"];
    const BAD_TENANT_IDS: [&str; 7] = ["", "-acme", "_x", "Acme", "acme corp", "acmé", "a/b"];

    #[test]
    fn tenant_ids() {
        for ok in GOOD_TENANT_IDS.into_iter().chain([&*"a".repeat(100)]) {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in BAD_TENANT_IDS.into_iter().chain([&*"a".repeat(101)]) {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ticket_ids() {
        assert!(TicketId::parse("INC-1").is_ok());
        assert!(TicketId::parse(&"é".repeat(100)).is_ok());
        for bad in ["", "   ", "a\nb", &"x".repeat(101)] {
            assert!(TicketId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls() {
        let public = |url| ServiceDeskUrl::parse(url, HostPolicy::PublicOnly).is_ok();
        for ok in [
            "https://desk.example.com",
            "http://desk.example.com:8080/api",
            "https://8.8.8.8/x",
            "https://[2001:db8::1]:8443/",
        ] {
            assert!(public(ok), "{ok}");
        }
        let long = format!("https://e.com/{}", "a".repeat(500));
        for bad in [
            "ftp://x.com",
            "desk.example.com",
            "https://",
            "not a url",
            "",
            long.as_str(),
            "http://%31%32%37.0.0.1/",
            "http://user@desk.example.com/",
            "http://[::1/",
            "http://1.2.3.4.5/",
            "http://256.1.1.1/",
        ] {
            let refused = ServiceDeskUrl::parse(bad, HostPolicy::AllowInternal);
            assert!(refused.is_err(), "{bad}");
        }
    }

    #[test]
    fn internal_hosts_are_refused_unless_allowed() {
        for internal in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:6379/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://10.0.0.5/",
            "http://172.16.3.4/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://0/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[64:ff9b::10.0.0.1]/",
            "http://redis:6379/",
            "http://postgres/",
            "http://localhost:8080/api",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "http://metadata.google.internal/",
            "http://printer.local/",
            "http://ai-agents-redis.ai-agents.svc/",
            "http://127.0.0.1./",
        ] {
            let refused =
                ServiceDeskUrl::parse(internal, HostPolicy::PublicOnly).expect_err(internal);
            assert!(
                refused.reason.contains("public host"),
                "{internal}: {refused}"
            );
            assert!(
                ServiceDeskUrl::parse(internal, HostPolicy::AllowInternal).is_ok(),
                "{internal}"
            );
        }
        for public in ["100.128.0.1", "172.32.0.1", "11.0.0.1", "desk.example.com"] {
            assert_eq!(internal_host(public), Ok(false), "{public}");
        }
        assert_eq!(parse_ipv4("2130706433"), Ok(Ipv4Addr::LOCALHOST));
        assert_eq!(parse_ipv4("0x7f.1"), Ok(Ipv4Addr::LOCALHOST));
        assert_eq!(parse_ipv4("127.0.1"), Ok(Ipv4Addr::new(127, 0, 0, 1)));
    }

    #[test]
    fn json_with_nul_is_refused() {
        let ok = serde_json::json!({"a": ["b", {"c": 1}]});
        assert!(storable_json("context", &ok).is_ok());
        for bad in [
            serde_json::json!({"a\u{0}": 1}),
            serde_json::json!({"a": ["x\u{0}"]}),
        ] {
            assert!(storable_json("context", &bad).is_err(), "{bad}");
        }
        assert!(TenantName::parse("a\u{0}b").is_err());
    }

    /// The patterns the OpenAPI document shows are the rules `parse` applies.
    #[test]
    fn parsers_apply_the_documented_patterns() {
        let tenant = regex::Regex::new(TENANT_ID_PATTERN).expect("pattern");
        let line = regex::Regex::new(LINE_PATTERN).expect("pattern");
        let url = regex::Regex::new(SERVICEDESK_URL_PATTERN).expect("pattern");
        let long = "x".repeat(101);
        let wide = "é".repeat(100);
        let lines = [
            " ",
            "   ",
            "a\nb",
            "a\u{85}b",
            "a\u{7f}",
            "\u{a0}",
            "x\ty",
            "INC 1",
            "Ticket #7",
        ];
        let urls = [
            "https://desk.example.com",
            "http://[2001:db8::1]:8080/x",
            "ftp://x.com",
            "http://a b",
            "http://%31/",
            "https://e.com/p?q=1",
            "http://user@e.com/",
        ];
        let samples = (GOOD_TENANT_IDS.into_iter().chain(BAD_TENANT_IDS))
            .chain(lines)
            .chain(urls)
            .chain([long.as_str(), wide.as_str()]);
        let within = |s: &str, max: usize| s.chars().count() <= max;
        for s in samples {
            let tenant_ok = tenant.is_match(s) && within(s, TenantId::MAX_CHARS);
            assert_eq!(TenantId::parse(s).is_ok(), tenant_ok, "tenant id {s:?}");
            let ticket_ok = line.is_match(s) && within(s, TicketId::MAX_CHARS);
            assert_eq!(TicketId::parse(s).is_ok(), ticket_ok, "ticket id {s:?}");
            let name_ok = line.is_match(s) && within(s, TenantName::MAX_CHARS);
            assert_eq!(TenantName::parse(s).is_ok(), name_ok, "name {s:?}");
            // The URL parser is stricter than its pattern (valid IP literals, the host policy).
            if ServiceDeskUrl::parse(s, HostPolicy::AllowInternal).is_ok() {
                assert!(url.is_match(s), "url {s:?}");
            }
        }
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            EnhancementStatus::Pending,
            EnhancementStatus::Processing,
            EnhancementStatus::Completed,
            EnhancementStatus::Failed,
        ] {
            assert_eq!(EnhancementStatus::parse(s.as_str()), Ok(s));
            assert_eq!(s.is_final(), matches!(s.as_str(), "completed" | "failed"));
        }
        assert!(EnhancementStatus::parse("done").is_err());
    }
}
