//! Domain values that are valid by construction ("parse, don't validate").
//!
//! The HTTP edge parses raw strings into these types once; everything behind it (repositories,
//! the queue, the worker) takes the types and so can never see an invalid tenant id or URL.

use std::fmt;

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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

/// Pattern of [`TenantId`], shared with the OpenAPI document.
pub const TENANT_ID_PATTERN: &str = "^[a-z0-9][a-z0-9_-]*$";

impl TenantId {
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
        if raw.is_empty() || raw.len() > 100 {
            return Err(invalid("must be 1 to 100 characters"));
        }
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !first_ok || !rest_ok {
            return Err(invalid("must match ^[a-z0-9][a-z0-9_-]*$"));
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

/// A ticket id in the tenant's service desk: 1–100 characters, not blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketId(String);

impl TicketId {
    /// Parses a ticket id.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let count = raw.chars().count();
        if count == 0 || count > 100 || raw.trim().is_empty() {
            return Err(InvalidValue {
                field: "ticket_id",
                reason: "must be 1 to 100 characters",
            });
        }
        if raw.chars().any(char::is_control) {
            return Err(InvalidValue {
                field: "ticket_id",
                reason: "must not contain control characters",
            });
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Pattern of [`ServiceDeskUrl`], shared with the OpenAPI document.
pub const SERVICEDESK_URL_PATTERN: &str = r"^https?://[A-Za-z0-9._~%-]+(:[0-9]{1,5})?(/\S*)?$";

/// A tenant's service desk base URL: absolute http(s), at most 500 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDeskUrl(String);

impl ServiceDeskUrl {
    /// Parses a service desk URL: `http(s)://HOST[:PORT][/PATH]`, where the host is a DNS name
    /// or IPv4 address and the path has no white space ([`SERVICEDESK_URL_PATTERN`]).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let invalid = |reason| InvalidValue {
            field: "servicedesk_url",
            reason,
        };
        if raw.len() > 500 {
            return Err(invalid("must be at most 500 characters"));
        }
        let not_url = || invalid("must be an absolute http(s) URL");
        let rest = raw
            .strip_prefix("https://")
            .or_else(|| raw.strip_prefix("http://"))
            .ok_or_else(not_url)?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let (host, port) = authority
            .split_once(':')
            .map_or((authority, None), |(h, p)| (h, Some(p)));
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._~%-".contains(c));
        let port_ok =
            port.is_none_or(|p| p.chars().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok());
        let path_ok = !path.chars().any(char::is_whitespace);
        if host_ok && port_ok && path_ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(not_url())
        }
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: 1–255 characters, not blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantName(String);

impl TenantName {
    /// Parses a tenant name.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let count = raw.chars().count();
        if count == 0 || count > 255 || raw.trim().is_empty() {
            return Err(InvalidValue {
                field: "name",
                reason: "must be 1 to 255 characters",
            });
        }
        if raw.chars().any(char::is_control) {
            return Err(InvalidValue {
                field: "name",
                reason: "must not contain control characters",
            });
        }
        Ok(Self(raw.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
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

/// Lifecycle of an enhancement: `pending` → `processing` → `completed` | `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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

    /// Parses the database spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(Self::Pending),
            "processing" => Some(Self::Processing),
            "completed" => Some(Self::Completed),
            "failed" => Some(Self::Failed),
            _ => None,
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

    #[test]
    fn tenant_ids() {
        for ok in ["a", "acme", "acme-corp_2", "0abc", &"a".repeat(100)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-acme",
            "_x",
            "Acme",
            "acme corp",
            "acmé",
            "a/b",
            &"a".repeat(101),
        ] {
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
        for ok in ["https://desk.example.com", "http://localhost:8080/api"] {
            assert!(ServiceDeskUrl::parse(ok).is_ok(), "{ok}");
        }
        let long = format!("https://e.com/{}", "a".repeat(500));
        for bad in [
            "ftp://x.com",
            "desk.example.com",
            "https://",
            "not a url",
            "",
            long.as_str(),
        ] {
            assert!(ServiceDeskUrl::parse(bad).is_err(), "{bad}");
        }
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

    #[test]
    fn statuses_round_trip() {
        for s in [
            EnhancementStatus::Pending,
            EnhancementStatus::Processing,
            EnhancementStatus::Completed,
            EnhancementStatus::Failed,
        ] {
            assert_eq!(EnhancementStatus::parse(s.as_str()), Some(s));
        }
        assert!(EnhancementStatus::parse("done").is_none());
    }
}
