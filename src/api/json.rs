//! The one JSON reader for everything a client sends (FHIR bodies, `/sync/push`, conflict
//! resolutions, WebSocket messages). Stricter than `serde_json::from_slice`: an object
//! with the same key twice is refused instead of keeping the last value (two readers of
//! one document must never see different records), and so is U+0000 in any string, which
//! PostgreSQL cannot store in text. A first pass checks without building anything; the
//! second is serde_json's own, so `arbitrary_precision` numbers and key order stay as sent.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Why a body was refused. Never carries a key or a value: both can be PHI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("request body is not valid JSON (line {line}, column {column})")]
    Syntax { line: usize, column: usize },
    #[error("request body has a duplicate key")]
    DuplicateKey,
    #[error("request body contains a NUL character (U+0000)")]
    Nul,
}

/// Parses `bytes` as one JSON document, refusing duplicate keys and U+0000.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    let found = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let checked = Check { found: &found }.deserialize(&mut de).and_then(|()| de.end());
    if let Err(e) = checked {
        return Err(found.get().unwrap_or(JsonError::Syntax { line: e.line(), column: e.column() }));
    }
    serde_json::from_slice(bytes).map_err(|e| JsonError::Syntax { line: e.line(), column: e.column() })
}

/// Walks one value; a problem is noted in `found` (serde's own error carries text only).
#[derive(Clone, Copy)]
struct Check<'a> {
    found: &'a Cell<Option<JsonError>>,
}

impl Check<'_> {
    fn refuse<E: serde::de::Error>(self, why: JsonError) -> E {
        self.found.set(Some(why));
        E::custom(why)
    }

    fn string<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        if s.contains('\0') { Err(self.refuse(JsonError::Nul)) } else { Ok(()) }
    }
}

impl<'de> DeserializeSeed<'de> for Check<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// An object key, checked for U+0000 and kept for the duplicate check.
struct Key<'a>(Check<'a>);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for Key<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<String, E> {
        self.0.string(s)?;
        Ok(s.to_owned())
    }
}

impl<'de> Visitor<'de> for Check<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        self.string(s)
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    // With `arbitrary_precision`, serde_json hands numbers over as a one-key map too.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key_seed(Key(self))? {
            if !seen.insert(key) {
                return Err(self.refuse(JsonError::DuplicateKey));
            }
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_serde_json_accepts_and_keeps_numbers_and_order() {
        let text = r#"{"z": 72.50, "a": [1, 1e400, -0, {"a": 1}, {"a": 2}], "m": {"b": null, "a": true}, "s": "tab\tnewline\n"}"#;
        let value = parse(text.as_bytes()).unwrap();
        assert_eq!(value.to_string(), serde_json::from_str::<Value>(text).unwrap().to_string());
        assert_eq!(value["z"].to_string(), "72.50");
        assert_eq!(value.as_object().unwrap().keys().collect::<Vec<_>>(), ["z", "a", "m", "s"]);
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_without_naming_them() {
        for text in [r#"{"id": "1", "id": "2"}"#, r#"{"a": {"SECRET": 1, "SECRET": 1}}"#, r#"[{"x": [{"k": 1, "k": 1}]}]"#] {
            let err = parse(text.as_bytes()).unwrap_err();
            assert_eq!(err, JsonError::DuplicateKey, "{text}");
            assert!(!err.to_string().contains("SECRET"));
        }
        // The same key in sibling objects is no duplicate.
        assert!(parse(br#"[{"k": 1}, {"k": 2}]"#).is_ok());
    }

    #[test]
    fn nul_is_refused_in_values_and_keys_escaped_or_not() {
        for text in [r#"{"a": "x\u0000y"}"#, r#"{"a\u0000": 1}"#, r#"["\u0000"]"#, "\"\\u0000\""] {
            assert_eq!(parse(text.as_bytes()), Err(JsonError::Nul), "{text}");
        }
    }

    #[test]
    fn syntax_errors_say_where() {
        assert_eq!(parse(b"{\"a\": }"), Err(JsonError::Syntax { line: 1, column: 7 }));
        assert!(matches!(parse(b"{} {}"), Err(JsonError::Syntax { .. })));
        assert!(matches!(parse(b""), Err(JsonError::Syntax { .. })));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(parse(deep.as_bytes()), Err(JsonError::Syntax { .. })));
    }
}
