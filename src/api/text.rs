//! Request strings: the domain types as poem-openapi types, and a JSON string that must really
//! be a string.
//!
//! poem-openapi's `String` accepts `42` and `true` as `"42"` and `"true"`. For request bodies
//! that would turn a client's type error into stored data, so request objects use [`Text`],
//! which refuses anything but a JSON string while documenting itself as a plain `string`
//! (length validators still apply).
//!
//! [`TenantId`], [`TicketId`] and [`TenantName`] are request types themselves: their schema
//! carries the pattern and lengths from `domain` and their parser is the domain's `parse`, so a
//! handler receives values that are valid by construction, and the rule exists once. (A
//! hand-written check, too: poem-openapi's own `pattern` validator compiled its regex on every
//! check, the largest user-space cost in a profile of `POST /api/v1/enhancements`.)
//!
//! A service-desk URL is the exception: whether its host is acceptable depends on the
//! deployment (`AI_AGENTS_ALLOW_INTERNAL_URLS`), which a parser without state cannot know. So
//! [`HttpUrl`] documents the URL's schema and the handler parses it into a `ServiceDeskUrl`
//! with the deployment's host policy.

use std::borrow::Cow;

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde_json::Value;

use crate::domain::{
    InvalidValue, LINE_PATTERN, SERVICEDESK_URL_PATTERN, ServiceDeskUrl, TENANT_ID_PATTERN,
    TenantId, TenantName, TicketId,
};

/// A strictly typed JSON string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl Text {
    /// The text.
    pub fn into_inner(self) -> String {
        self.0
    }

    /// The text, borrowed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.0
    }
}

/// What poem-openapi's length validators measure.
impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => Ok(Self(text)),
            Some(other) => Err(ParseError::expected_type(other)),
            None => Err(ParseError::expected_input()),
        }
    }
}

/// A service-desk URL as the client sent it; its schema shows the URL's pattern and length.
/// The handler parses it into a `ServiceDeskUrl` under the deployment's host policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(pub String);

impl HttpUrl {
    /// The URL as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ParseFromJSON for HttpUrl {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        Text::parse_from_json(value)
            .map(|text| Self(text.0))
            .map_err(ParseError::propagate)
    }
}

/// A string schema with a pattern and length bounds (in characters).
fn pattern_schema(pattern: &str, max_length: usize) -> MetaSchema {
    MetaSchema {
        pattern: Some(pattern.to_owned()),
        min_length: Some(1),
        max_length: Some(max_length),
        ..MetaSchema::new("string")
    }
}

/// Implements poem-openapi's `Type` and `ToJSON` for a type that is a string on the wire:
/// documented by `$schema`, written as its `as_str()`.
macro_rules! string_type {
    ($name:ty, $schema:expr) => {
        impl Type for $name {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                "string".into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new($schema))
            }

            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                Some(self)
            }

            fn raw_element_iter<'a>(
                &'a self,
            ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }

            fn is_empty(&self) -> bool {
                self.as_str().is_empty()
            }
        }

        impl ToJSON for $name {
            fn to_json(&self) -> Option<Value> {
                Some(Value::String(self.as_str().to_owned()))
            }
        }
    };
}

string_type!(Text, MetaSchema::new("string"));
string_type!(
    HttpUrl,
    pattern_schema(SERVICEDESK_URL_PATTERN, ServiceDeskUrl::MAX_LEN)
);

/// Makes a domain type a request type: a [`Text`] parsed by the type's own `parse`.
macro_rules! domain_type {
    ($name:ty, $schema:expr) => {
        string_type!($name, $schema);

        impl ParseFromJSON for $name {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                let Text(text) = Text::parse_from_json(value).map_err(ParseError::propagate)?;
                <$name>::parse(&text).map_err(|e: InvalidValue| ParseError::custom(e))
            }
        }
    };
}

domain_type!(
    TenantId,
    pattern_schema(TENANT_ID_PATTERN, TenantId::MAX_CHARS)
);
domain_type!(TicketId, pattern_schema(LINE_PATTERN, TicketId::MAX_CHARS));
domain_type!(
    TenantName,
    pattern_schema(LINE_PATTERN, TenantName::MAX_CHARS)
);

#[cfg(test)]
mod tests {
    use poem_openapi::types::ParseFromJSON;
    use serde_json::json;

    use super::{HttpUrl, TenantId, TenantName, Text, TicketId};

    #[test]
    fn domain_types_parse_from_json_strings_only() {
        let tenant = TenantId::parse_from_json(Some(json!("acme-1"))).expect("valid");
        assert_eq!(tenant.as_str(), "acme-1");
        for bad in [json!("Acme"), json!(""), json!(42), json!(null)] {
            assert!(
                TenantId::parse_from_json(Some(bad.clone())).is_err(),
                "{bad}"
            );
        }
        assert!(TicketId::parse_from_json(Some(json!("INC 1"))).is_ok());
        assert!(TicketId::parse_from_json(Some(json!("   "))).is_err());
        assert!(TicketId::parse_from_json(Some(json!("a\u{85}b"))).is_err());
        assert!(TenantName::parse_from_json(Some(json!("x".repeat(256)))).is_err());
        let refused = TenantId::parse_from_json(Some(json!("Acme"))).expect_err("refused");
        assert!(
            refused.message().contains("tenant_id: "),
            "{}",
            refused.message()
        );
        assert!(Text::parse_from_json(Some(json!(true))).is_err());
        assert!(HttpUrl::parse_from_json(Some(json!("ftp://x"))).is_ok());
        assert!(HttpUrl::parse_from_json(Some(json!(1))).is_err());
    }
}
