//! Prometheus metrics: request counts and latencies by route and status, pool usage.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pool_connections: IntGauge,
    pool_idle: IntGauge,
    pool_max: IntGauge,
    /// Open WebSocket `/sync` connections.
    pub sync_connections: IntGauge,
    /// Stored records that failed to open (tampered or corrupt) when a search matched them.
    pub unreadable_records: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("carevault".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by method, route pattern and status"),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency by method and route pattern")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["method", "route"],
        )?;
        let pool_connections = IntGauge::new("db_pool_connections", "Open database connections")?;
        let pool_idle = IntGauge::new("db_pool_idle_connections", "Idle database connections")?;
        let pool_max = IntGauge::new("db_pool_max_connections", "Database pool size")?;
        let sync_connections = IntGauge::new("sync_connections", "Open WebSocket sync connections")?;
        registry.register(Box::new(sync_connections.clone()))?;
        let unreadable_records =
            IntCounter::new("unreadable_records_total", "Stored records that failed to open when a search matched them")?;
        registry.register(Box::new(unreadable_records.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(pool_connections.clone()))?;
        registry.register(Box::new(pool_idle.clone()))?;
        registry.register(Box::new(pool_max.clone()))?;
        Ok(Self { registry, requests, latency, pool_connections, pool_idle, pool_max, sync_connections, unreadable_records })
    }

    /// `route` is the matched pattern (`/fhir/{type}/{id}`), never the raw path.
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests.with_label_values(&[method, route, &status.to_string()]).inc();
        self.latency.with_label_values(&[method, route]).observe(seconds);
    }

    /// The text exposition, with the pool gauges set to `(open, idle, max)` connections.
    pub fn render(&self, (open, idle, max): (u32, u32, u32)) -> Result<String, prometheus::Error> {
        self.pool_connections.set(i64::from(open));
        self.pool_idle.set(i64::from(idle));
        self.pool_max.set(i64::from(max));
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
