//! Prometheus metrics: request counts and latencies by route and status, pool usage, and
//! the audit ledger's health: its logs, their entries, the entries not yet under a signed
//! checkpoint and how long the stalest log has waited for one, write failures, and the
//! group-commit queue. Ledger figures are totals over the logs, never one tenant's: any
//! tenant's admin may read the metrics, and must not learn another tenant's name or size.

use prometheus::{Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

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
    ledger_logs: IntGauge,
    ledger_entries: IntGauge,
    ledger_unsigned: IntGauge,
    ledger_checkpoint_lag: Gauge,
    ledger_write_failures: IntCounter,
    ledger_queue_depth: IntGauge,
    retention_runs: IntGauge,
    retention_runs_finished: IntGauge,
    retention_purged: IntGauge,
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
        let ledger_logs = IntGauge::new("ledger_logs", "Audit-ledger logs (tenants, the platform log, a legacy log)")?;
        let ledger_entries = IntGauge::new("ledger_entries", "Entries in all audit-ledger logs")?;
        let ledger_unsigned = IntGauge::new("ledger_unsigned_entries", "Audit-ledger entries beyond their log's latest signed checkpoint")?;
        let ledger_checkpoint_lag = Gauge::new(
            "ledger_checkpoint_lag_seconds",
            "Among logs with unsigned entries, the most seconds since one's latest checkpoint (0 when all are signed)",
        )?;
        let ledger_write_failures = IntCounter::new(
            "ledger_write_failures_total",
            "Audit-ledger writes that failed in this process (each failed its request closed)",
        )?;
        let ledger_queue_depth = IntGauge::new("ledger_group_commit_queue_depth", "Requests waiting for the audit ledger's shared commit")?;
        registry.register(Box::new(ledger_logs.clone()))?;
        registry.register(Box::new(ledger_entries.clone()))?;
        registry.register(Box::new(ledger_unsigned.clone()))?;
        registry.register(Box::new(ledger_checkpoint_lag.clone()))?;
        registry.register(Box::new(ledger_write_failures.clone()))?;
        registry.register(Box::new(ledger_queue_depth.clone()))?;
        let retention_runs = IntGauge::new("retention_runs", "Retention runs started (by any server or the command line)")?;
        let retention_runs_finished = IntGauge::new("retention_runs_finished", "Retention runs that finished")?;
        let retention_purged = IntGauge::new("retention_patients_purged", "Patients purged by retention (destruction records)")?;
        registry.register(Box::new(retention_runs.clone()))?;
        registry.register(Box::new(retention_runs_finished.clone()))?;
        registry.register(Box::new(retention_purged.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            pool_connections,
            pool_idle,
            pool_max,
            sync_connections,
            unreadable_records,
            ledger_logs,
            ledger_entries,
            ledger_unsigned,
            ledger_checkpoint_lag,
            ledger_write_failures,
            ledger_queue_depth,
            retention_runs,
            retention_runs_finished,
            retention_purged,
        })
    }

    /// Sets the ledger figures from `health`, totalled over the logs.
    pub fn set_ledger(&self, health: &crate::service::LedgerHealth) {
        self.ledger_logs.set(i64::try_from(health.logs.len()).unwrap_or(i64::MAX));
        self.ledger_entries.set(health.logs.iter().map(|l| l.entries).sum());
        self.ledger_unsigned.set(health.logs.iter().map(|l| l.unsigned).sum());
        let lag = health.logs.iter().filter(|l| l.unsigned > 0).map(|l| l.waiting_seconds).fold(0.0, f64::max);
        self.ledger_checkpoint_lag.set(lag);
        // The process's count is the truth; the counter catches up with it.
        let seen = self.ledger_write_failures.get();
        self.ledger_write_failures.inc_by(health.write_failures.saturating_sub(seen));
        self.ledger_queue_depth.set(health.queue_depth);
    }

    /// Sets the retention figures (totals over every tenant, like the ledger's).
    pub fn set_retention(&self, totals: &crate::service::retention::RetentionTotals) {
        self.retention_runs.set(totals.runs);
        self.retention_runs_finished.set(totals.finished);
        self.retention_purged.set(totals.purged);
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
