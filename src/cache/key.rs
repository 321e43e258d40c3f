//! Redis key layout (docs/ARCHITECTURE.md, "The range store"):
//!
//! - `{prefix}:{plugin}:{version}:{{TICKER}}`: one hash per series, a field
//!   per date holding that date's bar (`2024-01-02`), `c` the coverage, `m`
//!   the meta of the latest fetch, `e` the failure marker of the last
//!   failed fetch;
//! - `{prefix}:lock:{plugin}:{version}:{{TICKER}}`: the fleet lock;
//! - `{prefix}:index:{plugin}`: set of `version:TICKER` cached for a plugin;
//! - `{prefix}:index:plugins`: set of plugin names with series;
//! - `{prefix}:invalidate`: the pub/sub channel of the L1s.
//!
//! The ticker is the Redis Cluster hash tag, so a series and its lock share
//! a slot (one script touches both). Every part is validated before it gets
//! here and none can contain `:`, `{` or `}`, so no input lands in another
//! plugin's namespace.

use super::store::SeriesId;
use crate::model::{DateRange, InvalidField, PluginName, Ticker};

/// Where keys of one deployment live; built once from config.
#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn series(&self, id: &SeriesId) -> String {
        format!("{}:{}:{}:{{{}}}", self.prefix, id.plugin, id.version, id.ticker)
    }

    pub fn lock(&self, id: &SeriesId) -> String {
        format!("{}:lock:{}:{}:{{{}}}", self.prefix, id.plugin, id.version, id.ticker)
    }

    /// Set of `version:TICKER` members with series for one plugin.
    pub fn plugin_index(&self, plugin: &str) -> String {
        format!("{}:index:{plugin}", self.prefix)
    }

    /// Set of plugin names that have series.
    pub fn plugins_index(&self) -> String {
        format!("{}:index:plugins", self.prefix)
    }

    /// Pub/sub channel that carries invalidations to every daemon's L1.
    pub fn invalidation_channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }
}

/// The member of a plugin index naming one series.
pub fn index_member(version: u32, ticker: &Ticker) -> String {
    format!("{version}:{ticker}")
}

/// Reads an index member back; `None` for anything tickerd did not write.
pub fn parse_index_member(member: &str) -> Option<(u32, Ticker)> {
    let (v, t) = member.split_once(':')?;
    Some((v.parse().ok()?, Ticker::parse(t).ok()?))
}

/// What an invalidation removes: a plugin, a ticker, or both, optionally
/// narrowed to one exact range.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub plugin: Option<PluginName>,
    pub ticker: Option<Ticker>,
    pub range: Option<DateRange>,
}

impl Selector {
    /// The one way an edge (HTTP, CLI) builds a selector from what a user
    /// typed: a plugin, a ticker or both (deleting everything is not one
    /// request), and an exact range only as a start and an end together.
    pub fn from_parts(
        plugin: Option<&str>,
        ticker: Option<&str>,
        start: Option<&str>,
        end: Option<&str>,
        today: chrono::NaiveDate,
    ) -> Result<Self, InvalidField> {
        let plugin = plugin.map(PluginName::parse).transpose()?;
        let ticker = ticker.map(Ticker::parse).transpose()?;
        if plugin.is_none() && ticker.is_none() {
            return Err(InvalidField::new(
                "plugin",
                "give plugin, ticker or both to say what to delete",
            ));
        }
        let range = match (start, end) {
            (None, None) => None,
            (Some(s), Some(e)) => Some(DateRange::from_request(Some(s), Some(e), today)?),
            (Some(_), None) => return Err(InvalidField::new("end", "start and end go together; give both")),
            (None, Some(_)) => return Err(InvalidField::new("start", "start and end go together; give both")),
        };
        Ok(Self { plugin, ticker, range })
    }

    /// Whether the in-process key `plugin:version:TICKER` is selected.
    pub fn matches_local(&self, key: &str) -> bool {
        let mut parts = key.split(':');
        let (Some(p), Some(_), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        self.plugin.as_ref().is_none_or(|x| x.as_str() == p) && self.ticker.as_ref().is_none_or(|x| x.as_str() == t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_and_its_lock_share_the_ticker_hash_tag() {
        let ks = KeySpace::new("tickerd");
        let id = SeriesId {
            plugin: PluginName::parse("yahoo").unwrap(),
            version: 3,
            ticker: Ticker::parse("aapl").unwrap(),
        };
        assert_eq!(ks.series(&id), "tickerd:yahoo:3:{AAPL}");
        assert_eq!(ks.lock(&id), "tickerd:lock:yahoo:3:{AAPL}");
        assert_eq!(index_member(3, &id.ticker), "3:AAPL");
        assert_eq!(parse_index_member("3:AAPL"), Some((3, id.ticker.clone())));
        assert_eq!(parse_index_member("x:AAPL"), None);
        let sel = Selector {
            ticker: Some(id.ticker.clone()),
            ..Selector::default()
        };
        assert_eq!(id.local_key(), "yahoo:3:AAPL");
        assert!(sel.matches_local(&id.local_key()));
        assert!(!sel.matches_local("yahoo:3:MSFT"));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// No input, however hostile, yields a key outside its plugin's
        /// namespace, a pattern, or a second hash tag.
        #[test]
        fn keys_stay_in_their_namespace(
            plugin in "[a-z0-9_-]{1,64}",
            raw_ticker in "\\PC{0,40}",
            version in 0u32..1000,
        ) {
            let Ok(ticker) = Ticker::parse(&raw_ticker) else { return Ok(()); };
            let ks = KeySpace::new("tickerd");
            let id = SeriesId { plugin: PluginName::parse(&plugin).unwrap(), version, ticker };
            let tag = format!("{{{}}}", id.ticker);
            for k in [ks.series(&id), ks.lock(&id)] {
                prop_assert!(!k.contains(['*', '?', '[', ']', ' ', '\n']), "{}", k);
                prop_assert_eq!(k.matches('{').count(), 1);
                let tagged = k.ends_with(&tag);
                prop_assert!(tagged, "{} does not end with {}", k, tag);
            }
        }
    }
}
