//! The `redis-stream` sink: `XADD <stream> MAXLEN ~ <maxlen> *` on the
//! cache's Redis, bounded by `op_timeout` like every other Redis call.

use futures::FutureExt;

use super::Record;
use crate::cache::RedisStore;
use crate::metrics::Metrics;

pub(super) async fn publish(redis: &RedisStore, metrics: &Metrics, stream: &str, maxlen: u64, record: &Record) {
    let fields: Vec<(&'static str, String)> = record
        .stream_fields()
        .iter()
        .map(|(k, v)| (*k, (*v).to_owned()))
        .collect();
    let key = stream.to_owned();
    let res = redis
        .call("XADD", move |mut c| {
            async move {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&key).arg("MAXLEN").arg("~").arg(maxlen).arg("*");
                for (k, v) in &fields {
                    cmd.arg(*k).arg(v);
                }
                cmd.query_async::<String>(&mut c).await
            }
            .boxed()
        })
        .await;
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
