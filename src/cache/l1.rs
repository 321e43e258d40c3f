//! The optional in-process L1 in front of Redis (`cache.l1_ttl > 0`).
//!
//! It holds series in the same model as the memory layer (coverage, bars,
//! meta), filled from Redis reads and this daemon's writes, so a hot series
//! costs no Redis round trip. Coherence across daemons: every write
//! publishes a notice naming its series on `{prefix}:invalidate` (inside the
//! write script), and every invalidation a selector; each daemon drops what
//! a notice names. L1 is read only while this daemon is subscribed; if the
//! subscription drops, L1 is emptied and bypassed until it is back, so a
//! daemon that cannot hear notices never serves from L1. Entries also live
//! at most `l1_ttl`, which bounds staleness in any case.
//!
//! A read that started before a notice arrived must not put its older view
//! back: an epoch counter moves on every notice, and a snapshot read under
//! an older epoch is not inserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;

use super::Layer;
use super::key::{KeySpace, Selector};
use super::memory::MemoryStore;
use super::redis_series::Notice;
use super::redis_target::RedisTarget;
use super::series::{Snapshot, Write};
use super::store::SeriesId;
use crate::model::{DateRange, PluginName, Ticker};

pub struct L1 {
    series: MemoryStore,
    coherent: AtomicBool,
    epoch: AtomicU64,
    origin: String,
}

impl L1 {
    pub fn new(ttl: Duration, max_entries: u64, max_bytes: u64, origin: String) -> Self {
        Self {
            series: MemoryStore::new(max_entries, max_bytes, Layer::L1, Some(ttl)),
            coherent: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            origin,
        }
    }

    pub fn is_active(&self) -> bool {
        self.coherent.load(Ordering::Acquire)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The L1's view of the series, while coherent.
    pub fn get(&self, id: &SeriesId) -> Option<Arc<Snapshot>> {
        if !self.is_active() {
            return None;
        }
        self.series.get(id)
    }

    /// Keeps what a Redis read of `window` saw, unless a notice arrived
    /// since `epoch` was taken.
    pub fn remember(&self, id: &SeriesId, window: DateRange, snap: &Snapshot, epoch: u64) {
        if self.is_active() && self.epoch() == epoch {
            self.series.merge(id, window, snap, Duration::from_secs(86400 * 365));
        }
    }

    pub fn apply(&self, id: &SeriesId, w: &Write) {
        if self.is_active() {
            self.series.apply(id, w, Duration::from_secs(86400 * 365));
        }
    }

    pub fn forget(&self, id: &SeriesId) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.series.remove(id, None);
    }

    pub fn forget_matching(&self, sel: &Selector) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let sel = sel.clone();
        self.series.remove_matching(move |k| sel.matches_local(k));
    }

    fn set_active(&self, on: bool) {
        if !on {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            self.series.clear();
        }
        self.coherent.store(on, Ordering::Release);
    }

    pub fn notice_for(&self, sel: &Selector) -> Notice {
        Notice {
            origin: self.origin.clone(),
            series: None,
            plugin: sel.plugin.as_ref().map(|p| p.to_string()),
            ticker: sel.ticker.as_ref().map(|t| t.to_string()),
        }
    }

    /// Applies a notice heard on the channel.
    pub fn apply_notice(&self, msg: &Notice) {
        if msg.origin == self.origin {
            return;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(k) = &msg.series {
            let k = k.clone();
            self.series.remove_matching(move |key| key == k);
            return;
        }
        let sel = Selector {
            plugin: msg.plugin.as_deref().and_then(|p| PluginName::parse(p).ok()),
            ticker: msg.ticker.as_deref().and_then(|t| Ticker::parse(t).ok()),
            range: None,
        };
        if sel.plugin.is_none() && sel.ticker.is_none() {
            // Unreadable selector: be safe.
            self.series.clear();
        } else {
            self.forget_matching(&sel);
        }
    }

    /// Keeps a subscription to the invalidation channel for the life of the
    /// daemon; L1 is active only while subscribed.
    pub(crate) fn spawn_listener(self: &Arc<Self>, target: Arc<RedisTarget>, space: KeySpace, backoff: Duration) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let channel = space.invalidation_channel();
            loop {
                let sub = async {
                    // Resolved on every (re)subscription: under Sentinel the
                    // subscription follows the master after a failover.
                    let client = target.pubsub_client().await?;
                    let mut ps = client.get_async_pubsub().await?;
                    ps.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(ps)
                };
                match tokio::time::timeout(Duration::from_secs(2), sub).await {
                    Ok(Ok(ps)) => {
                        this.set_active(true);
                        tracing::info!(channel = %channel, "L1 cache active: subscribed to invalidations");
                        let mut stream = ps.into_on_message();
                        while let Some(msg) = stream.next().await {
                            match serde_json::from_slice::<Notice>(msg.get_payload_bytes()) {
                                Ok(n) => this.apply_notice(&n),
                                Err(_) => this.series.clear(),
                            }
                        }
                        this.set_active(false);
                        tracing::warn!("L1 cache bypassed: the invalidation subscription dropped; resubscribing");
                    }
                    _ => this.set_active(false),
                }
                tokio::time::sleep(backoff).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::cache::series::Span;
    use crate::cache::series::tests::{d, r};

    fn id(plugin: &str, t: &str) -> SeriesId {
        SeriesId {
            plugin: PluginName::parse(plugin).unwrap(),
            version: 1,
            ticker: Ticker::parse(t).unwrap(),
        }
    }

    /// January 2024 with one bar on the 2nd.
    fn january() -> Write {
        Write {
            span: Span {
                from: d("2024-01-01"),
                to: d("2024-01-31"),
                fetched_ms: 1,
                empty: false,
            },
            bars: vec![(d("2024-01-02"), Bytes::from_static(b"{\"close\":1}"))],
            meta: None,
        }
    }

    fn l1() -> L1 {
        L1::new(Duration::from_secs(60), 100, 1 << 20, "me".into())
    }

    fn notice(origin: &str, series: Option<&str>, plugin: Option<&str>, ticker: Option<&str>) -> Notice {
        Notice {
            origin: origin.into(),
            series: series.map(Into::into),
            plugin: plugin.map(Into::into),
            ticker: ticker.map(Into::into),
        }
    }

    fn holds(l1: &L1, id: &SeriesId) -> bool {
        l1.get(id).is_some_and(|s| s.bars.contains_key(&d("2024-01-02")))
    }

    #[test]
    fn not_subscribed_it_keeps_and_serves_nothing() {
        let l1 = l1();
        let a = id("p", "AAPL");
        l1.apply(&a, &january());
        l1.set_active(true);
        assert!(!holds(&l1, &a), "a write made while unsubscribed was kept");
        l1.apply(&a, &january());
        assert!(holds(&l1, &a));
        // The subscription drops: emptied and bypassed, even once back.
        l1.set_active(false);
        assert!(l1.get(&a).is_none());
        l1.set_active(true);
        assert!(!holds(&l1, &a));
    }

    #[test]
    fn another_daemons_notice_drops_what_it_names_and_ours_is_ignored() {
        let l1 = l1();
        l1.set_active(true);
        let (a, m) = (id("p", "AAPL"), id("p", "MSFT"));
        l1.apply(&a, &january());
        l1.apply(&m, &january());
        l1.apply_notice(&notice("me", Some(&a.local_key()), None, None));
        assert!(holds(&l1, &a), "this daemon's own notice dropped its entry");
        l1.apply_notice(&notice("other", Some(&a.local_key()), None, None));
        assert!(!holds(&l1, &a));
        assert!(holds(&l1, &m), "a notice for one series dropped another");
        // By selector: a ticker of any plugin.
        l1.apply(&id("q", "MSFT"), &january());
        l1.apply_notice(&notice("other", None, None, Some("MSFT")));
        assert!(!holds(&l1, &m) && !holds(&l1, &id("q", "MSFT")));
    }

    #[test]
    fn an_unreadable_notice_empties_it() {
        let l1 = l1();
        l1.set_active(true);
        let a = id("p", "AAPL");
        l1.apply(&a, &january());
        l1.apply_notice(&notice("other", None, Some("Not A Name"), None));
        assert!(!holds(&l1, &a));
    }

    #[test]
    fn a_read_older_than_a_notice_is_not_put_back() {
        let l1 = l1();
        l1.set_active(true);
        let a = id("p", "AAPL");
        let mut snap = Snapshot::default();
        snap.bars.insert(d("2024-01-02"), Bytes::from_static(b"{\"close\":1}"));
        let window = r("2024-01-01", "2024-01-31");
        let before = l1.epoch();
        l1.apply_notice(&notice("other", None, Some("p"), None));
        l1.remember(&a, window, &snap, before);
        assert!(l1.series.get(&a).is_none(), "a read from before the notice was kept");
        l1.remember(&a, window, &snap, l1.epoch());
        assert!(l1.series.get(&a).is_some());
    }
}
