//! A stand-in for a market-data source: an axum server on a free loopback
//! port, inside the test process, answering canned bodies and recording
//! every request it gets (method, path, query, headers, body).
//!
//! Routes match on the path (or a path prefix ending in `*`) and, optionally,
//! on query parameters; the most recently added matching route wins, so a
//! test can change an answer midway (a 429 first, data afterwards). Anything
//! unmatched is a 404 "no mock route". Each request's arrival time is kept,
//! so a test can check the rate the upstream itself saw.
//!
//! For assertions on events rather than on wall time, the mock also counts
//! the requests it is answering right now and the peak of that count, and a
//! [`Gate`] holds answers until the test opens it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Response, Uri};

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The raw query string (`""` when there was none).
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request arrived (before any canned delay).
    pub at: Instant,
}

impl Recorded {
    /// The decoded value of one query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

/// A canned answer.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
    /// Sent in 8 KiB chunks without a content-length.
    pub chunked: bool,
    /// Held until this gate opens.
    pub gate: Option<Gate>,
    /// `{call}` in the body becomes the 1-based number of this request
    /// among those the mock received for the same path.
    pub numbered: bool,
}

/// Holds the answers of the routes it is given to until [`Gate::open`].
#[derive(Debug, Clone)]
pub struct Gate {
    tx: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Gate {
    pub fn new() -> Self {
        Self {
            tx: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// Lets every held and later request through.
    pub fn open(&self) {
        self.tx.send_replace(true);
    }

    async fn passed(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Canned {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type: content_type.to_owned(),
            body: body.into(),
            delay: Duration::ZERO,
            headers: Vec::new(),
            chunked: false,
            gate: None,
            numbered: false,
        }
    }

    pub fn json(status: u16, body: &str) -> Self {
        Self::new(status, "application/json;charset=utf-8", body)
    }

    pub fn text(status: u16, body: &str) -> Self {
        Self::new(status, "text/plain;charset=utf-8", body)
    }

    /// `429 Too Many Requests` with `Retry-After: secs`, as rate-limited APIs answer.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::text(429, "Too Many Requests\r\n").header("retry-after", &retry_after_secs.to_string())
    }

    /// Waits this long before answering.
    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Streams the body in chunks (no content-length), as a large download would come.
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    /// Holds the answer until `gate` opens.
    pub fn gated(mut self, gate: &Gate) -> Self {
        self.gate = Some(gate.clone());
        self
    }

    /// Replaces `{call}` in the body with the request's number on its path.
    pub fn numbered(mut self) -> Self {
        self.numbered = true;
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

struct Route {
    path: String,
    params: Vec<(String, String)>,
    answer: Canned,
}

#[derive(Default)]
struct State {
    routes: Vec<Route>,
    requests: Vec<Recorded>,
    /// Requests received and not yet answered.
    in_flight: usize,
    /// The most requests ever in flight at once.
    peak: usize,
}

pub struct MockUpstream {
    pub base: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    /// Binds 127.0.0.1:0 and serves on the current tokio runtime.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = Arc::clone(&shared);
            async move { answer(&state, method, uri, headers, body).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock upstream");
        let addr = listener.local_addr().expect("mock address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base: format!("http://{addr}"),
            state,
            task,
        }
    }

    /// Answers `path` (any query) with `answer`.
    pub fn on(&self, path: &str, answer: Canned) {
        self.on_query(path, &[], answer);
    }

    /// Answers `path` when every `(name, value)` is among its query parameters.
    pub fn on_query(&self, path: &str, params: &[(&str, &str)], answer: Canned) {
        self.state.lock().unwrap().routes.push(Route {
            path: path.to_owned(),
            params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            answer,
        });
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Arrival times of every request whose path starts with `prefix`, oldest first.
    pub fn arrivals(&self, prefix: &str) -> Vec<Instant> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .map(|r| r.at)
            .collect()
    }

    /// Requests whose path is `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    pub fn count(&self, path: &str) -> usize {
        self.requests_to(path).len()
    }

    /// Requests received and not answered yet (held by a gate or a delay).
    pub fn in_flight(&self) -> usize {
        self.state.lock().unwrap().in_flight
    }

    /// The most requests the mock was answering at once so far.
    pub fn peak(&self) -> usize {
        self.state.lock().unwrap().peak
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(state: &Mutex<State>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let rec = Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
    };
    let canned = {
        let mut st = state.lock().unwrap();
        let found = st
            .routes
            .iter()
            .rev()
            .find(|r| {
                let path_ok = match r.path.strip_suffix('*') {
                    Some(prefix) => rec.path.starts_with(prefix),
                    None => r.path == rec.path,
                };
                path_ok
                    && r.params
                        .iter()
                        .all(|(k, v)| rec.param(k).as_deref() == Some(v.as_str()))
            })
            .map(|r| r.answer.clone());
        st.requests.push(rec.clone());
        st.in_flight += 1;
        st.peak = st.peak.max(st.in_flight);
        let call = st.requests.iter().filter(|r| r.path == rec.path).count();
        found.map(|c| (c, call))
    };
    // Counted out when this function returns or its connection goes away.
    struct InFlight<'a>(&'a Mutex<State>);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            let mut st = self.0.lock().unwrap_or_else(|e| e.into_inner());
            st.in_flight = st.in_flight.saturating_sub(1);
        }
    }
    let _counted = InFlight(state);
    let canned = canned.map(|(mut c, call)| {
        if c.numbered {
            let body = String::from_utf8_lossy(&c.body).replace("{call}", &call.to_string());
            c.body = body.into_bytes();
        }
        c
    });
    let canned = canned.unwrap_or_else(|| Canned::text(404, &format!("no mock route for {} {}", rec.method, rec.path)));
    if let Some(gate) = &canned.gate {
        gate.passed().await;
    }
    if !canned.delay.is_zero() {
        tokio::time::sleep(canned.delay).await;
    }
    let mut resp = Response::builder()
        .status(canned.status)
        .header("content-type", canned.content_type.as_str());
    for (k, v) in &canned.headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    let body = if canned.chunked {
        let chunks: Vec<Result<Bytes, std::io::Error>> = canned
            .body
            .chunks(8192)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Body::from_stream(futures::stream::iter(chunks))
    } else {
        Body::from(canned.body)
    };
    resp.body(body).expect("mock response")
}
