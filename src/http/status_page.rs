//! `GET /`: a server-rendered status page (no front-end framework): plugins,
//! hit ratio, Redis state, and a small SVG chart of one plugin/ticker's
//! closes (`/?plugin=synthetic&ticker=AAPL`).

use std::fmt::Write as _;

use axum::extract::{RawQuery, State};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::AppState;
use super::query::Query;
use crate::model::{DateRange, PluginName, Ticker};
use crate::pipeline::DataRequest;

/// The page's style sheet: a constant, so it is the one unescaped part.
const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1a202c; }
table { border-collapse: collapse; } td, th { padding: .3rem .8rem; border-bottom: 1px solid #e2e8f0; text-align: left; }
.status-ok { color: #2f855a; } .status-error, .error { color: #c53030; }
.facts span { margin-right: 2rem; }
";

/// A polyline of closes scaled into a `w` x `h` box.
fn chart(closes: &[(String, f64)], w: f64, h: f64) -> Markup {
    if closes.len() < 2 {
        return html! { p { "Not enough bars to draw a chart." } };
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
    let (th, ly) = (h + 30.0, h + 16.0);
    // Explicit end tags: inside HTML an SVG element is only closed by one.
    html! {
        svg id="chart" role="img" aria-label="closing prices" width=(w) height=(th)
            viewBox={ "0 -10 " (w) " " (th) } xmlns="http://www.w3.org/2000/svg" {
            polyline fill="none" stroke="#2b6cb0" stroke-width="2" points=(points) {}
            text x="0" y=(ly) font-size="11" { (closes[0].0) " " (format!("{min:.2}")) }
            text x=(w) y=(ly) font-size="11" text-anchor="end" {
                (closes[closes.len() - 1].0) " max " (format!("{max:.2}"))
            }
        }
    }
}

/// The chart section for one plugin and ticker over the last 90 days,
/// fetched through the pipeline (so it is cached like any request).
async fn closes_section(d: &AppState, plugin: &str, ticker: &str) -> Result<Markup, String> {
    let plugin = PluginName::parse(plugin).map_err(|e| e.message)?;
    let ticker = Ticker::parse(ticker).map_err(|e| e.message)?;
    let today = chrono::Utc::now().date_naive();
    let start = today.checked_sub_days(chrono::Days::new(90)).unwrap_or(today);
    let range = DateRange::new(start, today).map_err(|e| e.message)?;
    let title = format!("{plugin} {ticker}");
    let req = DataRequest {
        plugin,
        ticker,
        range,
        refresh: false,
    };
    let a = match d.get(&req).await {
        Ok(a) => a,
        Err(e) => {
            return Ok(html! {
                h2 { (title) }
                p.error { (e.code()) ": " (e.to_string()) }
            });
        }
    };
    let closes: Vec<(String, f64)> = a
        .parsed_bars()
        .map(|bars| bars.iter().map(|b| (b.date.to_string(), b.close)).collect())
        .unwrap_or_default();
    Ok(html! {
        h2 { (title) " — last 90 days (cache: " (a.status.as_str()) ")" }
        (chart(&closes, 600.0, 160.0))
    })
}

/// The page, rendered by maud: every value is HTML-escaped unless wrapped in
/// `PreEscaped`, which only the constant style sheet is.
pub(crate) async fn page(State(d): State<AppState>, RawQuery(raw): RawQuery) -> Markup {
    let q = Query::parse(raw.as_deref(), &["plugin", "ticker"]).ok();
    let slots = d.registry().list();
    let chosen_plugin = q.as_ref().and_then(|q| q.get("plugin").map(str::to_owned)).or_else(|| {
        slots
            .iter()
            .find(|s| s.name.as_str() == "synthetic" && s.current.is_some())
            .or_else(|| slots.iter().find(|s| s.current.is_some()))
            .map(|s| s.name.to_string())
    });
    let chosen_ticker = q
        .as_ref()
        .and_then(|q| q.get("ticker").map(str::to_owned))
        .unwrap_or_else(|| "AAPL".into());

    let t = d.metrics().totals();
    let ratio = t
        .hit_rate()
        .map(|r| format!("{:.1}%", 100.0 * r))
        .unwrap_or_else(|| "n/a".to_owned());
    let redis = d.cache().redis_link().as_str();

    // When each plugin's fleet-wide cool-down ends (asked of Redis, one round trip each).
    let mut cooldowns = Vec::with_capacity(slots.len());
    for s in &slots {
        let until = match &s.current {
            Some(_) => d.budget().cooldown_until(s.name.as_str()).await,
            None => None,
        };
        cooldowns.push(until.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    }

    let chart_html = match &chosen_plugin {
        Some(p) => closes_section(&d, p, &chosen_ticker)
            .await
            .unwrap_or_else(|message| html! { p.error { (message) } }),
        None => html! { p { "No plugin loaded yet." } },
    };

    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "tickerd status" }
                meta name="viewport" content="width=device-width, initial-scale=1";
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "tickerd" }
                p class="facts" {
                    span { "redis: " b id="redis" { (redis) } }
                    span { "hit ratio: " b id="hit-ratio" { (ratio) } }
                    span { "hits " (t.hits()) " / misses " (t.misses) " / stale " (t.stale) }
                    span { "memory entries: " (d.cache().memory_entries()) }
                }
                h2 { "Plugins" }
                table id="plugins" {
                    thead { tr { th { "name" } th { "status" } th { "version" } th { "ttl" } th { "rate limit" } th { "cooling down until" } th { "description" } th { "last error" } } }
                    tbody {
                        @for (s, cooldown) in slots.iter().zip(&cooldowns) {
                            @let cur = s.current.as_ref();
                            tr class="plugin" data-name=(s.name) {
                                td { a href={ "/?plugin=" (s.name) "&ticker=" (chosen_ticker) } { (s.name) } }
                                td class={ "status-" (s.status.as_str()) } { (s.status.as_str()) }
                                td { code { @match cur { Some(p) => (p.version[..12]), None => "-" } } }
                                td {
                                    @match cur {
                                        Some(p) => (humantime::format_duration(p.settings().ttl)),
                                        None => "-",
                                    }
                                }
                                td class="rate-limit" {
                                    @match cur {
                                        Some(p) => (p.settings().rate_limit),
                                        None => "-",
                                    }
                                }
                                td class="cooldown-until" { (cooldown.as_deref().unwrap_or("-")) }
                                td { @if let Some(p) = cur { (p.manifest.description) } }
                                td { @if let Some(e) = &s.last_error { (e) } }
                            }
                        }
                    }
                }
                (chart_html)
                p {
                    a href="/metrics" { "metrics" } " · "
                    a href="/v1/stats" { "stats" } " · "
                    a href="/v1/plugins" { "plugins (JSON)" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_draws() {
        let svg = chart(&[("<b>'\"&".into(), 1.0), ("2024-01-03".into(), 3.0)], 100.0, 50.0).into_string();
        assert!(svg.contains("points=\"0.0,50.0 100.0,0.0 \""), "{svg}");
        assert!(svg.contains("&lt;b&gt;'&quot;&amp; 1.00"), "{svg}");
        assert!(!svg.contains("<b>"), "{svg}");
    }
}
