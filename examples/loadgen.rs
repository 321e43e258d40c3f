//! Load helpers for `bench/run.sh` (not part of the daemon).
//!
//! `loadgen storm URL N`: N concurrent GETs of one URL, released together;
//! prints status counts and latency percentiles.
//! `loadgen reload FILE URL N`: N times, rewrite the plugin FILE with a new
//! marker and time until URL (use `refresh=true`) serves it; prints the median.
//! `loadgen cache-writes REDIS_URL SECONDS`: the Redis side of a refresh alone
//! (fleet lock, then the cache write with its stale copy, index sets and lock
//! release) through tickerd's own `Cache`, 64 at a time, for a 30-bar
//! document like `bench/plugins/flat30.lua`: no HTTP, no Lua. Its rate is the
//! ceiling for the plugin-overhead figure on this machine.

use std::time::{Duration, Instant};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn storm(url: String, n: usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .build()
        .expect("client");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (c, u, b) = (client.clone(), url.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            // Open this client's keep-alive connection first, so the storm
            // measures the cold key, not 1000 TCP handshakes.
            let health = format!("{}/healthz", u.split("/v1/").next().unwrap_or(&u));
            let _ = c.get(&health).send().await.map(|r| r.bytes());
            b.wait().await;
            let t = Instant::now();
            let s = c.get(&u).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
            (s, t.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut ok = 0;
    for t in tasks {
        if let Ok((s, d)) = t.await {
            ok += usize::from(s == 200);
            lat.push(d);
        }
    }
    lat.sort();
    println!(
        "storm requests={n} ok={ok} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

async fn reload(file: String, url: String, n: usize) {
    let client = reqwest::Client::new();
    let template = std::fs::read_to_string(&file).expect("plugin file");
    let mut times = Vec::new();
    for i in 0..n {
        let marker = format!("reload-{}-{i}", std::process::id());
        std::fs::write(&file, template.replace("MARKER", &marker)).expect("write plugin");
        let t = Instant::now();
        loop {
            let body = client
                .get(&url)
                .send()
                .await
                .expect("GET")
                .text()
                .await
                .unwrap_or_default();
            if body.contains(&marker) {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                eprintln!("save {i} not served within 10 s");
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    times.sort();
    println!(
        "reload saves={n} median_ms={:.1} p90_ms={:.1} max_ms={:.1}",
        pct(&times, 0.5).as_secs_f64() * 1e3,
        pct(&times, 0.9).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

async fn cache_writes(redis_url: String, secs: u64) {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tickerd::bench::{
        Bar, Cache, Config, DateRange, Flags, Metrics, PluginName, SeriesId, Span, Store, Ticker, Write, now_ms,
        parse_date,
    };

    let toml = format!("[redis]\nurl = \"{redis_url}\"\nkey_prefix = \"bench-writes\"\n");
    let cfg = Config::resolve(&Flags::default(), &HashMap::new(), None, Some(&toml)).expect("config");
    let metrics = Metrics::new();
    let cache = Arc::new(Cache::new(cfg.redis, cfg.cache, Arc::clone(&metrics)));
    cache.redis().connect().await.expect("connect to redis");
    let start = parse_date("start", "2024-01-01").expect("date");
    let range = DateRange::new(start, start + chrono::Days::new(39)).expect("range");
    let plugin = PluginName::parse("flat30").expect("name");
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for task in 0..64u64 {
        let (cache, done, plugin) = (Arc::clone(&cache), Arc::clone(&done), plugin.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < until {
                i += 1;
                let ticker = Ticker::parse(&format!("W{task}X{i}")).expect("ticker");
                let id = SeriesId {
                    plugin: plugin.clone(),
                    version: 1,
                    ticker,
                };
                let guard = cache.lock(&id, Duration::from_secs(6)).await.ok().and_then(|a| a.guard);
                let bars = (0..30u32)
                    .map(|d| {
                        let p = 100.0 + f64::from(d);
                        let bar = Bar {
                            date: start + chrono::Days::new(u64::from(d)),
                            open: p,
                            high: p + 1.0,
                            low: p - 1.0,
                            close: p + 0.5,
                            volume: Some(1000.0 + f64::from(d)),
                            extra: Default::default(),
                        };
                        let mut v = Vec::with_capacity(128);
                        bar.write_json(&mut v);
                        (bar.date, bytes::Bytes::from(v))
                    })
                    .collect();
                let w = Write {
                    span: Span {
                        from: range.start(),
                        to: range.end(),
                        fetched_ms: now_ms(),
                        empty: false,
                    },
                    bars,
                    meta: Some(bytes::Bytes::from_static(b"{}")),
                };
                let _ = cache.write(&id, &w, Duration::from_secs(3600), guard.as_ref()).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let n = done.load(Ordering::Relaxed);
    println!("cache-writes calls={n} calls_per_s={}", n / secs.max(1));
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["storm", url, n] => storm(url.to_string(), n.parse().expect("N")).await,
        ["reload", file, url, n] => reload(file.to_string(), url.to_string(), n.parse().expect("N")).await,
        ["cache-writes", url, secs] => cache_writes(url.to_string(), secs.parse().expect("SECONDS")).await,
        _ => {
            eprintln!(
                "usage: loadgen storm URL N | loadgen reload FILE URL N | loadgen cache-writes REDIS_URL SECONDS"
            );
            std::process::exit(2);
        }
    }
}
