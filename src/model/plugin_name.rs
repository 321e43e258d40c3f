use std::fmt;

use super::InvalidField;

/// A plugin's name: the file stem of `plugins/<name>.lua`, `^[a-z0-9_-]{1,64}$`.
///
/// The alphabet has no `:` so a name can never forge another plugin's keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginName(String);

impl PluginName {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidField::new(
                "plugin",
                format!("{raw:?} is not a plugin name; names are 1 to 64 characters of a-z 0-9 _ -"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by name are looked up with the `&str` of a path or a file stem
/// (the derived order and hash are those of the string).
impl std::borrow::Borrow<str> for PluginName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for PluginName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_lower_case_names_only() {
        assert!(PluginName::parse("yahoo").is_ok());
        assert!(PluginName::parse("my_src-2").is_ok());
        for bad in ["", "Yahoo", "a:b", "a.b", "a*", &"a".repeat(65)] {
            assert!(PluginName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
