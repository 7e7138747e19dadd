//! Who may use the server, and how much: the `Host` header (against DNS rebinding), CORS for the
//! listed origins, API keys (`Authorization: Bearer KEY`), requests in progress per key,
//! `Content-Type`, and the size and read time of request bodies. [`guard`] is one axum middleware
//! that runs these checks in that order before a request reaches a handler; every refusal is an
//! OpenAI-shaped error ([`ApiError`]), and every 429 and 503 carries `Retry-After`.
//!
//! References: RFC 6750 (Bearer tokens; `WWW-Authenticate` on a 401), the Fetch standard's CORS
//! protocol (preflight `OPTIONS`), and the DNS-rebinding defences of Jupyter and Vite (a Host
//! allowlist; an IP literal cannot be rebound, because rebinding needs a name the attacker owns).
use crate::api::ApiError;
use crate::ServeOptions;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::StreamExt;

/// An API key. Its `Debug` does not show it, so that printing the options cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

/// The keys given directly and those read from the key files (one a line; blank lines and lines
/// starting with `#` are skipped), each checked to be a token a Bearer header can carry.
pub fn load_keys(opts: &ServeOptions) -> Result<Vec<ApiKey>, String> {
    let mut keys = Vec::new();
    for (i, key) in opts.api_keys.iter().enumerate() {
        check_key(&key.0).map_err(|why| format!("API key {} {why}", i + 1))?;
        keys.push(key.clone());
    }
    for path in &opts.api_key_files {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the API key file {shown}: {e}"))?;
        let before = keys.len();
        for (n, line) in text.lines().enumerate() {
            let key = line.trim();
            if key.is_empty() || key.starts_with('#') {
                continue;
            }
            check_key(key).map_err(|why| format!("the key on line {} of {shown} {why}", n + 1))?;
            keys.push(ApiKey::new(key));
        }
        if keys.len() == before {
            return Err(format!(
                "the API key file {shown} holds no keys (one a line; blank lines and # comments are skipped)"
            ));
        }
    }
    Ok(keys)
}

fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("is empty");
    }
    // RFC 6750's token characters are a subset of these; anything else cannot travel in a header.
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("holds a space or a character outside printable ASCII");
    }
    Ok(())
}

/// Refuses access settings the server cannot honour or that would leave it open by accident.
pub fn validate(opts: &ServeOptions, keys: &[ApiKey]) -> Result<(), String> {
    if keys.is_empty() && bound(&opts.host) != Bound::Loopback && !opts.allow_unauthenticated {
        return Err(format!(
            "refusing to serve on {} without an API key: anyone who can reach that address could use \
             the model. Give a key (--api-key, --api-key-file or SCRATCHLLM_API_KEY), or pass \
             --allow-unauthenticated if every client on that network may use it",
            opts.host
        ));
    }
    for o in &opts.cors_origins {
        if !is_origin(o) {
            return Err(format!(
                "the CORS origin {o:?} must be * or scheme://host[:port] with scheme http or https and no path, e.g. https://app.example.com"
            ));
        }
    }
    for h in &opts.allowed_hosts {
        if host_name(h).is_none() {
            return Err(format!(
                "the allowed host {h:?} must be a host name or an IP address (a port is ignored)"
            ));
        }
    }
    let day = Duration::from_secs(86_400);
    if opts.request_timeout.is_zero() || opts.request_timeout > day {
        return Err(format!(
            "the request timeout {:?} must be from 1 s to a day",
            opts.request_timeout
        ));
    }
    if opts.shutdown_grace > day {
        return Err(format!(
            "the shutdown grace {:?} must be at most a day",
            opts.shutdown_grace
        ));
    }
    for (name, n) in [
        ("max_connections", opts.max_connections),
        ("max_concurrent_per_key", opts.max_concurrent_per_key),
    ] {
        // Semaphores hold at most usize::MAX >> 3 permits; and waiting on all connections at
        // shutdown takes their count as a u32.
        if !(1..=1 << 20).contains(&n) {
            return Err(format!("{name} is {n}; it must be from 1 to 1048576"));
        }
    }
    Ok(())
}

fn is_origin(o: &str) -> bool {
    if o == "*" {
        return true;
    }
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https") && !rest.contains('/') && host_name(rest).is_some()
}

/// What kind of address the server listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Loopback,
    /// 0.0.0.0 or `::`: every interface.
    Unspecified,
    /// One other address, or a name.
    Other,
}

/// `--host` as given (`[::1]` and `::1` alike).
pub fn bound(host: &str) -> Bound {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Bound::Loopback,
        Ok(ip) if ip.is_unspecified() => Bound::Unspecified,
        _ if host.eq_ignore_ascii_case("localhost") => Bound::Loopback,
        _ => Bound::Other,
    }
}

/// The name in a `Host` header value or an `--allowed-host`: lowercase, without the port and an
/// IPv6 address's brackets; `None` when it is not a host name, an IPv4 or a bracketed IPv6.
pub fn host_name(value: &str) -> Option<String> {
    let (name, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            inside.parse::<Ipv6Addr>().ok()?;
            (inside, after)
        }
        None => value.find(':').map_or((value, ""), |i| value.split_at(i)),
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'));
    (port_ok && name_ok).then(|| name.to_ascii_lowercase())
}

/// The Host names a request may carry.
#[derive(Debug)]
struct Hosts {
    /// Any name: a non-loopback server with keys (a browser on a rebound name has no key).
    any: bool,
    /// Any IP literal: a server on every interface, reached by the address of any of them.
    ip_literals: bool,
    names: Vec<String>,
}

impl Hosts {
    fn new(opts: &ServeOptions, keyed: bool) -> Hosts {
        let mut names: Vec<String> = opts
            .allowed_hosts
            .iter()
            .filter_map(|h| host_name(h))
            .collect();
        let host = opts.host.trim_start_matches('[').trim_end_matches(']');
        names.push(host.to_ascii_lowercase());
        let kind = bound(&opts.host);
        if kind != Bound::Other {
            names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
        }
        Hosts {
            any: keyed && kind != Bound::Loopback,
            ip_literals: kind == Bound::Unspecified,
            names,
        }
    }

    fn allows(&self, name: &str) -> bool {
        self.any
            || self.names.iter().any(|n| n == name)
            || (self.ip_literals && name.parse::<IpAddr>().is_ok())
    }
}

/// The checks' settings, shared by every request.
pub struct Guard {
    keys: Vec<ApiKey>,
    /// Requests in progress, one semaphore per key (by index in `keys`).
    in_progress: Vec<Arc<Semaphore>>,
    per_key: usize,
    hosts: Hosts,
    host: String,
    cors: Vec<String>,
    max_body: usize,
    timeout: Duration,
}

impl Guard {
    pub fn new(opts: &ServeOptions, keys: Vec<ApiKey>) -> Guard {
        Guard {
            in_progress: keys
                .iter()
                .map(|_| Arc::new(Semaphore::new(opts.max_concurrent_per_key)))
                .collect(),
            hosts: Hosts::new(opts, !keys.is_empty()),
            keys,
            per_key: opts.max_concurrent_per_key,
            host: opts.host.clone(),
            cors: opts.cors_origins.clone(),
            max_body: opts.max_body_bytes,
            timeout: opts.request_timeout,
        }
    }
}

/// The middleware: checks a request, passes it on, and adds the CORS and `Retry-After` headers to
/// whatever comes back.
pub async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let v1 = is_v1(req.uri().path());
    let origin = v1.then(|| g.allowed_origin(req.headers())).flatten();
    let mut response = g.admit(req, next).await.unwrap_or_else(refusal);
    let status = response.status();
    let headers = response.headers_mut();
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    // Queue full, model loading, too many requests: all pass, so say when to come back.
    let busy = [
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::TOO_MANY_REQUESTS,
    ];
    if busy.contains(&status) && !headers.contains_key(header::RETRY_AFTER) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn is_v1(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

impl Guard {
    async fn admit(&self, req: Request, next: Next) -> Result<Response, ApiError> {
        self.check_host(req.headers())?;
        let v1 = is_v1(req.uri().path());
        if v1 && is_preflight(&req) {
            return Ok(self.preflight(req.headers()));
        }
        let permit = if v1 {
            self.authorize(req.headers())?
        } else {
            None
        };
        if v1 && req.method() == Method::POST {
            check_content_type(req.headers())?;
        }
        let req = self.read_body(req).await?;
        let response = next.run(req).await;
        // The permit is held until the body is sent: a stream counts until its `[DONE]`.
        Ok(match permit {
            Some(permit) => response.map(|body| {
                Body::new(Held {
                    body,
                    _permit: permit,
                })
            }),
            None => response,
        })
    }

    fn check_host(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        // HTTP/1.0 clients may send no Host; a browser always does, so no rebinding comes this way.
        let Some(value) = headers.get(header::HOST) else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(value.as_bytes());
        if host_name(&text).is_some_and(|name| self.hosts.allows(&name)) {
            return Ok(());
        }
        Err(ApiError::status(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                "host_not_allowed",
                format!(
                    "the Host {:?} is not a name this server answers to (it listens on {}); if the name is yours, start the server with --allowed-host NAME",
                    clip(&text),
                    self.host
                ),
            ))
    }

    /// The request's `Origin` when it is one of `--cors-origin`.
    fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let value = headers.get(header::ORIGIN)?;
        let origin = value.to_str().ok()?;
        self.cors
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
            .then(|| value.clone())
    }

    /// Answers a CORS preflight (before the key check: browsers send no credentials with one).
    fn preflight(&self, headers: &HeaderMap) -> Response {
        if self.allowed_origin(headers).is_none() {
            let origin = headers.get(header::ORIGIN).map_or(String::new(), |o| {
                clip(&String::from_utf8_lossy(o.as_bytes()))
            });
            return refusal(ApiError::status(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                "cors_origin_not_allowed",
                format!("cross-origin requests from {origin:?} are not allowed; start the server with --cors-origin {origin}"),
            ));
        }
        let asked = headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or(HeaderValue::from_static("authorization, content-type"));
        (
            StatusCode::NO_CONTENT,
            [
                (
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET, POST, OPTIONS"),
                ),
                (header::ACCESS_CONTROL_ALLOW_HEADERS, asked),
                (
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static("600"),
                ),
            ],
        )
            .into_response()
    }

    /// Checks the Bearer key, when the server has keys, and takes one of its request slots.
    fn authorize(&self, headers: &HeaderMap) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let unauthorized = |message: &str| {
            ApiError::status(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                message,
            )
        };
        let token = bearer(headers).map_err(unauthorized)?;
        let Some(i) = self.key_index(token.as_bytes()) else {
            return Err(unauthorized(
                "Incorrect API key provided. Use one of the keys the server was started with (--api-key, --api-key-file or SCRATCHLLM_API_KEY).",
            ));
        };
        match self.in_progress[i].clone().try_acquire_owned() {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => Err(ApiError::status(
                    StatusCode::TOO_MANY_REQUESTS,
                    "requests",
                    "rate_limit_exceeded",
                    format!(
                        "this API key already has {} requests in progress (--max-concurrent-per-key); retry when one has finished",
                        self.per_key
                    ),
                )),
        }
    }

    /// The index of the key equal to `token`. Every key is compared in full, whatever matches, and
    /// each comparison runs to the key's end: the time taken tells nothing about how much of a key
    /// a guess got right.
    fn key_index(&self, token: &[u8]) -> Option<usize> {
        let mut found = 0usize; // the index + 1; 0: none
        for (i, key) in self.keys.iter().enumerate() {
            let mask = usize::from(same(token, key.0.as_bytes())).wrapping_neg();
            found = (found & !mask) | ((i + 1) & mask);
        }
        found.checked_sub(1)
    }

    /// Reads the whole body within the request timeout and the size limit; a declared length
    /// beyond the limit is refused before any of it is read.
    async fn read_body(&self, req: Request) -> Result<Request, ApiError> {
        let too_large = || {
            ApiError::status(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "request_too_large",
                    format!(
                        "the request body is larger than this server's limit of {} bytes (--max-body-bytes)",
                        self.max_body
                    ),
                )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(too_large());
        }
        let (parts, body) = req.into_parts();
        let mut chunks = body.into_data_stream();
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
        let read = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                if bytes.len() + chunk.len() > self.max_body {
                    return Ok(false);
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok::<_, axum::Error>(true)
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(true)) => Ok(Request::from_parts(parts, Body::from(bytes))),
            Ok(Ok(false)) => Err(too_large()),
            Ok(Err(e)) => Err(ApiError::request(format!(
                "reading the request body failed: {e}"
            ))),
            Err(_) => Err(ApiError::status(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "request_timeout",
                format!(
                    "the request body did not arrive within {} s (--request-timeout)",
                    self.timeout.as_secs_f64()
                ),
            )),
        }
    }
}

/// Compares a token with a key without stopping at the first difference.
fn same(token: &[u8], key: &[u8]) -> bool {
    let mut diff = u8::from(token.len() != key.len());
    for (i, k) in key.iter().enumerate() {
        // black_box: keep the compiler from turning the loop back into an early exit.
        diff = std::hint::black_box(diff | (k ^ token.get(i).copied().unwrap_or(0)));
    }
    diff == 0
}

/// The token of `Authorization: Bearer TOKEN` (the scheme in any case), or why there is none.
fn bearer(headers: &HeaderMap) -> Result<&str, &'static str> {
    let value = headers.get(header::AUTHORIZATION).ok_or(
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    )?;
    let malformed =
        "The Authorization header is malformed: it must be `Bearer YOUR_KEY`, in ASCII.";
    let value = value.to_str().map_err(|_| malformed)?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(malformed),
    }
}

fn is_preflight(req: &Request) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// `/v1` POSTs carry JSON: `application/json`, with or without parameters (`; charset=utf-8`).
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let essence = given
        .as_deref()
        .map(|t| t.split(';').next().unwrap_or("").trim());
    if essence.is_some_and(|t| t.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    let what = match &given {
        Some(t) => format!("the Content-Type is {:?}", clip(t)),
        None => "the request has no Content-Type".to_string(),
    };
    Err(ApiError::status(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request_error",
        "unsupported_media_type",
        format!("{what}; send the body as JSON with Content-Type: application/json"),
    ))
}

/// A request-supplied text, cut short enough for an error message.
fn clip(text: &str) -> String {
    text.chars().take(100).collect()
}

/// A refusal as a response, with the headers its status calls for.
fn refusal(e: ApiError) -> Response {
    let status = e.status;
    let mut response = e.into_response();
    let headers = response.headers_mut();
    match status {
        StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // The body was not read to its end: the connection cannot carry another request.
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT | StatusCode::BAD_REQUEST => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    response
}

/// A response body that holds a key's request slot until it is sent or dropped.
struct Held {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(host: &str, allowed: &[&str]) -> ServeOptions {
        ServeOptions {
            host: host.into(),
            allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
            ..ServeOptions::new("m".into())
        }
    }

    #[test]
    fn host_names_drop_the_port_and_brackets() {
        assert_eq!(host_name("LocalHost:8080").as_deref(), Some("localhost"));
        assert_eq!(host_name("[::1]:80").as_deref(), Some("::1"));
        assert_eq!(host_name("[::1]").as_deref(), Some("::1"));
        assert_eq!(host_name("127.0.0.1").as_deref(), Some("127.0.0.1"));
        for bad in [
            "", ":80", "a:b", "a:123456", "[::1", "[nope]:1", "a b", "a/b", "é",
        ] {
            assert_eq!(host_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn loopback_answers_only_local_names_and_allowed_ones() {
        let h = Hosts::new(&opts("127.0.0.1", &["box.lan"]), true);
        for ok in ["localhost", "127.0.0.1", "::1", "box.lan"] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "localhost.evil.example",
            "10.0.0.1",
            "127.0.0.2",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
    }

    #[test]
    fn every_interface_answers_ip_literals_and_with_a_key_any_name() {
        let open = Hosts::new(&opts("0.0.0.0", &[]), false);
        assert!(open.allows("192.168.1.5") && open.allows("::1") && open.allows("localhost"));
        assert!(!open.allows("evil.example"));
        let keyed = Hosts::new(&opts("0.0.0.0", &[]), true);
        assert!(keyed.allows("evil.example"));
        let one = Hosts::new(&opts("10.0.0.7", &["api.lan"]), false);
        assert!(one.allows("10.0.0.7") && one.allows("api.lan"));
        assert!(!one.allows("10.0.0.8") && !one.allows("localhost"));
    }

    #[test]
    fn keys_match_in_full_and_only_in_full() {
        let g = Guard::new(
            &opts("127.0.0.1", &[]),
            vec![ApiKey::new("sk-first"), ApiKey::new("sk-second")],
        );
        assert_eq!(g.key_index(b"sk-first"), Some(0));
        assert_eq!(g.key_index(b"sk-second"), Some(1));
        for bad in [
            &b""[..],
            b"sk-firs",
            b"sk-firstt",
            b"sk-firsT",
            b"sk-second\0",
        ] {
            assert_eq!(g.key_index(bad), None, "{bad:?}");
        }
        assert_eq!(format!("{:?}", ApiKey::new("sk-first")), "ApiKey(..)");
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        for ok in ["*", "http://localhost:3000", "https://app.example.com"] {
            assert!(is_origin(ok), "{ok}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "ftp://x",
            "https://",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}
