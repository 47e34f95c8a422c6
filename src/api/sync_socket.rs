//! The WebSocket change feed `GET /sync` (SPEC §6). Each connection reads the change log
//! from its own cursor, one bounded batch at a time, and only when the previous batch has
//! been handed to the socket: a slow client simply falls behind on its cursor, so server
//! memory per connection stays bounded whatever the write rate. Commits wake the readers
//! ([`crate::service::sync::change_signal::ChangeSignal`]); the readers of a tenant woken
//! together are served together, in rounds ([`crate::service::Services::next_changes`]).
//! Silent and stalled connections are closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError, Session};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::Instrument;

use crate::api::json::JsonError;
use crate::api::{ApiError, AppState, blocking};
use crate::fhir::IssueCode;
use crate::service::Caller;
use crate::service::sync::FeedFilter;

/// Changes read per batch.
const BATCH: i64 = 200;

/// Open connections per principal, capped so one token cannot hold an unbounded number
/// of sockets. A [`Slot`] is held for a connection's lifetime and frees its place on drop.
/// [`Self::close_all`] closes every connection, open or opening, at shutdown.
#[derive(Debug)]
pub struct SocketSlots {
    open: Mutex<HashMap<(String, String), usize>>,
    closing: watch::Sender<bool>,
}

impl Default for SocketSlots {
    fn default() -> Self {
        Self { open: Mutex::default(), closing: watch::channel(false).0 }
    }
}

/// One connection's place in [`SocketSlots`].
struct Slot {
    state: Arc<AppState>,
    key: (String, String),
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.state.sockets.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl SocketSlots {
    /// Takes a place for `(tenant, sub)`, or `None` when it already holds `max`.
    fn take(state: &Arc<AppState>, tenant: &str, sub: &str) -> Option<Slot> {
        let key = (tenant.to_owned(), sub.to_owned());
        let mut open = state.sockets.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= state.sync.max_connections {
            return None;
        }
        *n += 1;
        Some(Slot { state: state.clone(), key })
    }

    /// Closes every connection with `1001 Going Away` (the server is stopping), and each
    /// one opened after this at once: clients reconnect elsewhere or later and resume from
    /// their cursors.
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }
}

/// Connection timing of the WebSocket feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncTiming {
    /// Server ping interval.
    pub heartbeat: Duration,
    /// Silence after which a connection is reaped.
    pub idle_timeout: Duration,
    /// How long a message may stay untaken before the client counts as stalled.
    pub send_timeout: Duration,
    /// Most connections one principal (tenant and subject) may hold open at once.
    pub max_connections: usize,
}

#[utoipa::path(get, path = "/sync", tag = "sync",
    params(("access_token" = Option<String>, Query, description = "bearer token, for clients that cannot set Authorization on a WebSocket")),
    responses((status = 101, description = "WebSocket: subscribe / push / ping in, change / caught_up / push_result / pong / error out (SPEC §6)"),
        (status = 400, description = "Not a WebSocket upgrade request (OperationOutcome)"),
        (status = 401, description = "Missing or invalid token (OperationOutcome)"),
        (status = 429, description = "Too many requests, or the principal already holds its maximum of open connections (OperationOutcome)")))]
pub async fn socket(req: HttpRequest, body: web::Payload, state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let slot = SocketSlots::take(&state, caller.principal.tenant.as_str(), &caller.principal.sub).ok_or_else(|| {
        tracing::info!("sync connection refused: the principal holds its maximum of open connections");
        ApiError::RateLimited { retry_after_secs: state.sync.heartbeat.as_secs().max(1) }
    })?;
    let (response, session, stream) = actix_ws::handle(&req, body)
        .map_err(|_| ApiError::bad_request(IssueCode::NotSupported, "GET /sync is a WebSocket endpoint: send an Upgrade request"))?;
    let stream = stream.max_frame_size(state.body_limit).aggregate_continuations().max_continuation_size(state.body_limit);
    state.metrics.sync_connections.inc();
    // The connection outlives this handler: it keeps the request's span, so its lines carry
    // the request id of the upgrade.
    let connection = async move {
        let reason = Connection { state: state.clone(), caller, session, subscription: None }.run(stream).await;
        drop(slot);
        state.metrics.sync_connections.dec();
        tracing::info!(reason, "sync connection closed");
    };
    actix_web::rt::spawn(connection.instrument(tracing::Span::current()));
    Ok(response)
}

struct Subscription {
    cursor: i64,
    filter: FeedFilter,
    caught_up: bool,
    /// The log may hold changes after `cursor`.
    behind: bool,
}

struct Connection {
    state: Arc<AppState>,
    caller: Caller,
    session: Session,
    subscription: Option<Subscription>,
}

/// Why a connection ended, for the log.
type Ended = &'static str;

fn error(code: &str, message: &str) -> Value {
    json!({ "type": "error", "code": code, "message": message })
}

/// An `error` message for a failed use case, told as REST would tell it (the same
/// status and OperationOutcome text, from [`ApiError`]'s one mapping), with what to do.
fn failure(e: &ApiError, then: &str) -> Value {
    use actix_web::ResponseError;
    let status = e.status_code();
    let code = if status.is_server_error() { "unavailable" } else { "refused" };
    if status.is_server_error() {
        tracing::error!(error = %e, cause = ?std::error::Error::source(e).map(ToString::to_string), "sync request failed");
    }
    let told: Vec<String> = e.issues().into_iter().map(|i| i.diagnostics).collect();
    let mut out = error(code, &format!("{}; {then}", told.join("; ")));
    out["status"] = json!(status.as_u16());
    out
}

impl Connection {
    async fn run(mut self, mut stream: AggregatedMessageStream) -> Ended {
        let mut head = self.state.services.subscribe_changes(&self.caller.principal.tenant);
        let mut closing = self.state.sockets.closing.subscribe();
        // Server pings at this interval; any frame from the client is a sign of life.
        let timing = self.state.sync;
        let mut heartbeat = tokio::time::interval(timing.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        // The connection ends with the token it was opened with.
        let expires_in = self.caller.principal.expires_at.map_or(Duration::MAX, |exp| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
            Duration::from_secs(exp.saturating_sub(now))
        });
        let expiry = tokio::time::sleep(expires_in.min(Duration::from_secs(400 * 24 * 3600)));
        tokio::pin!(expiry);
        let ended = loop {
            let behind = self.subscription.as_ref().is_some_and(|s| s.behind);
            let subscribed = self.subscription.is_some();
            let step = tokio::select! {
                biased;
                // First, so that a busy connection cannot hold the server's stop.
                _ = closing.wait_for(|&stopping| stopping) => Err("server shutting down"),
                message = stream.recv() => {
                    heard = Instant::now();
                    match message {
                        Some(Ok(message)) => self.on_message(message).await,
                        Some(Err(e)) if too_big(&e) => Err("message too big"),
                        Some(Err(_)) => Err("protocol error"),
                        None => Err("client went away"),
                    }
                }
                () = &mut expiry => {
                    let _ = self.send(&error("token_expired", "the token has expired; reconnect with a new one and resume from your cursor")).await;
                    Err("token expired")
                }
                _ = heartbeat.tick() => {
                    if heard.elapsed() > timing.idle_timeout {
                        Err("idle")
                    } else {
                        self.session.ping(b"").await.map_err(|_| "client went away")
                    }
                }
                changed = head.changed(), if subscribed => {
                    if changed.is_err() {
                        Err("server shutting down")
                    } else {
                        let newest = *head.borrow_and_update();
                        if let Some(s) = self.subscription.as_mut().filter(|s| newest > s.cursor) {
                            s.behind = true;
                        }
                        Ok(())
                    }
                }
                () = std::future::ready(()), if behind => {
                    head.borrow_and_update();
                    let sent = self.deliver().await;
                    // A client taking what is sent is alive, even if its pongs wait in line.
                    heard = Instant::now();
                    sent
                }
            };
            if let Err(why) = step {
                break why;
            }
        };
        let code = match ended {
            "idle" | "stalled" | "token expired" => CloseCode::Policy,
            "feed unavailable" => CloseCode::Error,
            "message too big" => CloseCode::Size,
            "protocol error" => CloseCode::Protocol,
            "server shutting down" => CloseCode::Away,
            _ => CloseCode::Normal,
        };
        // A stalled client may never take the close frame; do not wait for it.
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.session.close(Some(CloseReason { code, description: Some(ended.into()) })))
                .await;
        ended
    }

    async fn send(&mut self, message: &Value) -> Result<(), Ended> {
        self.send_text(message.to_string()).await
    }

    async fn send_text(&mut self, message: String) -> Result<(), Ended> {
        // A client that leaves a message untaken this long is stalled; it is disconnected
        // and resumes from its cursor when it reconnects.
        match tokio::time::timeout(self.state.sync.send_timeout, self.session.text(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("client went away"),
            Err(_) => Err("stalled"),
        }
    }

    async fn on_message(&mut self, message: AggregatedMessage) -> Result<(), Ended> {
        // Messages count against the principal's request rate, as REST requests do; an
        // over-limit message is answered and dropped, and the connection stays.
        if matches!(message, AggregatedMessage::Text(_) | AggregatedMessage::Binary(_)) {
            let principal = &self.caller.principal;
            if let Err(retry_after) = self.state.limits.check_principal(principal.tenant.as_str(), &principal.sub) {
                let mut refused = error("rate_limited", "too many messages; wait retryAfter seconds and send it again");
                refused["retryAfter"] = json!(retry_after);
                return self.send(&refused).await;
            }
        }
        match message {
            AggregatedMessage::Text(text) => match crate::api::json::parse(text.as_bytes()) {
                Ok(value) => self.on_request(value).await,
                Err(JsonError::DuplicateKey) => self.send(&error("bad_message", "the message has a duplicate key")).await,
                Err(JsonError::Nul) => self.send(&error("bad_message", "the message contains a NUL character (U+0000)")).await,
                Err(JsonError::Syntax { .. }) => self.send(&error("bad_message", "messages must be JSON objects with a type")).await,
            },
            AggregatedMessage::Binary(_) => self.send(&error("bad_message", "only text messages are accepted")).await,
            AggregatedMessage::Ping(bytes) => self.session.pong(&bytes).await.map_err(|_| "client went away"),
            AggregatedMessage::Pong(_) => Ok(()),
            AggregatedMessage::Close(_) => Err("closed by client"),
        }
    }

    async fn on_request(&mut self, request: Value) -> Result<(), Ended> {
        match request.get("type").and_then(Value::as_str) {
            Some("ping") => self.send(&json!({ "type": "pong" })).await,
            Some("subscribe") => match subscription(&request) {
                Ok(s) => {
                    self.subscription = Some(s);
                    Ok(())
                }
                Err(why) => self.send(&error("bad_subscribe", why)).await,
            },
            Some("push") => {
                let mutations = match crate::api::sync::parse_push(request) {
                    Ok(m) => m,
                    Err(why) => return self.send(&error("bad_push", &why)).await,
                };
                let services = self.state.services.clone();
                let caller = self.caller.clone();
                match blocking(move || Ok(services.sync().push(&caller, mutations)?)).await {
                    Ok(results) => self.send(&crate::api::sync::push_result_json(&results)).await,
                    Err(e) => self.send(&failure(&e, "the push was not completed; send it again (mutationIds make that safe)")).await,
                }
            }
            _ => self.send(&error("bad_message", "type must be subscribe, push or ping")).await,
        }
    }

    /// Sends the next batch after the subscription's cursor, and `caught_up` the first
    /// time the backlog is exhausted. The batch is read in a round with the tenant's other
    /// subscribers reading at the same time ([`crate::service::sync`]'s fan-out).
    async fn deliver(&mut self) -> Result<(), Ended> {
        let Some(s) = self.subscription.as_ref() else { return Ok(()) };
        let (since, filter) = (s.cursor, s.filter.clone());
        let page = match self.state.services.next_changes(self.caller.clone(), since, BATCH, filter).await {
            Ok(page) => page,
            Err(e) => {
                self.send(&failure(&ApiError::from(e), "reconnect and resume from your cursor")).await?;
                return Err("feed unavailable");
            }
        };
        for change in &page.changes {
            self.send_text(crate::api::sync::change_text(change)).await?;
        }
        let Some(s) = self.subscription.as_mut() else { return Ok(()) };
        s.cursor = page.cursor;
        if page.at_head {
            s.behind = false;
            if !s.caught_up {
                s.caught_up = true;
                let cursor = s.cursor.to_string();
                self.send(&json!({ "type": "caught_up", "cursor": cursor })).await?;
            }
        }
        Ok(())
    }
}

/// A frame over `max_frame_size`, or fragments adding up to more than
/// `max_continuation_size` (which actix-ws reports as an I/O error with this text).
fn too_big(e: &ProtocolError) -> bool {
    match e {
        ProtocolError::Overflow => true,
        ProtocolError::Io(io) => io.to_string().contains("maximum continuation size"),
        _ => false,
    }
}

fn subscription(request: &Value) -> Result<Subscription, &'static str> {
    let since = match request.get("since") {
        None | Some(Value::Null) => 0,
        Some(Value::String(s)) => crate::api::sync::parse_cursor(Some(s))?,
        Some(Value::Number(n)) => n.as_i64().filter(|c| *c >= 0).ok_or("since must be a cursor from this server")?,
        Some(_) => return Err("since must be a cursor from this server"),
    };
    let patient = match request.get("patient") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(p.as_str()),
        Some(_) => return Err("patient must be a reference of the form Patient/ID"),
    };
    let types: Option<Vec<String>> = match request.get("types") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|t| t.as_str().map(str::to_owned).ok_or("types must be a list of resource type names"))
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err("types must be a list of resource type names"),
    };
    let filter = FeedFilter::parse(patient, types.as_deref())?;
    Ok(Subscription { cursor: since, filter, caught_up: false, behind: true })
}
