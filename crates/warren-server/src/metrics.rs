//! Prometheus metrics.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The service's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route, method and status.
    pub requests: IntCounterVec,
    /// HTTP request durations by route.
    pub request_seconds: HistogramVec,
    /// Sandbox creations by outcome.
    pub creates: IntCounterVec,
    /// Sandbox creation durations.
    pub create_seconds: HistogramVec,
    /// Sandboxes by state (refreshed on scrape).
    pub sandboxes: IntGaugeVec,
    /// Lifecycle events by kind.
    pub events: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("warren".into()), None).expect("valid prefix");
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request duration by route",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 120.0,
            ]),
            &["route"],
        )
        .expect("metric");
        let creates = IntCounterVec::new(
            Opts::new("sandbox_creates_total", "Sandbox creations by outcome"),
            &["outcome"],
        )
        .expect("metric");
        let create_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sandbox_create_duration_seconds",
                "Time from request to a ready sandbox",
            )
            .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            &["template"],
        )
        .expect("metric");
        let sandboxes = IntGaugeVec::new(Opts::new("sandboxes", "Sandboxes by state"), &["state"])
            .expect("metric");
        let events = IntCounterVec::new(
            Opts::new("events_total", "Lifecycle events by kind"),
            &["kind"],
        )
        .expect("metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(creates.clone()),
            Box::new(create_seconds.clone()),
            Box::new(sandboxes.clone()),
            Box::new(events.clone()),
        ] {
            registry.register(collector).expect("register metric");
        }
        Self {
            registry,
            requests,
            request_seconds,
            creates,
            create_seconds,
            sandboxes,
            events,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
