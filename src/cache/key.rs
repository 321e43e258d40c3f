//! Cache key layout (README, "Cache behaviour"):
//! `{prefix}:{plugin}:{cache_version}:{TICKER}:{start}:{end}`.
//!
//! Every part is validated before it gets here (prefix from config, plugin
//! and ticker by their types, dates by `DateRange`), and none of them can
//! contain `:`, so a key cannot be forged to land in another plugin's
//! namespace. In cluster mode the plugin and ticker are wrapped in a hash tag
//! (`{prefix}:{plugin:TICKER}:...`) so one ticker's entries and its index share
//! a slot; standalone Redis keeps the documented layout.

use std::fmt;

use crate::model::{DateRange, PluginName, Ticker, push_ymd};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

/// Where keys of one deployment live; built once from config.
#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: String,
    cluster: bool,
}

impl KeySpace {
    pub fn new(prefix: &str, cluster: bool) -> Self {
        Self {
            prefix: prefix.to_owned(),
            cluster,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cluster hash tag that keeps one plugin+ticker in one slot.
    fn tagged(&self, plugin: &str, ticker: &str) -> String {
        format!("{{{plugin}:{ticker}}}")
    }

    pub fn entry(&self, plugin: &PluginName, version: u32, ticker: &Ticker, range: &DateRange) -> CacheKey {
        use std::fmt::Write as _;
        let (p, t) = (plugin.as_str(), ticker.as_str());
        // Built by hand, once per request: `format!` with chrono's Display
        // for the dates showed on the hit path.
        let mut key = String::with_capacity(self.prefix.len() + p.len() + t.len() + 40);
        key.push_str(&self.prefix);
        key.push(':');
        if self.cluster {
            key.push_str(&self.tagged(p, t));
            let _ = write!(key, ":{version}:");
        } else {
            key.push_str(p);
            let _ = write!(key, ":{version}:");
            key.push_str(t);
            key.push(':');
        }
        push_ymd(&mut key, range.start());
        key.push(':');
        push_ymd(&mut key, range.end());
        CacheKey(key)
    }

    /// Set of entry keys cached for one plugin and ticker (all versions).
    pub fn ticker_index(&self, plugin: &str, ticker: &str) -> String {
        if self.cluster {
            format!("{}:index:{}", self.prefix, self.tagged(plugin, ticker))
        } else {
            format!("{}:index:{plugin}:{ticker}", self.prefix)
        }
    }

    /// Set of tickers that have entries for one plugin.
    pub fn plugin_index(&self, plugin: &str) -> String {
        format!("{}:index:{plugin}", self.prefix)
    }

    /// Set of plugin names that have entries.
    pub fn plugins_index(&self) -> String {
        format!("{}:index:plugins", self.prefix)
    }

    /// Pub/sub channel that carries invalidations to every daemon's L1.
    pub fn invalidation_channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }

    /// A companion key of an entry in its own namespace,
    /// `{prefix}:{kind}:{rest of the entry key}`, so `{prefix}:{plugin}:*`
    /// holds entries only while the companion shares the entry's cluster hash tag.
    fn companion(&self, kind: &str, key: &str) -> String {
        let rest = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(':'))
            .unwrap_or(key);
        format!("{}:{kind}:{rest}", self.prefix)
    }

    /// The single-flight lock for one entry (fleet-wide).
    pub fn lock(&self, key: &CacheKey) -> String {
        self.companion("lock", key.as_str())
    }

    /// The copy kept for stale-if-error after the entry's TTL has passed.
    pub fn stale(&self, key: &str) -> String {
        self.companion("stale", key)
    }

    /// Where a failed fetch leaves its error for waiting daemons.
    pub fn error(&self, key: &CacheKey) -> String {
        self.companion("error", key.as_str())
    }
}

impl CacheKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this key belongs to the given plugin/ticker/range selection.
    pub fn matches(&self, space: &KeySpace, sel: &Selector) -> bool {
        let rest = match self.0.strip_prefix(space.prefix()).and_then(|r| r.strip_prefix(':')) {
            Some(r) => r,
            None => return false,
        };
        let parts: Vec<&str> = if space.cluster {
            // {plugin:TICKER}:version:start:end
            let Some(close) = rest.find('}') else { return false };
            let tag = rest[1..close].split(':').collect::<Vec<_>>();
            let tail: Vec<&str> = rest[close + 1..].trim_start_matches(':').split(':').collect();
            if tag.len() != 2 || tail.len() != 3 {
                return false;
            }
            vec![tag[0], tail[0], tag[1], tail[1], tail[2]]
        } else {
            rest.split(':').collect()
        };
        if parts.len() != 5 {
            return false;
        }
        sel.plugin.as_ref().is_none_or(|p| p.as_str() == parts[0])
            && sel.ticker.as_ref().is_none_or(|t| t.as_str() == parts[2])
            && sel
                .range
                .as_ref()
                .is_none_or(|r| r.start().to_string() == parts[3] && r.end().to_string() == parts[4])
    }

    /// Whether this entry key (from an index) is for the given range.
    pub fn has_range(key: &str, range: &DateRange) -> bool {
        key.ends_with(&format!(":{}:{}", range.start(), range.end()))
    }
}

impl From<String> for CacheKey {
    fn from(s: String) -> Self {
        CacheKey(s)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an invalidation removes: a plugin, a ticker, or both, optionally
/// narrowed to one exact range.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub plugin: Option<PluginName>,
    pub ticker: Option<Ticker>,
    pub range: Option<DateRange>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn range(s: &str, e: &str) -> DateRange {
        DateRange::from_request(Some(s), Some(e), NaiveDate::from_ymd_opt(2030, 1, 1).unwrap()).unwrap()
    }

    #[test]
    fn entry_key_follows_the_spec_layout() {
        let ks = KeySpace::new("tickerd", false);
        let k = ks.entry(
            &PluginName::parse("yahoo").unwrap(),
            3,
            &Ticker::parse("aapl").unwrap(),
            &range("2024-01-01", "2024-01-31"),
        );
        assert_eq!(k.as_str(), "tickerd:yahoo:3:AAPL:2024-01-01:2024-01-31");
        assert_eq!(ks.stale(k.as_str()), "tickerd:stale:yahoo:3:AAPL:2024-01-01:2024-01-31");
        assert_eq!(ks.lock(&k), "tickerd:lock:yahoo:3:AAPL:2024-01-01:2024-01-31");
        assert_eq!(ks.error(&k), "tickerd:error:yahoo:3:AAPL:2024-01-01:2024-01-31");
        assert_eq!(ks.ticker_index("yahoo", "AAPL"), "tickerd:index:yahoo:AAPL");
    }

    #[test]
    fn cluster_keys_share_a_hash_tag_with_their_index() {
        let ks = KeySpace::new("t", true);
        let k = ks.entry(
            &PluginName::parse("yahoo").unwrap(),
            1,
            &Ticker::parse("MSFT").unwrap(),
            &range("2024-01-01", "2024-01-02"),
        );
        assert_eq!(k.as_str(), "t:{yahoo:MSFT}:1:2024-01-01:2024-01-02");
        assert_eq!(ks.ticker_index("yahoo", "MSFT"), "t:index:{yahoo:MSFT}");
        let sel = Selector {
            ticker: Some(Ticker::parse("msft").unwrap()),
            ..Selector::default()
        };
        assert!(k.matches(&ks, &sel));
    }

    #[test]
    fn selectors_match_only_their_keys() {
        let ks = KeySpace::new("tickerd", false);
        let y = PluginName::parse("yahoo").unwrap();
        let s = PluginName::parse("stooq").unwrap();
        let a = Ticker::parse("AAPL").unwrap();
        let r = range("2024-01-01", "2024-01-31");
        let k = ks.entry(&y, 1, &a, &r);
        let sel = |p: Option<&PluginName>, t: Option<&Ticker>, r: Option<DateRange>| Selector {
            plugin: p.cloned(),
            ticker: t.cloned(),
            range: r,
        };
        assert!(k.matches(&ks, &sel(Some(&y), None, None)));
        assert!(!k.matches(&ks, &sel(Some(&s), None, None)));
        assert!(k.matches(&ks, &sel(None, Some(&a), Some(r))));
        assert!(!k.matches(&ks, &sel(None, Some(&a), Some(range("2024-01-01", "2024-01-30")))));
        assert!(CacheKey::has_range(k.as_str(), &r));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use chrono::NaiveDate;
    use proptest::prelude::*;

    proptest! {
        /// No input, however hostile, yields a key outside its plugin's
        /// namespace or one that acts as a pattern.
        #[test]
        fn keys_stay_in_their_namespace(
            plugin in "[a-z0-9_-]{1,64}",
            other in "[a-z0-9_-]{1,64}",
            raw_ticker in "\\PC{0,40}",
            version in 0u32..1000,
            a in 0i64..40_000, b in 0i64..40_000,
            cluster in any::<bool>(),
        ) {
            let Ok(ticker) = Ticker::parse(&raw_ticker) else { return Ok(()); };
            let base = NaiveDate::from_ymd_opt(1990, 1, 1).unwrap();
            let (s, e) = (base + chrono::Days::new(a.min(b) as u64), base + chrono::Days::new(a.max(b) as u64));
            let range = DateRange::new(s, e).unwrap();
            let ks = KeySpace::new("tickerd", cluster);
            let p = PluginName::parse(&plugin).unwrap();
            let key = ks.entry(&p, version, &ticker, &range);
            let k = key.as_str();
            prop_assert!(!k.contains(['*', '?', '[', ']', ' ', '\n']), "{}", k);
            prop_assert_eq!(k.matches(':').count(), 5);
            let own = Selector { plugin: Some(p.clone()), ..Selector::default() };
            prop_assert!(key.matches(&ks, &own));
            if other != plugin {
                let foreign = Selector { plugin: Some(PluginName::parse(&other).unwrap()), ..Selector::default() };
                prop_assert!(!key.matches(&ks, &foreign), "{} matched plugin {}", k, other);
            }
            let tsel = Selector { ticker: Some(ticker.clone()), ..Selector::default() };
            prop_assert!(key.matches(&ks, &tsel));
        }
    }
}
