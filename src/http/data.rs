//! `GET /v1/data/{plugin}/{ticker}`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::query::Query;
use crate::daemon::Daemon;
use crate::error::FetchError;
use crate::model::PluginName;
use crate::pipeline::DataRequest;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

fn wants(q: &Query, headers: &HeaderMap) -> Result<Format, ApiError> {
    match q.get("format") {
        Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv),
        Some(other) => Err(ApiError::bad_request(
            "format",
            format!("{other:?} is not a format; use json or csv"),
        )),
        None => {
            let csv = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.split(',').any(|m| m.trim().starts_with("text/csv")));
            Ok(if csv { Format::Csv } else { Format::Json })
        }
    }
}

/// Turns path and query into a validated request (the request rules in the README, "HTTP API").
pub(crate) fn parse_request<'q>(
    plugin: &str,
    ticker: &str,
    raw_query: Option<&'q str>,
    today: chrono::NaiveDate,
) -> Result<(DataRequest, Query<'q>), ApiError> {
    let q = Query::parse(raw_query, &["start", "end", "refresh", "format"])?;
    let plugin = PluginName::parse(plugin).map_err(|_| FetchError::PluginNotFound(plugin.to_owned()))?;
    let req = DataRequest::from_parts(plugin, ticker, q.get("start"), q.get("end"), q.flag("refresh")?, today)?;
    Ok((req, q))
}

/// Takes the request whole, where the `RawQuery` and `HeaderMap` extractors
/// would copy the query string and every header on each call.
pub(crate) async fn get_data(
    State(d): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Path((plugin, ticker)) = path?;
    answer(&d, &plugin, &ticker, request.uri(), request.headers()).await
}

/// The route's work once `plugin` and `ticker` are out of the path (by the
/// router's extractor, or by `http::App`'s fast path).
/// (Parts of the request, not the request: its body is not `Sync`, and
/// the answer is awaited.)
pub(crate) async fn answer(
    d: &Daemon,
    plugin: &str,
    ticker: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let today = chrono::Utc::now().date_naive();
    let (req, q) = parse_request(plugin, ticker, uri.query(), today)?;
    req.range.check_span(d.config().http.max_range_days)?;
    let format = wants(&q, headers)?;
    let answer = d.get(&req).await?;
    let x_cache = HeaderValue::from_static(answer.status.header());
    let mut resp = match format {
        Format::Json => (
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            answer.to_json(),
        )
            .into_response(),
        Format::Csv => match answer.to_csv() {
            Some(csv) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                )],
                csv,
            )
                .into_response(),
            None => {
                return Err(ApiError::Internal(
                    "a cached bar could not be read back; DELETE /v1/cache for this ticker and retry".into(),
                ));
            }
        },
    };
    resp.headers_mut().insert("x-cache", x_cache);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> chrono::NaiveDate {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 25).unwrap()
    }

    fn field(r: Result<(DataRequest, Query<'_>), ApiError>) -> String {
        match r {
            Err(ApiError::BadRequest { field, .. }) => field,
            Err(other) => panic!("expected 400, got {other:?}"),
            Ok(_) => panic!("expected 400, got ok"),
        }
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(field(parse_request("synthetic", "A B", None, today())), "ticker");
        assert_eq!(
            field(parse_request("synthetic", "AAPL", Some("start=2024-13-01"), today())),
            "start"
        );
        assert_eq!(
            field(parse_request(
                "synthetic",
                "AAPL",
                Some("start=2024-01-01&end=x"),
                today()
            )),
            "end"
        );
        assert_eq!(
            field(parse_request("synthetic", "AAPL", Some("refresh=maybe"), today())),
            "refresh"
        );
        assert_eq!(
            field(parse_request("synthetic", "AAPL", Some("colour=red"), today())),
            "colour"
        );
        assert_eq!(
            field(parse_request(
                "synthetic",
                "AAPL",
                Some("start=2024-01-01&start=2024-01-02"),
                today()
            )),
            "start"
        );
    }

    #[test]
    fn a_good_request_is_normalised() {
        let (r, _) = parse_request(
            "synthetic",
            "aapl",
            Some("start=2024-01-01&end=2024-01-31&refresh=true"),
            today(),
        )
        .unwrap();
        assert_eq!(r.ticker.as_str(), "AAPL");
        assert!(r.refresh);
        assert_eq!(r.range.to_string(), "2024-01-01..2024-01-31");
    }

    #[test]
    fn an_impossible_plugin_name_is_not_found() {
        assert!(matches!(
            parse_request("Nope!", "AAPL", None, today()),
            Err(ApiError::Fetch(FetchError::PluginNotFound(_)))
        ));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary paths and query strings never panic; what is accepted
        /// is always a valid, normalised request.
        #[test]
        fn parsing_never_panics_and_normalises(
            plugin in "\\PC{0,80}",
            ticker in "\\PC{0,80}",
            query in proptest::option::of("\\PC{0,200}"),
        ) {
            let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
            if let Ok((req, _)) = parse_request(&plugin, &ticker, query.as_deref(), today) {
                let t = req.ticker.as_str();
                prop_assert!(!t.is_empty() && t.len() <= 32);
                prop_assert!(t.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || ".^=_-".contains(c)));
                prop_assert!(req.range.start() <= req.range.end());
                prop_assert_eq!(req.plugin.as_str(), plugin.as_str());
            }
        }

        #[test]
        fn well_formed_queries_round_trip(y1 in 1990i32..2030, d1 in 0u64..365, span in 0u64..400) {
            let today = chrono::NaiveDate::from_ymd_opt(2031, 1, 1).unwrap();
            let s = chrono::NaiveDate::from_ymd_opt(y1, 1, 1).unwrap() + chrono::Days::new(d1);
            let e = s + chrono::Days::new(span);
            let q = format!("start={s}&end={e}");
            let (req, _) = parse_request("synthetic", "aapl", Some(&q), today).unwrap();
            prop_assert_eq!((req.range.start(), req.range.end()), (s, e));
        }
    }
}
