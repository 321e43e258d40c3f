//! Query strings parsed strictly: known names only, each at most once, so a
//! typo (`strat=`) is a 400 naming it instead of a silently ignored filter.

use std::borrow::Cow;

use super::error::ApiError;

/// Borrows from the query string: a value copies only when it was
/// percent-encoded (every data request parses one).
pub(crate) struct Query<'a> {
    values: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Query<'a> {
    pub(crate) fn parse(raw: Option<&'a str>, allowed: &[&str]) -> Result<Self, ApiError> {
        // A handful of parameters at most: a small vector beats hashing.
        let mut values: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::with_capacity(4);
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                return Err(ApiError::bad_request(
                    k.to_string(),
                    format!("unknown query parameter {k:?}; this route takes {}", allowed.join(", ")),
                ));
            }
            if values.iter().any(|(name, _)| *name == k) {
                return Err(ApiError::bad_request(
                    k.to_string(),
                    format!("{k} is given more than once"),
                ));
            }
            values.push((k, v));
        }
        Ok(Self { values })
    }

    /// The value, treating `name=` (empty) as absent.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
            .filter(|v| !v.is_empty())
    }

    pub(crate) fn flag(&self, name: &'static str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(other) => Err(ApiError::bad_request(
                name,
                format!("{other:?} is not a boolean; use true or false"),
            )),
        }
    }
}
