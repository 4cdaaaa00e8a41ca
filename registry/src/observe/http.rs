//! Each request, seen from outside the API: a tracing span around it, the
//! request metrics, and one access log line when the last byte of the
//! response has gone (or the client went away). Bodies are counted as they
//! stream, so a blob's bytes are known without buffering it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::header::CONTENT_LENGTH;
use axum::http::{Method, Request, Response, StatusCode};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::{self, LatencyLabels, Metrics, RequestLabels, Route, RouteLabels};

/// The target of the access log lines, to filter them on their own
/// (`RUST_LOG=info,berth_registry::access=off` silences them).
pub const ACCESS_TARGET: &str = "berth_registry::access";

pub struct Observer {
    /// `None` when metrics are off: requests then cost no metric update.
    metrics: Option<Arc<Metrics>>,
    metrics_path: String,
}

impl Observer {
    pub fn new(metrics: Option<Arc<Metrics>>, metrics_path: &str) -> Observer {
        Observer { metrics, metrics_path: metrics_path.to_owned() }
    }

    /// Starts the record of a request, and gives its body a byte count when
    /// the method carries one.
    pub fn begin<B>(&self, request: Request<B>, peer: SocketAddr) -> (Record, Request<Counted<B>>) {
        let route = classify(request.uri().path(), &self.metrics_path);
        let method = request.method().clone();
        let caller = crate::telemetry::caller(request.headers());
        let span = if !crate::telemetry::sampled(caller.as_ref()) {
            Span::none()
        } else {
            tracing::info_span!(
            "request",
            otel.name = %format_args!("{method} {}", route.as_str()),
            otel.kind = "server",
            http.request.method = %method,
            http.route = route.as_str(),
            repository = tracing::field::Empty,
            reference = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            )
        };
        if let Some(caller) = caller {
            // Fails only for a span that is not exported: it has no parent to set.
            let _ = span.set_parent(caller);
        }
        let received = matches!(method, Method::PUT | Method::POST | Method::PATCH).then(Arc::default);
        if let Some(m) = &self.metrics {
            m.in_flight.inc();
        }
        let record = Record {
            start: Instant::now(),
            route,
            path: logged(route).then(|| request.uri().path().to_owned()),
            method,
            peer,
            span,
            received: received.clone(),
            status: None,
            expected: None,
            sent: 0,
            complete: false,
            metrics: self.metrics.clone(),
        };
        (record, request.map(|inner| Counted { inner, received }))
    }
}

/// Whether a request to `route` gets a log line at the levels enabled now:
/// probes' and scrapes' at debug, the others' at info.
fn logged(route: Route) -> bool {
    match route {
        Route::health | Route::metrics => tracing::enabled!(target: ACCESS_TARGET, tracing::Level::DEBUG),
        _ => tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO),
    }
}

/// The API resource `path` names, told apart the way the API's router does
/// (from the right, since repository names may contain `blobs` or `manifests`).
pub fn classify(path: &str, metrics_path: &str) -> Route {
    let Some(rest) = path.strip_prefix("/v2") else {
        return match path {
            "/healthz" | "/readyz" => Route::health,
            p if p == metrics_path => Route::metrics,
            _ => Route::other,
        };
    };
    if rest.is_empty() || rest == "/" {
        return Route::base;
    }
    if rest == "/_catalog" {
        return Route::catalog;
    }
    let mut segments = rest.rsplit('/');
    let (last, second, third) = (segments.next(), segments.next(), segments.next());
    match (third, second, last) {
        (_, Some("tags"), Some("list")) => Route::tags,
        (Some("blobs"), Some("uploads"), _) | (_, Some("blobs"), Some("uploads")) => Route::upload,
        (_, Some("blobs"), _) => Route::blob,
        (_, Some("manifests"), _) => Route::manifest,
        (_, Some("referrers"), _) => Route::referrers,
        _ => Route::other,
    }
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::base => "base",
            Route::catalog => "catalog",
            Route::tags => "tags",
            Route::manifest => "manifest",
            Route::blob => "blob",
            Route::upload => "upload",
            Route::referrers => "referrers",
            Route::health => "health",
            Route::metrics => "metrics",
            Route::other => "other",
        }
    }
}

/// One request in flight. Dropped when its response body is done, or with
/// the handler when the client goes away first; either way it is counted and
/// logged once.
pub struct Record {
    start: Instant,
    route: Route,
    /// Kept only when its log line will be written.
    path: Option<String>,
    method: Method,
    peer: SocketAddr,
    span: Span,
    received: Option<Arc<AtomicU64>>,
    status: Option<StatusCode>,
    /// The body's length, when the response announces it.
    expected: Option<u64>,
    sent: u64,
    complete: bool,
    metrics: Option<Arc<Metrics>>,
}

impl Record {
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The response's head has been produced: its body now carries the record.
    pub fn respond(mut self, response: Response<Body>) -> Response<Body> {
        let status = response.status();
        self.span.record("http.response.status_code", status.as_u16());
        self.status = Some(status);
        let announced = response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        self.expected = announced.or_else(|| HttpBody::size_hint(response.body()).exact());
        response.map(|inner| Body::new(Observed { inner, record: self }))
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let received = self.received.as_ref().map_or(0, |r| r.load(Ordering::Relaxed));
        if let Some(m) = &self.metrics {
            m.in_flight.dec();
            let (route, method) = (self.route, metrics::Method::from(&self.method));
            if let Some(status) = self.status {
                let labels = RequestLabels { route, method, status: status.into() };
                m.requests.record(labels.index(), || labels.clone(), |c| c.inc());
            }
            let labels = LatencyLabels { route, method };
            m.duration.record(labels.index(), || labels.clone(), |h| h.observe(elapsed.as_secs_f64()));
            if received > 0 {
                m.received.record(route as usize, || RouteLabels { route }, |c| c.inc_by(received));
            }
            if self.sent > 0 {
                m.sent.record(route as usize, || RouteLabels { route }, |c| c.inc_by(self.sent));
            }
        }
        let duration_ms = (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        let status = self.status.map_or(0, |s| s.as_u16());
        let path = self.path.as_deref().unwrap_or_default();
        let (method, route, peer) = (&self.method, self.route.as_str(), &self.peer);
        // Probes and scrapes come every few seconds: their lines only at debug
        // (as `logged` decides).
        if matches!(self.route, Route::health | Route::metrics) {
            tracing::debug!(target: ACCESS_TARGET, %method, route, %path, status, bytes_out = self.sent, duration_ms, "request");
            return;
        }
        tracing::info!(
            target: ACCESS_TARGET,
            %method,
            route,
            %path,
            status,
            bytes_in = received,
            bytes_out = self.sent,
            duration_ms,
            complete = self.complete,
            client = %peer,
            "request"
        );
    }
}

/// A request body that counts the bytes it delivers.
pub struct Counted<B> {
    inner: B,
    received: Option<Arc<AtomicU64>>,
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(received)) = (&polled, &self.received)
            && let Some(data) = frame.data_ref()
        {
            received.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts what it sends and carries the [`Record`] to its end.
struct Observed {
    inner: Body,
    record: Record,
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.record.sent += data.len() as u64;
                }
                // hyper stops polling a body of known length at its last byte
                // (a stream's end it never asks for).
                let end = self.inner.is_end_stream();
                let record = &mut self.record;
                record.complete = end || record.expected == Some(record.sent);
            }
            Poll::Ready(None) => self.record.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    /// Runs before the record's own drop: an empty body (HEAD, 201) is never
    /// polled, yet complete.
    fn drop(&mut self) {
        self.record.complete |= self.inner.is_end_stream();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_the_routes_the_api_dispatches_to() {
        let cases = [
            ("/v2/", Route::base),
            ("/v2", Route::base),
            ("/v2/_catalog", Route::catalog),
            ("/v2/a/b/tags/list", Route::tags),
            ("/v2/a/manifests/latest", Route::manifest),
            ("/v2/manifests/blobs/manifests/x", Route::manifest),
            ("/v2/a/blobs/sha256:ab", Route::blob),
            ("/v2/blobs/uploads/blobs/sha256:ab", Route::blob),
            ("/v2/a/blobs/uploads/", Route::upload),
            ("/v2/a/blobs/uploads", Route::upload),
            ("/v2/a/blobs/uploads/0d7e0b3e-51a4-4b5c-9a36-4e2a2b4fb3a1", Route::upload),
            ("/v2/a/referrers/sha256:ab", Route::referrers),
            ("/v2/a/b", Route::other),
            ("/healthz", Route::health),
            ("/readyz", Route::health),
            ("/metrics", Route::metrics),
            ("/stats", Route::other),
            ("/", Route::other),
        ];
        for (path, route) in cases {
            assert_eq!(classify(path, "/metrics"), route, "{path}");
        }
        assert_eq!(classify("/stats", "/stats"), Route::metrics);
    }
}
