//! Unit tests of the pipeline logic against an in-memory fake store and a
//! fake plugin that records what it was asked, under tokio's paused clock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chrono::{Datelike, NaiveDate};

use super::*;
use crate::cache::series::tests::{d, r};
use crate::cache::{LockAnswer, MemoryStore, StoreError, StoreFuture, Written};
use crate::model::Bar;

/// The in-process store, counting calls, with writes that can be made to fail.
struct FakeStore {
    inner: MemoryStore,
    reads: AtomicUsize,
    writes: AtomicUsize,
    fail_writes: AtomicBool,
}

impl FakeStore {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(1000, 100_000_000, Layer::Redis, None),
            reads: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
            fail_writes: AtomicBool::new(false),
        })
    }
}

impl Store for FakeStore {
    fn read<'a>(&'a self, id: &'a SeriesId, range: DateRange) -> StoreFuture<'a, Read> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(id, range)
    }

    fn lock<'a>(&'a self, id: &'a SeriesId, ttl: Duration) -> StoreFuture<'a, LockAnswer> {
        self.inner.lock(id, ttl)
    }

    fn write<'a>(
        &'a self,
        id: &'a SeriesId,
        w: &'a Write,
        keep: Duration,
        lock: Option<&'a LockGuard>,
    ) -> StoreFuture<'a, Written> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.fail_writes.load(Ordering::SeqCst) {
            return async {
                Err(StoreError::Redis {
                    op: "WRITE",
                    message: "OOM command not allowed".into(),
                })
            }
            .boxed();
        }
        self.inner.write(id, w, keep, lock)
    }

    fn unlock<'a>(
        &'a self,
        id: &'a SeriesId,
        lock: &'a LockGuard,
        failure: Option<&'a FailureMarker>,
    ) -> StoreFuture<'a, ()> {
        self.inner.unlock(id, lock, failure)
    }

    fn invalidate<'a>(&'a self, id: &'a SeriesId, range: Option<DateRange>) -> StoreFuture<'a, u64> {
        self.inner.invalidate(id, range)
    }
}

/// A plugin with weekday bars, recording every interval it is asked for.
#[derive(Default)]
struct FakePlugin {
    asked: Mutex<Vec<DateRange>>,
    fail: AtomicBool,
    delay: Mutex<Duration>,
    declare: Mutex<Option<(NaiveDate, NaiveDate)>>,
}

impl FakePlugin {
    fn asked(&self) -> Vec<DateRange> {
        self.asked.lock().unwrap().clone()
    }
}

fn weekday_bars(from: NaiveDate, to: NaiveDate) -> Vec<Bar> {
    from.iter_days()
        .take_while(|x| *x <= to)
        .filter(|x| x.weekday().number_from_monday() <= 5)
        .map(|date| Bar {
            date,
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close: 1.5,
            volume: Some(10.0),
            extra: Default::default(),
        })
        .collect()
}

struct Shared(Arc<FakePlugin>);

impl Upstream for Shared {
    fn call(&self, args: FetchArgs) -> BoxFuture<'static, Result<RawOutput, FetchError>> {
        let p = Arc::clone(&self.0);
        async move {
            let (s, e) = (args.range.start(), args.range.end());
            p.asked.lock().unwrap().push(args.range);
            let delay = *p.delay.lock().unwrap();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if p.fail.load(Ordering::SeqCst) {
                return Err(FetchError::UpstreamError("upstream answered 503".into()));
            }
            let declared = *p.declare.lock().unwrap();
            let (from, to) = declared.map_or((s, e), |(f, t)| (f.min(s), t.max(e)));
            Ok(RawOutput {
                bars: weekday_bars(from, to),
                meta: serde_json::Map::new(),
                coverage: declared,
            })
        }
        .boxed()
    }
}

/// Noon UTC of 2024-03-01 (a Friday): every date of the tests below is settled.
fn t0() -> u64 {
    day_of(d("2024-03-01")) as u64 * 86_400_000 + 12 * 3_600_000
}

fn policy() -> Policy {
    let fresh = Freshness::new(
        Duration::from_secs(3 * 86400),
        Duration::from_secs(30 * 86400),
        Duration::from_secs(3600),
        Duration::from_secs(60),
    );
    Policy {
        version: 1,
        fresh,
        lock_ttl: Duration::from_secs(6),
        stale_if_error: Duration::from_secs(86400),
        max_stored_bytes: 8 << 20,
        keep: fresh.keep_for(Duration::from_secs(86400)),
        record_empty: true,
    }
}

fn req(a: &str, b: &str) -> DataRequest {
    DataRequest {
        plugin: PluginName::parse("fake").unwrap(),
        ticker: Ticker::parse("AAPL").unwrap(),
        range: r(a, b),
        refresh: false,
    }
}

struct Rig {
    flow: Arc<Flow>,
    store: Arc<FakeStore>,
    plugin: Arc<FakePlugin>,
    pm: Arc<PluginMetrics>,
}

impl Rig {
    fn new() -> Self {
        let store = FakeStore::new();
        Self::on(store)
    }

    /// Another "daemon": its own flow, the same store.
    fn on(store: Arc<FakeStore>) -> Self {
        let s: Arc<dyn Store> = Arc::clone(&store) as Arc<dyn Store>;
        Self {
            flow: Flow::new(s, Clock::tokio_from(t0())),
            store,
            plugin: Arc::new(FakePlugin::default()),
            pm: Metrics::new().plugin("fake"),
        }
    }

    async fn get(&self, q: &DataRequest) -> Result<Answer, FetchError> {
        self.flow
            .answer(
                q,
                Arc::new(Shared(Arc::clone(&self.plugin))),
                policy(),
                Arc::clone(&self.pm),
            )
            .await
    }
}

#[tokio::test(start_paused = true)]
async fn an_overlapping_request_asks_only_the_missing_days_and_merges() {
    let rig = Rig::new();
    let a = rig.get(&req("2024-01-01", "2024-01-31")).await.unwrap();
    assert_eq!((a.status, a.bars.len(), a.fetched_days), (CacheStatus::Miss, 23, 31));
    let b = rig.get(&req("2024-01-15", "2024-02-15")).await.unwrap();
    assert_eq!(b.status, CacheStatus::Partial);
    assert_eq!(b.bars.len(), 13 + 11);
    assert_eq!(b.fetched_days, 15);
    assert_eq!(
        rig.plugin.asked(),
        vec![r("2024-01-01", "2024-01-31"), r("2024-02-01", "2024-02-15")]
    );
    let c = rig.get(&req("2024-01-10", "2024-02-10")).await.unwrap();
    assert_eq!((c.status, c.fetched_days), (CacheStatus::Hit, 0));
    assert_eq!(rig.plugin.asked().len(), 2, "a covered range makes no call");
    assert_eq!(rig.pm.hits_redis.get(), 1);
    assert_eq!(rig.pm.misses.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn known_empty_days_and_covered_empty_ranges_make_no_call() {
    let rig = Rig::new();
    rig.get(&req("2024-01-01", "2024-01-31")).await.unwrap();
    let e = rig.get(&req("2024-01-06", "2024-01-07")).await.unwrap_err();
    assert!(matches!(e, FetchError::NoData(_)), "{e:?}");
    assert_eq!(
        rig.plugin.asked().len(),
        1,
        "the weekend inside the coverage is known-empty"
    );
    // An uncovered weekend is asked once, then remembered.
    assert!(rig.get(&req("2024-02-03", "2024-02-04")).await.is_err());
    assert!(rig.get(&req("2024-02-03", "2024-02-04")).await.is_err());
    assert_eq!(rig.plugin.asked().len(), 2);
    // ... for negative_ttl only (the answer had no bar at all).
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(rig.get(&req("2024-02-03", "2024-02-04")).await.is_err());
    assert_eq!(rig.plugin.asked().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_live_edge_goes_stale_after_ttl_and_settled_history_after_settled_ttl() {
    let rig = Rig::new();
    // 02-27..03-01 is the live edge on 03-01 (settle 3d): fresh for ttl (1h).
    rig.get(&req("2024-02-01", "2024-03-01")).await.unwrap();
    tokio::time::advance(Duration::from_secs(2 * 3600)).await;
    let a = rig.get(&req("2024-02-01", "2024-03-01")).await.unwrap();
    assert_eq!(a.status, CacheStatus::Partial);
    assert_eq!(rig.plugin.asked()[1], r("2024-02-27", "2024-03-01"));
    assert!(a.age_s >= 7200, "age of the oldest cached bar: {}", a.age_s);
    tokio::time::advance(Duration::from_secs(31 * 86400)).await;
    rig.get(&req("2024-02-01", "2024-03-01")).await.unwrap();
    assert_eq!(rig.plugin.asked()[2], r("2024-02-01", "2024-03-01"));
}

#[tokio::test(start_paused = true)]
async fn refresh_refetches_the_whole_range() {
    let rig = Rig::new();
    rig.get(&req("2024-01-01", "2024-01-31")).await.unwrap();
    let mut q = req("2024-01-10", "2024-01-20");
    q.refresh = true;
    let a = rig.get(&q).await.unwrap();
    assert_eq!(a.status, CacheStatus::Bypass);
    assert_eq!(rig.plugin.asked()[1], r("2024-01-10", "2024-01-20"));
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_stale_dates_but_never_unfetched_ones() {
    let rig = Rig::new();
    rig.get(&req("2024-02-20", "2024-03-01")).await.unwrap();
    tokio::time::advance(Duration::from_secs(2 * 3600)).await;
    rig.plugin.fail.store(true, Ordering::SeqCst);
    let a = rig.get(&req("2024-02-20", "2024-03-01")).await.unwrap();
    assert_eq!((a.status, a.ttl_s), (CacheStatus::Stale, 0));
    assert_eq!(rig.pm.stale.get(), 1);
    let e = rig.get(&req("2024-02-15", "2024-03-01")).await.unwrap_err();
    assert!(matches!(e, FetchError::UpstreamError(_)), "{e:?}");
}

#[tokio::test(start_paused = true)]
async fn declared_coverage_is_kept_beyond_the_asked_interval() {
    let rig = Rig::new();
    *rig.plugin.declare.lock().unwrap() = Some((d("2020-01-01"), d("2024-02-29")));
    rig.get(&req("2024-01-01", "2024-01-31")).await.unwrap();
    let a = rig.get(&req("2021-06-01", "2021-06-30")).await.unwrap();
    assert_eq!(a.status, CacheStatus::Hit);
    assert_eq!(rig.plugin.asked().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_make_one_call_at_a_time_and_waiters_ask_the_rest() {
    let rig = Arc::new(Rig::new());
    *rig.plugin.delay.lock().unwrap() = Duration::from_millis(500);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let rig = Arc::clone(&rig);
        let q = if i % 2 == 0 {
            req("2024-01-01", "2024-01-31")
        } else {
            req("2024-01-15", "2024-02-15")
        };
        tasks.push(tokio::spawn(async move { rig.get(&q).await.map(|a| a.bars.len()) }));
        tokio::task::yield_now().await;
    }
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    let asked = rig.plugin.asked();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[0], r("2024-01-01", "2024-01-31"));
    assert_eq!(
        asked[1],
        r("2024-02-01", "2024-02-15"),
        "the waiter asked only the remainder"
    );
    assert!(rig.pm.coalesced.get() >= 8);
}

#[tokio::test(start_paused = true)]
async fn two_daemons_sharing_a_store_wait_on_the_lock_and_ask_the_rest() {
    let a = Rig::new();
    let b = Rig::on(Arc::clone(&a.store));
    *a.plugin.delay.lock().unwrap() = Duration::from_millis(500);
    let qa = req("2024-01-01", "2024-01-31");
    let qb = req("2024-01-15", "2024-02-15");
    let (ra, rb) = tokio::join!(a.get(&qa), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.get(&qb).await
    });
    assert_eq!(ra.unwrap().status, CacheStatus::Miss);
    assert_eq!(rb.unwrap().status, CacheStatus::Partial);
    assert_eq!(a.plugin.asked(), vec![r("2024-01-01", "2024-01-31")]);
    assert_eq!(
        b.plugin.asked(),
        vec![r("2024-02-01", "2024-02-15")],
        "B asked only what A did not write"
    );
}

#[tokio::test(start_paused = true)]
async fn a_holder_failure_reaches_the_waiting_daemon_without_a_second_call() {
    let a = Rig::new();
    let b = Rig::on(Arc::clone(&a.store));
    *a.plugin.delay.lock().unwrap() = Duration::from_millis(500);
    a.plugin.fail.store(true, Ordering::SeqCst);
    let q = req("2024-01-01", "2024-01-31");
    let (ra, rb) = tokio::join!(a.get(&q), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.get(&q).await
    });
    assert!(matches!(ra, Err(FetchError::UpstreamError(_))));
    assert!(matches!(rb, Err(FetchError::UpstreamError(_))), "{rb:?}");
    assert!(b.plugin.asked().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_releases_the_lock_and_still_answers() {
    let rig = Rig::new();
    rig.store.fail_writes.store(true, Ordering::SeqCst);
    let a = rig.get(&req("2024-01-01", "2024-01-31")).await.unwrap();
    assert_eq!(a.bars.len(), 23);
    assert_eq!(rig.pm.errors.get(), 1);
    let id = SeriesId {
        plugin: PluginName::parse("fake").unwrap(),
        version: 1,
        ticker: Ticker::parse("AAPL").unwrap(),
    };
    let again = rig.store.lock(&id, Duration::from_secs(5)).await.unwrap();
    assert!(again.guard.is_some(), "the lock was released after the failed write");
}

#[tokio::test(start_paused = true)]
async fn an_oversized_answer_is_served_not_stored_and_counted() {
    let rig = Rig::new();
    let mut p = policy();
    p.max_stored_bytes = 500;
    let q = req("2024-01-01", "2024-01-31");
    let up: Arc<dyn Upstream> = Arc::new(Shared(Arc::clone(&rig.plugin)));
    let a = rig
        .flow
        .answer(&q, Arc::clone(&up), p, Arc::clone(&rig.pm))
        .await
        .unwrap();
    assert_eq!(a.bars.len(), 23);
    assert_eq!(rig.pm.oversized.get(), 1);
    assert_eq!(rig.store.writes.load(Ordering::SeqCst), 0);
    rig.flow.answer(&q, up, p, Arc::clone(&rig.pm)).await.unwrap();
    assert_eq!(rig.plugin.asked().len(), 2, "not cached");
}
