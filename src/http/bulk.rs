//! `GET /v1/data/{plugin}?tickers=A,B,...&start=&end=` (README "Rate limits"): many
//! tickers as NDJSON, one line per ticker in completion order, each the data
//! answer of §2 or `{"ticker": "X", "error": {"code": ..., "message": ...}}`.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::query::Query;
use crate::error::FetchError;
use crate::model::{DateRange, PluginName, Ticker};
use crate::pipeline::{BulkOptions, MAX_BULK_TICKERS, error_line};

/// Longest request target of this route: 1000 tickers of up to 32
/// characters and their commas, plus the dates.
pub(crate) const MAX_BULK_URI: usize = 40 * 1024;

/// Whether `path` is this route's (`/v1/data/{plugin}`, one segment).
pub(crate) fn is_bulk_path(path: &str) -> bool {
    path.strip_prefix("/v1/data/")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
}

/// The `tickers` parameter: comma-separated, upper-cased, duplicates
/// dropped (first one kept), 1 to [`MAX_BULK_TICKERS`]; a malformed one is a
/// 400 naming it and its position.
pub(crate) fn parse_tickers(raw: Option<&str>) -> Result<Vec<Ticker>, ApiError> {
    let Some(raw) = raw else {
        return Err(ApiError::bad_request(
            "tickers",
            "missing; give tickers=AAPL,MSFT,... (at most 1000)",
        ));
    };
    let mut out: Vec<Ticker> = Vec::new();
    for (i, item) in raw.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let t = Ticker::parse(item).map_err(|e| {
            ApiError::bad_request(
                "tickers",
                format!("{item:?} (item {}) is not a ticker: {}", i + 1, e.message),
            )
        })?;
        if !out.contains(&t) {
            out.push(t);
        }
        if out.len() > MAX_BULK_TICKERS {
            return Err(ApiError::bad_request(
                "tickers",
                format!("more than {MAX_BULK_TICKERS} tickers; split the request"),
            ));
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request(
            "tickers",
            "no ticker given; give tickers=AAPL,MSFT,...",
        ));
    }
    Ok(out)
}

pub(crate) async fn get_bulk(
    State(d): State<AppState>,
    Path(plugin): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let today = chrono::Utc::now().date_naive();
    let q = Query::parse(raw.as_deref(), &["tickers", "start", "end", "refresh"])?;
    let plugin = PluginName::parse(&plugin).map_err(|_| ApiError::Fetch(FetchError::PluginNotFound(plugin.clone())))?;
    let tickers = parse_tickers(q.get("tickers"))?;
    let range = DateRange::from_request(q.get("start"), q.get("end"), today)?;
    range.check_span(d.config().http.max_range_days)?;
    let refresh = q.flag("refresh")?;
    let bulk = d.get_many(
        &plugin,
        tickers,
        range,
        BulkOptions {
            refresh,
            retry_within: Duration::ZERO,
        },
    )?;
    let lines = futures::stream::unfold(bulk.rx, |mut rx| async move {
        let (ticker, res) = rx.recv().await?;
        let line = match res {
            Ok(a) => {
                let mut l = a.to_json();
                l.push(b'\n');
                l
            }
            Err(e) => error_line(&ticker, &e),
        };
        Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"))],
        Body::from_stream(lines),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_message(r: Result<Vec<Ticker>, ApiError>) -> (String, String) {
        match r {
            Err(ApiError::BadRequest { field, message }) => (field, message),
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn tickers_are_upper_cased_deduplicated_and_bounded() {
        let t = parse_tickers(Some("aapl, MSFT,,AAPL,brk.b")).unwrap();
        let names: Vec<&str> = t.iter().map(Ticker::as_str).collect();
        assert_eq!(names, ["AAPL", "MSFT", "BRK.B"]);
        let (f, m) = field_message(parse_tickers(Some("AAPL,BAD TICKER,MSFT")));
        assert_eq!(f, "tickers");
        assert!(m.contains("\"BAD TICKER\" (item 2)"), "{m}");
        let many: Vec<String> = (0..1001).map(|i| format!("T{i}")).collect();
        assert!(
            field_message(parse_tickers(Some(&many.join(","))))
                .1
                .contains("more than 1000")
        );
        assert_eq!(parse_tickers(Some(&many[..1000].join(","))).unwrap().len(), 1000);
        assert!(field_message(parse_tickers(Some(" , "))).1.contains("no ticker"));
        assert!(field_message(parse_tickers(None)).1.contains("missing"));
    }

    #[test]
    fn only_one_segment_paths_are_bulk() {
        assert!(is_bulk_path("/v1/data/yahoo"));
        assert!(!is_bulk_path("/v1/data/yahoo/AAPL"));
        assert!(!is_bulk_path("/v1/data/"));
        assert!(!is_bulk_path("/v1/plugins"));
    }
}
