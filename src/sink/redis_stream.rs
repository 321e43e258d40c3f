//! The `redis-stream` sink: `XADD <stream> MAXLEN ~ <maxlen> *` on the
//! cache's Redis, bounded by `op_timeout` like every other Redis call.

use super::Record;
use crate::cache::RedisStore;
use crate::metrics::Metrics;

pub(super) async fn publish(redis: &RedisStore, metrics: &Metrics, stream: &str, maxlen: u64, record: &Record) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("MAXLEN").arg("~").arg(maxlen).arg("*");
    for (k, v) in record.stream_fields().iter() {
        cmd.arg(*k).arg(*v);
    }
    let res = redis.query::<String>("XADD", cmd).await;
    match res {
        Ok(_) => metrics.stream_published(stream, "redis-stream"),
        Err(e) => {
            metrics.stream_error(stream, "redis-stream", "redis");
            tracing::warn!(
                stream = %stream, ticker = %record.ticker, error = %e,
                "could not publish to the redis stream; skipped this record (the next round publishes again once redis is back)"
            );
        }
    }
}
