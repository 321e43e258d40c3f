//! `GET /`: a server-rendered status page (no front-end framework): plugins,
//! hit ratio, Redis state, and a small SVG chart of one plugin/ticker's
//! closes (`/?plugin=synthetic&ticker=AAPL`).

use std::fmt::Write as _;

use axum::extract::{RawQuery, State};
use axum::response::Html;

use super::AppState;
use super::query::Query;
use crate::model::{DateRange, PluginName, Ticker};
use crate::pipeline::DataRequest;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A polyline of closes scaled into a `w` x `h` box.
fn chart(closes: &[(String, f64)], w: f64, h: f64) -> String {
    if closes.len() < 2 {
        return "<p>Not enough bars to draw a chart.</p>".into();
    }
    let (min, max) = closes
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (_, c)| (lo.min(*c), hi.max(*c)));
    let span = if max > min { max - min } else { 1.0 };
    let step = w / (closes.len() - 1) as f64;
    let mut points = String::new();
    for (i, (_, c)) in closes.iter().enumerate() {
        let _ = write!(points, "{:.1},{:.1} ", i as f64 * step, h - (c - min) / span * h);
    }
    format!(
        r##"<svg id="chart" role="img" aria-label="closing prices" width="{w}" height="{th}" viewBox="0 -10 {w} {th}" xmlns="http://www.w3.org/2000/svg">
<polyline fill="none" stroke="#2b6cb0" stroke-width="2" points="{points}"/>
<text x="0" y="{ly}" font-size="11">{first} {min:.2}</text><text x="{w}" y="{ly}" font-size="11" text-anchor="end">{last} max {max:.2}</text>
</svg>"##,
        th = h + 30.0,
        ly = h + 16.0,
        first = esc(&closes[0].0),
        last = esc(&closes[closes.len() - 1].0),
    )
}

/// The chart section for one plugin and ticker over the last 90 days,
/// fetched through the pipeline (so it is cached like any request).
async fn closes_section(d: &AppState, plugin: &str, ticker: &str) -> Result<String, String> {
    let plugin = PluginName::parse(plugin).map_err(|e| e.message)?;
    let ticker = Ticker::parse(ticker).map_err(|e| e.message)?;
    let today = chrono::Utc::now().date_naive();
    let start = today.checked_sub_days(chrono::Days::new(90)).unwrap_or(today);
    let range = DateRange::new(start, today).map_err(|e| e.message)?;
    let title = format!("{} {}", esc(plugin.as_str()), esc(ticker.as_str()));
    let req = DataRequest {
        plugin,
        ticker,
        range,
        refresh: false,
    };
    let a = match d.pipeline.get(&req).await {
        Ok(a) => a,
        Err(e) => {
            return Ok(format!(
                "<h2>{title}</h2><p class=\"error\">{}: {}</p>",
                e.code(),
                esc(&e.to_string())
            ));
        }
    };
    let closes: Vec<(String, f64)> = a
        .doc()
        .map(|doc| {
            doc.bars
                .as_slice()
                .iter()
                .map(|b| (b.date.to_string(), b.close))
                .collect()
        })
        .unwrap_or_default();
    Ok(format!(
        "<h2>{title} — last 90 days (cache: {})</h2>{}",
        a.status.as_str(),
        chart(&closes, 600.0, 160.0)
    ))
}

pub async fn page(State(d): State<AppState>, RawQuery(raw): RawQuery) -> Html<String> {
    let q = Query::parse(raw.as_deref(), &["plugin", "ticker"]).ok();
    let slots = d.registry.list();
    let chosen_plugin = q.as_ref().and_then(|q| q.get("plugin").map(str::to_owned)).or_else(|| {
        slots
            .iter()
            .find(|s| s.name == "synthetic" && s.current.is_some())
            .or_else(|| slots.iter().find(|s| s.current.is_some()))
            .map(|s| s.name.clone())
    });
    let chosen_ticker = q
        .as_ref()
        .and_then(|q| q.get("ticker").map(str::to_owned))
        .unwrap_or_else(|| "AAPL".into());

    let t = d.metrics.totals();
    let ratio = t
        .hit_rate()
        .map(|r| format!("{:.1}%", 100.0 * r))
        .unwrap_or_else(|| "n/a".to_owned());
    let redis = if d.cache.redis().is_up() { "up" } else { "down" };

    let mut rows = String::new();
    for s in &slots {
        let cur = s.current.as_ref();
        let _ = write!(
            rows,
            "<tr class=\"plugin\" data-name=\"{name}\"><td><a href=\"/?plugin={name}&amp;ticker={tk}\">{name}</a></td><td class=\"status-{st}\">{st}</td><td><code>{ver}</code></td><td>{ttl}</td><td>{desc}</td><td>{err}</td></tr>",
            name = esc(&s.name),
            tk = esc(&chosen_ticker),
            st = s.status.as_str(),
            ver = cur.map(|p| esc(&p.version[..12])).unwrap_or_else(|| "-".into()),
            ttl = cur
                .map(|p| humantime::format_duration(p.settings().ttl).to_string())
                .unwrap_or_else(|| "-".into()),
            desc = cur.map(|p| esc(&p.manifest.description)).unwrap_or_default(),
            err = s.last_error.as_deref().map(esc).unwrap_or_default(),
        );
    }

    let chart_html = match &chosen_plugin {
        Some(p) => closes_section(&d, p, &chosen_ticker)
            .await
            .unwrap_or_else(|message| format!("<p class=\"error\">{}</p>", esc(&message))),
        None => "<p>No plugin loaded yet.</p>".into(),
    };

    Html(format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tickerd status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1a202c; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .3rem .8rem; border-bottom: 1px solid #e2e8f0; text-align: left; }}
.status-ok {{ color: #2f855a; }} .status-error, .error {{ color: #c53030; }}
.facts span {{ margin-right: 2rem; }}
</style></head>
<body>
<h1>tickerd</h1>
<p class="facts"><span>redis: <b id="redis">{redis}</b></span><span>hit ratio: <b id="hit-ratio">{ratio}</b></span><span>hits {hits} / misses {misses} / stale {stale}</span><span>memory entries: {mem}</span></p>
<h2>Plugins</h2>
<table id="plugins"><thead><tr><th>name</th><th>status</th><th>version</th><th>ttl</th><th>description</th><th>last error</th></tr></thead>
<tbody>{rows}</tbody></table>
{chart_html}
<p><a href="/metrics">metrics</a> · <a href="/v1/stats">stats</a> · <a href="/v1/plugins">plugins (JSON)</a></p>
</body></html>
"##,
        hits = t.hits(),
        misses = t.misses,
        stale = t.stale,
        mem = d.cache.memory_entries(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_draws() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        let svg = chart(&[("2024-01-02".into(), 1.0), ("2024-01-03".into(), 3.0)], 100.0, 50.0);
        assert!(svg.contains("points=\"0.0,50.0 100.0,0.0 \""), "{svg}");
    }
}
