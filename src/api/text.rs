//! A JSON string that must really be a string.
//!
//! poem-openapi's `String` accepts `42` and `true` as `"42"` and `"true"`. For request bodies
//! that would turn a client's type error into stored data, so request objects use [`Text`],
//! which refuses anything but a JSON string while documenting itself as a plain `string`
//! (length validators still apply).
//!
//! Fields with a pattern use the [`Slug`], [`Line`] and [`HttpUrl`] variants, which carry their
//! pattern in the schema and check it with a regex compiled once. poem-openapi's own `pattern`
//! validator compiles its regex on every check, which was the largest user-space cost in a
//! profile of `POST /api/v1/enhancements`.

use std::{borrow::Cow, sync::LazyLock};

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use regex::Regex;
use serde_json::Value;

/// A string newtype that poem-openapi documents as `string` with `$schema` and that converts
/// back to its `String`; each type below adds its own `ParseFromJSON`.
macro_rules! string_type {
    ($(#[$doc:meta])* $name:ident, $schema:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub String);

        impl $name {
            /// The text.
            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(text: $name) -> Self {
                text.0
            }
        }

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
                self.0.is_empty()
            }
        }

        impl ToJSON for $name {
            fn to_json(&self) -> Option<Value> {
                Some(Value::String(self.0.clone()))
            }
        }
    };
}

string_type!(
    /// A strictly typed JSON string.
    Text,
    MetaSchema::new("string")
);

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => Ok(Self(text)),
            Some(other) => Err(ParseError::expected_type(other)),
            None => Err(ParseError::expected_input()),
        }
    }
}

/// A [`Text`] that must match a fixed pattern, documented in the schema.
macro_rules! pattern_text {
    ($(#[$doc:meta])* $name:ident, $pattern:expr, $expected:literal) => {
        string_type!(
            $(#[$doc])*
            $name,
            MetaSchema {
                pattern: Some($pattern.to_owned()),
                ..MetaSchema::new("string")
            }
        );

        impl ParseFromJSON for $name {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                static REGEX: LazyLock<Regex> = LazyLock::new(|| {
                    Regex::new($pattern).expect("the pattern is a valid regex (unit-tested)")
                });
                let Text(text) = Text::parse_from_json(value).map_err(ParseError::propagate)?;
                if REGEX.is_match(&text) {
                    Ok(Self(text))
                } else {
                    Err(ParseError::custom(format!(
                        "expected {} (pattern {})",
                        $expected, $pattern
                    )))
                }
            }
        }
    };
}

pattern_text!(
    /// An identifier: lowercase letters, digits, `_` and `-`, starting with a letter or digit.
    Slug,
    crate::domain::TENANT_ID_PATTERN,
    "an id of lowercase letters, digits, `_` and `-`, starting with a letter or digit"
);

pattern_text!(
    /// One line of text: not blank, no control characters.
    Line,
    r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
    "text that is not blank and has no control characters"
);

pattern_text!(
    /// An absolute http(s) URL.
    HttpUrl,
    crate::domain::SERVICEDESK_URL_PATTERN,
    "an http:// or https:// URL"
);

#[cfg(test)]
mod tests {
    use poem_openapi::types::ParseFromJSON;
    use serde_json::json;

    use super::{HttpUrl, Line, Slug};

    #[test]
    fn patterns_accept_and_refuse() {
        assert!(Slug::parse_from_json(Some(json!("acme-1"))).is_ok());
        assert!(Slug::parse_from_json(Some(json!("Acme"))).is_err());
        assert!(Slug::parse_from_json(Some(json!(42))).is_err());
        assert!(Line::parse_from_json(Some(json!("INC 1"))).is_ok());
        assert!(Line::parse_from_json(Some(json!("   "))).is_err());
        assert!(Line::parse_from_json(Some(json!("a\u{85}b"))).is_err());
        assert!(HttpUrl::parse_from_json(Some(json!("https://desk.example:8443/x"))).is_ok());
        assert!(HttpUrl::parse_from_json(Some(json!("ftp://desk.example"))).is_err());
        assert!(HttpUrl::parse_from_json(Some(json!("http://[2001:db8::1]:8080/x"))).is_ok());
        assert!(HttpUrl::parse_from_json(Some(json!("http://%31%32%37.0.0.1/"))).is_err());
    }
}
