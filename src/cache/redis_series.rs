//! The series store in Redis: one hash per series (layout in `key.rs`).
//!
//! Round trips: a read is one `HMGET` (coverage, meta and the bar of every
//! date asked; `HGETALL` for very long ranges); taking the lock is one
//! `EVALSHA` that also returns the coverage and failure marker; a write is
//! one `EVALSHA` that merges the coverage, sets and deletes bars, clears the
//! failure marker, extends the key's life, releases the lock if it is still
//! ours and publishes the L1 notice. Index sets are touched only when a
//! series is new. Scripts go by SHA (`EVALSHA`, loaded on `NOSCRIPT`, so a
//! restarted or flushed server is handled), never `EVAL` with the body.
//!
//! Garbage never blocks: a key of the wrong type is replaced by the next
//! write, unparsable coverage is dropped and rebuilt, a lock key without
//! expiry is removed by the next lock attempt.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;

use super::key::{KeySpace, index_member};
use super::redis_store::RedisStore;
use super::series::{Coverage, Snapshot, Write, bar_field, bar_is_sound, day_of};
use super::store::{FailureMarker, LockAnswer, LockGuard, Read, SeriesId, Store, StoreFuture, Written};
use super::{Layer, StoreError};
use crate::model::{DateRange, ymd_string};

/// Ranges longer than this are read with `HGETALL` instead of naming every
/// date in an `HMGET`.
const HMGET_MAX_DAYS: i64 = 2000;
/// Arguments per `HSET`/`HDEL` inside the scripts (Lua's `unpack` limit).
const SCRIPT_CHUNK: usize = 1000;

/// The coverage parser shared by the write and invalidate scripts: sets
/// `spans` (minus `from..to`) and `hit` (whether any span touched it), or
/// `bad` when the stored text is not ours (then it is rebuilt).
const COVERAGE_LUA: &str = r#"
local function cut(cov, from, to)
  local spans, hit, prev = {}, false, nil
  for item in string.gmatch(cov or '', '%S+') do
    local a, b, f, x = string.match(item, '^(%-?%d+):(%-?%d+):(%d+):([de])$')
    if not a then return {}, false, true end
    a = tonumber(a); b = tonumber(b)
    if a > b or (prev and a <= prev) then return {}, false, true end
    prev = b
    if b < from or a > to then
      table.insert(spans, {a, b, f, x})
    else
      hit = true
      if a < from then table.insert(spans, {a, from - 1, f, x}) end
      if b > to then table.insert(spans, {to + 1, b, f, x}) end
    end
  end
  return spans, hit, false
end
local function join(spans)
  table.sort(spans, function(p, q) return p[1] < q[1] end)
  local parts = {}
  for i, s in ipairs(spans) do
    parts[i] = string.format('%d:%d:%s:%s', s[1], s[2], s[3], s[4])
  end
  return table.concat(parts, ' ')
end
"#;

static WRITE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"{COVERAGE_LUA}
-- KEYS: series, lock[, plugin index, plugins index]
-- ARGV: token, keep_ms, from, to, fetched_ms, kind, meta, channel, message,
--       index member, plugin, n, n field/value pairs, then fields to delete
local k = KEYS[1]
-- Every redis.call costs several microseconds of Redis CPU: this script
-- makes as few as it can (one HSET, one HDEL).
local cov = redis.pcall('HGET', k, 'c')
if type(cov) == 'table' then
  -- an error reply: the key holds another type; replace it
  redis.call('DEL', k)
  cov = false
end
local new = 0
if not cov then new = 1 end
local from, to = tonumber(ARGV[3]), tonumber(ARGV[4])
local spans = cut(cov, from, to)
table.insert(spans, {{from, to, ARGV[5], ARGV[6]}})
local last = 12 + 2 * tonumber(ARGV[12])
local f = {{'c', join(spans)}}
if ARGV[7] ~= '' then
  f[#f + 1] = 'm'
  f[#f + 1] = ARGV[7]
end
for a = 13, last do f[#f + 1] = ARGV[a] end
for s = 1, #f, {chunk} do
  redis.call('HSET', k, unpack(f, s, math.min(s + {chunk} - 1, #f)))
end
local d = {{'e'}}
for a = last + 1, #ARGV do d[#d + 1] = ARGV[a] end
for s = 1, #d, {chunk} do
  redis.call('HDEL', k, unpack(d, s, math.min(s + {chunk} - 1, #d)))
end
redis.call('PEXPIRE', k, ARGV[2])
local released = 0
if ARGV[1] ~= '' and redis.pcall('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  released = 1
end
if new == 1 and KEYS[3] then
  for n = 3, 4 do
    local it = redis.call('TYPE', KEYS[n])['ok']
    if it ~= 'set' and it ~= 'none' then redis.call('DEL', KEYS[n]) end
  end
  redis.call('SADD', KEYS[3], ARGV[10])
  redis.call('SADD', KEYS[4], ARGV[11])
end
if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], ARGV[9]) end
return {{new, released}}
"#,
        chunk = SCRIPT_CHUNK
    ))
});

static LOCK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
-- KEYS: lock, series; ARGV: token, ttl_ms
local got = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if not got and redis.call('PTTL', KEYS[1]) == -1 then
  -- a key without expiry was never written as a tickerd lock: remove it
  redis.call('DEL', KEYS[1])
  got = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
end
local c, e = false, false
local r = redis.pcall('HMGET', KEYS[2], 'c', 'e')
if not r.err then
  c = r[1]
  e = r[2]
end
if got then got = 1 else got = 0 end
return {got, c, e}
"#,
    )
});

static UNLOCK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
-- KEYS: lock, series; ARGV: token, failure marker ('' = none), marker life ms
if ARGV[2] ~= '' then
  local t = redis.call('TYPE', KEYS[2])['ok']
  if t == 'hash' or t == 'none' then
    redis.pcall('HSET', KEYS[2], 'e', ARGV[2])
    if t == 'none' then redis.pcall('PEXPIRE', KEYS[2], ARGV[3]) end
  end
end
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#,
    )
});

static INVALIDATE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"{COVERAGE_LUA}
-- KEYS: series[, plugin index]; ARGV: mode (all|range), from, to, from_ymd, to_ymd, member
local k = KEYS[1]
local t = redis.call('TYPE', k)['ok']
local function unindex()
  if KEYS[2] then redis.pcall('SREM', KEYS[2], ARGV[6]) end
end
if t == 'none' then
  if ARGV[1] == 'all' then unindex() end
  return 0
end
if t ~= 'hash' or ARGV[1] == 'all' then
  redis.call('DEL', k)
  unindex()
  return 1
end
local from, to = tonumber(ARGV[2]), tonumber(ARGV[3])
local spans, hit, bad = cut(redis.call('HGET', k, 'c'), from, to)
if bad then
  redis.call('DEL', k)
  unindex()
  return 1
end
local changed = 0
if hit then
  redis.call('HSET', k, 'c', join(spans))
  changed = 1
end
for _, f in ipairs(redis.call('HKEYS', k)) do
  if string.len(f) == 10 and f >= ARGV[4] and f <= ARGV[5] then
    redis.call('HDEL', k, f)
    changed = 1
  end
end
return changed
"#
    ))
});

/// The L1 notice a write publishes: which series changed, and who wrote it
/// (a daemon ignores its own notices).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Notice {
    pub origin: String,
    #[serde(default)]
    pub series: Option<String>,
    #[serde(default)]
    pub plugin: Option<String>,
    #[serde(default)]
    pub ticker: Option<String>,
}

pub struct RedisSeries {
    redis: Arc<RedisStore>,
    keys: KeySpace,
    cluster: bool,
    /// This daemon's id on the invalidation channel.
    origin: String,
    /// Writes publish a notice only when some daemon may have an L1 (set
    /// when this daemon runs one; other daemons' L1s are told through the
    /// channel anyway because each publishes on its own writes).
    pub(crate) publish_writes: bool,
}

/// Whether a command error means the key holds something tickerd did not
/// write (a wrong-type key): counted and repaired, never a failure.
fn is_wrong_type(e: &StoreError) -> bool {
    matches!(e, StoreError::Redis { message, .. } if message.contains("WRONGTYPE"))
}

impl RedisSeries {
    pub fn new(redis: Arc<RedisStore>, keys: KeySpace, origin: String) -> Self {
        let cluster = redis.config().cluster;
        Self {
            redis,
            keys,
            cluster,
            origin,
            publish_writes: true,
        }
    }

    /// Turns the values of `HMGET c m d1..dn` (or a `HGETALL`) into a
    /// snapshot of `range`, dropping what is not sound.
    fn snapshot(
        range: DateRange,
        coverage: Option<Vec<u8>>,
        meta: Option<Vec<u8>>,
        bars: impl Iterator<Item = (chrono::NaiveDate, Vec<u8>)>,
    ) -> (Snapshot, u32) {
        let mut corrupt = 0;
        let mut snap = Snapshot::default();
        match coverage.map(|c| Coverage::parse(&c)) {
            None => return (snap, 0),
            Some(Ok(c)) => snap.coverage = c.clip(range),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "corrupt coverage in redis; refetching the range and rewriting it");
                return (snap, 1);
            }
        }
        match meta {
            Some(m) if m.starts_with(b"{") && m.ends_with(b"}") && std::str::from_utf8(&m).is_ok() => {
                snap.meta = Some(Bytes::from(m));
            }
            Some(_) => {
                tracing::warn!("corrupt meta in redis; refetching the range and rewriting it");
                return (Snapshot::default(), 1);
            }
            None => {}
        }
        for (date, b) in bars {
            if bar_is_sound(date, &b) {
                snap.bars.insert(date, Bytes::from(b));
            } else {
                corrupt += 1;
                tracing::warn!(date = %date, "corrupt bar in redis; refetching that date and overwriting it");
                if let Ok(one) = DateRange::new(date, date) {
                    snap.coverage.remove(one);
                }
            }
        }
        (snap, corrupt)
    }

    async fn read_range(&self, id: &SeriesId, range: DateRange) -> Result<Read, StoreError> {
        let key = self.keys.series(id);
        let days = day_of(range.end()) - day_of(range.start()) + 1;
        let got = if days > HMGET_MAX_DAYS {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(&key);
            self.redis
                .query::<Vec<(Vec<u8>, Vec<u8>)>>("HGETALL", cmd)
                .await
                .map(|pairs| {
                    let (mut c, mut m, mut bars) = (None, None, Vec::new());
                    for (f, v) in pairs {
                        match f.as_slice() {
                            b"c" => c = Some(v),
                            b"m" => m = Some(v),
                            f => {
                                if let Some(d) = std::str::from_utf8(f)
                                    .ok()
                                    .and_then(|s| crate::model::parse_date("date", s).ok())
                                    .filter(|d| range.contains(*d))
                                {
                                    bars.push((d, v));
                                }
                            }
                        }
                    }
                    Self::snapshot(range, c, m, bars.into_iter())
                })
        } else {
            let mut cmd = redis::Cmd::with_capacity(4 + days as usize, key.len() + 16 + 11 * days as usize);
            cmd.arg("HMGET").arg(&key).arg("c").arg("m");
            let mut d = range.start();
            let mut dates = Vec::with_capacity(days as usize);
            while d <= range.end() {
                // The field written in place: a String per date showed in the hit-path profile.
                match crate::model::ymd(d) {
                    Some(field) => cmd.arg(&field[..]),
                    None => cmd.arg(bar_field(d)),
                };
                dates.push(d);
                match d.succ_opt() {
                    Some(n) => d = n,
                    None => break,
                }
            }
            self.redis
                .query::<Vec<Option<Vec<u8>>>>("HMGET", cmd)
                .await
                .map(|vals| {
                    let mut it = vals.into_iter();
                    let c = it.next().flatten();
                    let m = it.next().flatten();
                    let bars = dates.into_iter().zip(it).filter_map(|(d, v)| v.map(|v| (d, v)));
                    Self::snapshot(range, c, m, bars)
                })
        };
        match got {
            Ok((snapshot, corrupt)) => Ok(Read {
                snapshot,
                layer: Layer::Redis,
                corrupt,
            }),
            Err(e) if is_wrong_type(&e) => {
                tracing::warn!(
                    key,
                    "a key of the wrong type sits where a series belongs; the next write replaces it"
                );
                Ok(Read {
                    snapshot: Snapshot::default(),
                    layer: Layer::Redis,
                    corrupt: 1,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn write_series(
        &self,
        id: &SeriesId,
        w: &Write,
        keep: Duration,
        lock: Option<&LockGuard>,
    ) -> Result<Written, StoreError> {
        let key = self.keys.series(id);
        let mut inv = WRITE.prepare_invoke();
        inv.key(&key).key(self.keys.lock(id));
        let plugin = id.plugin.as_str();
        if !self.cluster {
            inv.key(self.keys.plugin_index(plugin)).key(self.keys.plugins_index());
        }
        let (channel, message) = if self.publish_writes {
            let notice = Notice {
                origin: self.origin.clone(),
                series: Some(id.local_key()),
                plugin: None,
                ticker: None,
            };
            (
                self.keys.invalidation_channel(),
                serde_json::to_string(&notice).unwrap_or_default(),
            )
        } else {
            (String::new(), String::new())
        };
        let member = index_member(id.version, &id.ticker);
        inv.arg(lock.map(|g| g.token.as_str()).unwrap_or(""))
            .arg(keep.as_millis().max(1) as u64)
            .arg(day_of(w.span.from))
            .arg(day_of(w.span.to))
            .arg(w.span.fetched_ms)
            .arg(if w.span.empty { "e" } else { "d" })
            .arg(w.meta.as_deref().unwrap_or(b""))
            .arg(channel)
            .arg(message)
            .arg(&member)
            .arg(plugin)
            .arg(w.bars.len());
        for (d, b) in &w.bars {
            inv.arg(bar_field(*d)).arg(b.as_ref());
        }
        for d in w.dates_without_bars() {
            inv.arg(bar_field(d));
        }
        let (new, _released): (i64, i64) = self.redis.invoke("WRITE", inv).await?;
        if new == 1 && self.cluster {
            // Index sets live in other slots: separate calls, only when a
            // series is new.
            for (set, m) in [
                (self.keys.plugin_index(plugin), member.clone()),
                (self.keys.plugins_index(), plugin.to_owned()),
            ] {
                let mut cmd = redis::cmd("SADD");
                cmd.arg(set).arg(m);
                if let Err(e) = self.redis.query::<i64>("SADD", cmd).await {
                    tracing::warn!(plugin, error = %e, "could not index a new series; invalidation by plugin may miss it until it is written again");
                }
            }
        }
        Ok(Written { layer: Layer::Redis })
    }

    /// Members of a plugin's index (`version:TICKER`).
    pub async fn indexed(&self, plugin: &str) -> Result<Vec<String>, StoreError> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(self.keys.plugin_index(plugin));
        self.redis.query("SMEMBERS", cmd).await
    }

    /// Series of a plugin found by `SCAN` (never `KEYS`), for when its
    /// index set was damaged. Standalone only: in a cluster the index is the
    /// only way, and a damaged one is reported instead.
    pub async fn scan_series(&self, plugin: &str) -> Result<Vec<String>, StoreError> {
        if self.cluster {
            return Ok(Vec::new());
        }
        let pattern = format!("{}:{plugin}:*", self.keys.prefix());
        let mut found = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let (next, keys): (u64, Vec<String>) = self.redis.query("SCAN", cmd).await?;
            found.extend(keys.into_iter().filter_map(|k| {
                let rest = k.strip_prefix(&pattern[..pattern.len() - 1])?;
                let (v, tagged) = rest.split_once(':')?;
                let ticker = tagged.strip_prefix('{')?.strip_suffix('}')?;
                Some(format!("{v}:{ticker}"))
            }));
            if next == 0 || found.len() > 1_000_000 {
                return Ok(found);
            }
            cursor = next;
        }
    }

    /// Lists series in a plugin's index again (after it was found damaged).
    pub async fn reindex(&self, plugin: &str, members: &[String]) -> Result<(), StoreError> {
        if members.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("SADD");
        cmd.arg(self.keys.plugin_index(plugin)).arg(members);
        self.redis.query::<i64>("SADD", cmd).await.map(|_| ())
    }

    /// Plugin names with series.
    pub async fn indexed_plugins(&self) -> Result<Vec<String>, StoreError> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(self.keys.plugins_index());
        self.redis.query("SMEMBERS", cmd).await
    }

    /// Deletes one index set (a plugin-wide invalidation), or an index key
    /// of the wrong type found on the way.
    pub async fn drop_key(&self, key: String) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key);
        self.redis.query::<i64>("DEL", cmd).await.map(|_| ())
    }

    pub async fn publish(&self, notice: &Notice) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.keys.invalidation_channel())
            .arg(serde_json::to_vec(notice).unwrap_or_default());
        self.redis.query::<i64>("PUBLISH", cmd).await.map(|_| ())
    }
}

impl Store for RedisSeries {
    fn read<'a>(&'a self, id: &'a SeriesId, range: DateRange) -> StoreFuture<'a, Read> {
        self.read_range(id, range).boxed()
    }

    fn lock<'a>(&'a self, id: &'a SeriesId, ttl: Duration) -> StoreFuture<'a, LockAnswer> {
        async move {
            let guard = LockGuard::new();
            let mut inv = LOCK.prepare_invoke();
            inv.key(self.keys.lock(id))
                .key(self.keys.series(id))
                .arg(&guard.token)
                .arg(ttl.as_millis().max(1) as u64);
            let (got, coverage, failure): (i64, Option<Vec<u8>>, Option<Vec<u8>>) =
                self.redis.invoke("LOCK", inv).await?;
            Ok(LockAnswer {
                guard: (got == 1).then_some(guard),
                coverage: coverage.map(Bytes::from),
                failure: failure.and_then(|f| serde_json::from_slice(&f).ok()),
            })
        }
        .boxed()
    }

    fn write<'a>(
        &'a self,
        id: &'a SeriesId,
        w: &'a Write,
        keep: Duration,
        lock: Option<&'a LockGuard>,
    ) -> StoreFuture<'a, Written> {
        self.write_series(id, w, keep, lock).boxed()
    }

    fn unlock<'a>(
        &'a self,
        id: &'a SeriesId,
        lock: &'a LockGuard,
        failure: Option<&'a FailureMarker>,
    ) -> StoreFuture<'a, ()> {
        async move {
            let mut inv = UNLOCK.prepare_invoke();
            inv.key(self.keys.lock(id))
                .key(self.keys.series(id))
                .arg(&lock.token)
                .arg(failure.and_then(|f| serde_json::to_string(f).ok()).unwrap_or_default())
                .arg(5000);
            self.redis.invoke::<i64>("UNLOCK", inv).await.map(|_| ())
        }
        .boxed()
    }

    fn invalidate<'a>(&'a self, id: &'a SeriesId, range: Option<DateRange>) -> StoreFuture<'a, u64> {
        async move {
            let mut inv = INVALIDATE.prepare_invoke();
            inv.key(self.keys.series(id));
            if !self.cluster {
                inv.key(self.keys.plugin_index(id.plugin.as_str()));
            }
            match range {
                None => inv.arg("all").arg(0).arg(0).arg("").arg(""),
                Some(r) => inv
                    .arg("range")
                    .arg(day_of(r.start()))
                    .arg(day_of(r.end()))
                    .arg(ymd_string(r.start()))
                    .arg(ymd_string(r.end())),
            };
            inv.arg(index_member(id.version, &id.ticker));
            self.redis.invoke::<u64>("INVALIDATE", inv).await
        }
        .boxed()
    }
}
