//! `http.get(url, opts)`, `http.post(url, opts)`, `http.request(opts)`.
//!
//! Each call is an async host function: the Lua coroutine that made it is
//! suspended while the request is in flight, so a waiting plugin blocks no
//! thread. Options are read into plain Rust values before the first await.
//!
//! The answer is `{status = int, headers = {lowercased name = value}, body = string}`;
//! any status is an answer (the plugin decides what a 404 means). What is
//! raised instead:
//! - `HostError::Upstream`: no answer (connection refused, DNS, TLS, reset) or
//!   no complete answer within the call's timeout;
//! - `HostError::Limit`: the body is larger than `max_body`, or the host is
//!   not in `allow_hosts`;
//! - a plain runtime error (`plugin_error`) for a bad URL or bad options.
//!
//! Messages name the method, scheme, host and path of the URL, never its
//! query string or user info, where API keys usually live.

use std::time::Duration;

use mlua::{Lua, Table, Value};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};

use super::{HostCtx, HostError};
use crate::config::format_bytes;
use crate::model::whole_number;
use crate::plugin::convert::{lua_duration, lua_to_json};

const OPTION_KEYS: &[&str] = &["method", "url", "headers", "query", "body", "timeout"];

/// One request, read out of the Lua arguments.
struct Call {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    timeout: Duration,
}

/// A received answer, ready to become a Lua table.
struct Answer {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

pub fn install(lua: &Lua, ctx: &HostCtx) -> mlua::Result<()> {
    let t = lua.create_table()?;
    for (name, fixed) in [
        ("get", Some(Method::GET)),
        ("post", Some(Method::POST)),
        ("request", None),
    ] {
        let ctx = ctx.clone();
        let f = lua.create_async_function(move |lua, (first, opts): (Value, Option<Table>)| {
            let ctx = ctx.clone();
            let call = read_call(&lua, &ctx, name, fixed.clone(), first, opts);
            async move {
                let call = call?;
                let answer = perform(&ctx, call).await.map_err(mlua::Error::external)?;
                to_lua(&lua, answer)
            }
        })?;
        t.raw_set(name, f)?;
    }
    lua.globals().raw_set("http", t)
}

fn bad(func: &str, msg: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("http.{func}: {msg}"))
}

/// `scheme://host[:port]/path`: the URL without user info, query or fragment.
pub fn redact(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(p) => format!("{}://{host}:{p}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

/// Whether `host` (with its effective `port`) matches one `allow_hosts`
/// entry: `example.com`, `example.com:8443`, or `*.example.com` (subdomains).
fn host_allowed(allow: &[String], host: &str, port: Option<u16>) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    allow.iter().any(|entry| {
        let e = entry.trim().to_ascii_lowercase();
        if let Some(suffix) = e.strip_prefix("*.") {
            return host.ends_with(&format!(".{suffix}"));
        }
        if e == host {
            return true;
        }
        match (e.rsplit_once(':'), port) {
            (Some((h, p)), Some(port)) => {
                h.trim_start_matches('[').trim_end_matches(']') == host && p.parse::<u16>().ok() == Some(port)
            }
            _ => false,
        }
    })
}

fn check_allowed(ctx: &HostCtx, url: &Url) -> Result<(), HostError> {
    let settings = ctx.settings.load();
    let Some(allow) = settings.allow_hosts.as_deref() else {
        return Ok(());
    };
    let host = url.host_str().unwrap_or("");
    if host_allowed(allow, host, url.port_or_known_default()) {
        return Ok(());
    }
    Err(HostError::Limit(format!(
        "http: host {host:?} is not in this plugin's allow_hosts ({}); to allow it, add {host:?} to [plugins.{}] allow_hosts in the config",
        if allow.is_empty() {
            "empty".to_owned()
        } else {
            allow.join(", ")
        },
        ctx.plugin
    )))
}

fn text_of(func: &str, what: &str, v: Value) -> mlua::Result<String> {
    match v {
        Value::String(s) => Ok(s
            .to_str()
            .map_err(|_| bad(func, format!("{what} is not valid UTF-8")))?
            .to_string()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Number(n) => Ok(whole_number(n).map_or_else(|| n.to_string(), |i| i.to_string())),
        Value::Boolean(b) => Ok(b.to_string()),
        other => Err(bad(
            func,
            format!("{what} must be a string or a number, got {}", other.type_name()),
        )),
    }
}

fn read_timeout(func: &str, v: Value) -> mlua::Result<Option<Duration>> {
    lua_duration("timeout", v).map_err(|m| bad(func, m))
}

/// Reads one call's arguments into a [`Call`], checking each option and
/// naming the one that is wrong; nothing here awaits.
fn read_call(
    lua: &Lua,
    ctx: &HostCtx,
    func: &str,
    fixed: Option<Method>,
    first: Value,
    opts: Option<Table>,
) -> mlua::Result<Call> {
    let (url_arg, opts) = read_args(lua, func, fixed.is_some(), first, opts)?;
    let method = read_method(func, fixed, opts.raw_get("method")?)?;
    let mut url = read_url(func, url_arg, opts.raw_get("url")?)?;
    add_query(func, &mut url, opts.raw_get("query")?)?;
    let mut headers = read_headers(func, opts.raw_get("headers")?)?;
    let body = read_body(lua, func, &mut headers, opts.raw_get("body")?)?;
    let own = ctx.settings.load().timeout;
    let timeout = read_timeout(func, opts.raw_get("timeout")?)?.map_or(own, |t| t.min(own));
    Ok(Call {
        method,
        url,
        headers,
        body,
        timeout,
    })
}

/// `http.get(url, opts)` / `http.post(url, opts)` / `http.request(opts)` or
/// `http.request(url, opts)`: the URL argument, if any, and the options
/// table, whose keys must all be known.
fn read_args(
    lua: &Lua,
    func: &str,
    fixed: bool,
    first: Value,
    opts: Option<Table>,
) -> mlua::Result<(Option<String>, Table)> {
    let (url_arg, opts) = match (first, opts) {
        (Value::Table(t), None) if !fixed => (None, Some(t)),
        (Value::String(s), o) => (Some(s.to_string_lossy()), o),
        (other, _) => {
            let usage = if fixed {
                format!("http.{func}(url, opts)")
            } else {
                "http.request({ url = ..., method = ... })".to_owned()
            };
            return Err(bad(
                func,
                format!("expected {usage}, got a {} first", other.type_name()),
            ));
        }
    };
    let opts = match opts {
        Some(t) => t,
        None => lua.create_table()?,
    };
    for pair in opts.pairs::<Value, Value>() {
        let (k, _) = pair?;
        let known = matches!(&k, Value::String(s) if OPTION_KEYS.contains(&&*s.to_string_lossy()));
        if !known {
            return Err(bad(
                func,
                format!(
                    "unknown option {}; options are {}",
                    k.to_string()?,
                    OPTION_KEYS.join(", ")
                ),
            ));
        }
    }
    Ok((url_arg, opts))
}

/// The method: fixed by `http.get`/`http.post` (an option may repeat it),
/// free with `http.request` (default GET).
fn read_method(func: &str, fixed: Option<Method>, asked: Value) -> mlua::Result<Method> {
    Ok(match (fixed, asked) {
        (Some(m), Value::Nil) => m,
        (Some(m), v) => {
            let asked = text_of(func, "method", v)?.to_ascii_uppercase();
            if asked != m.as_str() {
                return Err(bad(
                    func,
                    format!("method {asked} does not match http.{func}; use http.request"),
                ));
            }
            m
        }
        (None, Value::Nil) => Method::GET,
        (None, v) => {
            let m = text_of(func, "method", v)?.to_ascii_uppercase();
            Method::from_bytes(m.as_bytes()).map_err(|_| bad(func, format!("{m:?} is not an HTTP method")))?
        }
    })
}

/// The URL, from the argument or the `url` option (not both): http or
/// https with a host; the fragment is dropped.
fn read_url(func: &str, url_arg: Option<String>, option: Value) -> mlua::Result<Url> {
    let raw_url = match (url_arg, option) {
        (Some(u), Value::Nil) => u,
        (None, Value::Nil) => return Err(bad(func, "no url given")),
        (None, v) => text_of(func, "url", v)?,
        (Some(_), _) => return Err(bad(func, "url given twice (argument and option)")),
    };
    let mut url = Url::parse(&raw_url).map_err(|e| {
        // The raw URL may carry a key in its query: show only what comes before.
        let shown = raw_url.split(['?', '#']).next().unwrap_or("");
        bad(func, format!("invalid url {shown:?}: {e}"))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(
            func,
            format!("only http and https URLs are allowed, not {}:", url.scheme()),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad(func, format!("url {} has no host", redact(&url))));
    }
    url.set_fragment(None);
    Ok(url)
}

/// The `query` option, appended sorted so that one request always makes
/// one URL.
fn add_query(func: &str, url: &mut Url, query: Value) -> mlua::Result<()> {
    match query {
        Value::Nil => {}
        Value::Table(q) => {
            let mut pairs = Vec::new();
            for pair in q.pairs::<Value, Value>() {
                let (k, v) = pair?;
                let k = text_of(func, "a query key", k)?;
                let v = text_of(func, &format!("query.{k}"), v)?;
                pairs.push((k, v));
            }
            if !pairs.is_empty() {
                pairs.sort();
                let mut qp = url.query_pairs_mut();
                for (k, v) in &pairs {
                    qp.append_pair(k, v);
                }
            }
        }
        other => return Err(bad(func, format!("query must be a table, got {}", other.type_name()))),
    }
    Ok(())
}

fn read_headers(func: &str, headers_opt: Value) -> mlua::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    match headers_opt {
        Value::Nil => {}
        Value::Table(h) => {
            for pair in h.pairs::<Value, Value>() {
                let (k, v) = pair?;
                let k = text_of(func, "a header name", k)?;
                let v = text_of(func, &format!("header {k}"), v)?;
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| bad(func, format!("{k:?} is not a valid header name")))?;
                let value = HeaderValue::from_str(&v)
                    .map_err(|_| bad(func, format!("the value of header {k} is not a valid header value")))?;
                headers.insert(name, value);
            }
        }
        other => return Err(bad(func, format!("headers must be a table, got {}", other.type_name()))),
    }
    Ok(headers)
}

/// The body: a string as is, a table as JSON (with a JSON content type
/// unless the plugin set one).
fn read_body(lua: &Lua, func: &str, headers: &mut HeaderMap, body: Value) -> mlua::Result<Option<Vec<u8>>> {
    Ok(match body {
        Value::Nil => None,
        Value::String(s) => Some(s.as_bytes().to_vec()),
        v @ Value::Table(_) => {
            let json = lua_to_json(lua, &v, "body", 0).map_err(|m| bad(func, m))?;
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Some(serde_json::to_vec(&json).map_err(|e| bad(func, e))?)
        }
        other => {
            return Err(bad(
                func,
                format!(
                    "body must be a string or a table (sent as JSON), got {}",
                    other.type_name()
                ),
            ));
        }
    })
}

/// What went wrong, from a reqwest error and its causes, without the URL.
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "could not connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_redirect() {
        "redirect failed"
    } else if e.is_body() || e.is_decode() {
        "failed while reading the body"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut parts: Vec<String> = Vec::new();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cause = c.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    format!("{kind} ({})", parts.join(": "))
}

async fn perform(ctx: &HostCtx, call: Call) -> Result<Answer, HostError> {
    check_allowed(ctx, &call.url)?;
    let max_body = ctx.settings.load().max_body;
    let target = format!("{} {}", call.method, redact(&call.url));
    let timeout = call.timeout;
    let limit_msg = |what: &str| {
        HostError::Limit(format!(
            "http: the response body of {target} {what} the limit of {} (raise it with max_body under [plugins.{}])",
            format_bytes(max_body),
            ctx.plugin
        ))
    };
    let exchange = async {
        let mut resp = send(ctx, call, &target).await?;
        if resp.content_length().is_some_and(|n| n > max_body as u64) {
            return Err(limit_msg("announces more than"));
        }
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(|v| super::parse_retry_after(v, std::time::SystemTime::now()));
        if status == 429 || (status == 503 && retry_after.is_some()) {
            super::note_refusal(super::Refusal {
                status,
                retry_after: retry_after.flatten(),
            });
        }
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        for (name, value) in resp.headers() {
            let name = name.as_str().to_ascii_lowercase();
            match headers.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => {
                    v.extend_from_slice(b", ");
                    v.extend_from_slice(value.as_bytes());
                }
                None => headers.push((name, value.as_bytes().to_vec())),
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| HostError::Upstream(format!("{target}: {}", describe(e))))?
        {
            if body.len() + chunk.len() > max_body {
                return Err(limit_msg("exceeds"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer { status, headers, body })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(HostError::Upstream(format!(
            "{target}: no complete answer within {}",
            humantime::format_duration(timeout)
        ))),
    }
}

/// Most redirects a call follows itself (when the client hands them back).
const MAX_REDIRECTS: usize = 5;

/// Sends the request and follows redirects, checking every hop against
/// `allow_hosts` before it is contacted. If the shared client follows
/// redirects on its own, only the final URL can be checked, after the fact.
async fn send(ctx: &HostCtx, call: Call, target: &str) -> Result<reqwest::Response, HostError> {
    let Call {
        mut method,
        mut url,
        mut headers,
        mut body,
        ..
    } = call;
    let failed = |e: reqwest::Error| HostError::Upstream(format!("{target}: {}", describe(e)));
    for _ in 0..=MAX_REDIRECTS {
        let mut req = ctx.http.request(method.clone(), url.clone()).headers(headers.clone());
        if let Some(b) = &body {
            req = req.body(b.clone());
        }
        let resp = req.send().await.map_err(failed)?;
        if resp.url() != &url {
            check_allowed(ctx, resp.url())?;
        }
        let status = resp.status();
        let next = status
            .is_redirection()
            .then(|| resp.headers().get(reqwest::header::LOCATION))
            .flatten()
            .and_then(|l| l.to_str().ok())
            .and_then(|l| resp.url().join(l).ok());
        let Some(next) = next else { return Ok(resp) };
        if !matches!(next.scheme(), "http" | "https") {
            return Err(HostError::Upstream(format!(
                "{target}: redirected to a {}: URL, which is not followed",
                next.scheme()
            )));
        }
        check_allowed(ctx, &next)?;
        // 303, and 301/302 after a POST, turn into a GET without a body (as browsers do).
        if status == reqwest::StatusCode::SEE_OTHER || (matches!(status.as_u16(), 301 | 302) && method == Method::POST)
        {
            method = Method::GET;
            body = None;
            headers.remove(CONTENT_TYPE);
        }
        // Credentials are for the origin they were written for.
        if next.host_str() != url.host_str() || next.port_or_known_default() != url.port_or_known_default() {
            for h in [
                reqwest::header::AUTHORIZATION,
                reqwest::header::COOKIE,
                reqwest::header::PROXY_AUTHORIZATION,
            ] {
                headers.remove(h);
            }
        }
        url = next;
    }
    Err(HostError::Upstream(format!(
        "{target}: more than {MAX_REDIRECTS} redirects"
    )))
}

fn to_lua(lua: &Lua, a: Answer) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 3)?;
    t.raw_set("status", a.status)?;
    let h = lua.create_table_with_capacity(0, a.headers.len())?;
    for (k, v) in a.headers {
        h.raw_set(k, lua.create_string(&v)?)?;
    }
    t.raw_set("headers", h)?;
    t.raw_set("body", lua.create_string(&a.body)?)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_query_and_user_info() {
        let u = Url::parse("https://user:pw@api.example.com:8443/q/x?apikey=SECRET#frag").unwrap();
        assert_eq!(redact(&u), "https://api.example.com:8443/q/x");
        let u = Url::parse("http://example.com/?k=SECRET").unwrap();
        assert_eq!(redact(&u), "http://example.com/");
    }

    #[test]
    fn matches_allow_list_entries() {
        let allow = vec![
            "query1.finance.yahoo.com".to_owned(),
            "*.stooq.com".to_owned(),
            "127.0.0.1:9000".to_owned(),
        ];
        assert!(host_allowed(&allow, "Query1.Finance.Yahoo.com", Some(443)));
        assert!(host_allowed(&allow, "www.stooq.com", Some(443)));
        assert!(!host_allowed(&allow, "stooq.com.evil.net", Some(443)));
        assert!(!host_allowed(&allow, "query2.finance.yahoo.com", Some(443)));
        assert!(host_allowed(&allow, "127.0.0.1", Some(9000)));
        assert!(!host_allowed(&allow, "127.0.0.1", Some(9001)));
        assert!(!host_allowed(&[], "example.com", Some(80)));
    }

    /// With a client that hands redirects back (`Policy::none()`), every hop
    /// is checked against `allow_hosts` before it is contacted.
    #[tokio::test]
    async fn follows_redirects_checking_each_hop() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use arc_swap::ArcSwap;
        use axum::response::IntoResponse;

        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&hits);
        let app = axum::Router::new()
            .route(
                "/a",
                axum::routing::get(|| async { axum::response::Redirect::temporary("/b") }),
            )
            .route(
                "/away",
                axum::routing::get(move || async move {
                    axum::response::Redirect::temporary(&format!("http://localhost:{port}/b"))
                }),
            )
            .route(
                "/post",
                axum::routing::post(|| async { axum::response::Redirect::to("/b") }),
            )
            .route(
                "/b",
                axum::routing::any(move |m: axum::http::Method| {
                    let h = Arc::clone(&h);
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        format!("reached with {m}").into_response()
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let overrides = crate::config::PluginOverrides {
            allow_hosts: Some(vec!["127.0.0.1".into()]),
            ..Default::default()
        };
        let settings = crate::plugin::settings::Settings::effective(
            &crate::plugin::manifest::Manifest::default(),
            &overrides,
            Duration::from_secs(60),
        );
        let ctx = HostCtx {
            plugin: "t".into(),
            settings: Arc::new(ArcSwap::from_pointee(settings)),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        };
        let call = |method: Method, path: &str| Call {
            method,
            url: Url::parse(&format!("http://127.0.0.1:{port}{path}")).unwrap(),
            headers: HeaderMap::new(),
            body: Some(b"x".to_vec()),
            timeout: Duration::from_secs(5),
        };

        let a = perform(&ctx, call(Method::GET, "/a")).await.unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"reached with GET"[..]));
        let p = perform(&ctx, call(Method::POST, "/post")).await.unwrap();
        assert_eq!(p.body, b"reached with GET", "303 turns a POST into a GET");
        assert_eq!(hits.load(Ordering::SeqCst), 2);

        match perform(&ctx, call(Method::GET, "/away")).await {
            Err(HostError::Limit(m)) => assert!(m.contains("\"localhost\""), "{m}"),
            other => panic!("expected a Limit error, got {:?}", other.map(|a| a.status)),
        }
        assert_eq!(hits.load(Ordering::SeqCst), 2, "the denied hop was never contacted");
    }
}
