//! HTTP front of the simulator, on axum. Flex paths live under `/f5/api`; the control API under
//! `/_sim`. A simulated dropped connection unwinds the connection task (`resume_unwind` skips
//! the panic hook), so the client sees the socket close with no answer at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::model::{flex_error, Endpoint, Fault, FaultKind, Reply, SimConfig, SimState};

type Shared = Arc<Mutex<SimState>>;

fn lock(state: &Shared) -> MutexGuard<'_, SimState> {
    // A simulated drop unwinds; the state is never mid-update then, so poisoning is harmless.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running simulator on a background thread; it lives as long as the process.
pub struct Simulator {
    pub addr: SocketAddr,
}

impl Simulator {
    pub fn base_url(&self) -> String {
        format!("http://{}/f5/api", self.addr)
    }
}

/// Binds `bind` (port 0: a free one) and serves until the process ends.
pub fn spawn(bind: &str, token: &str) -> std::io::Result<Simulator> {
    let listener = std::net::TcpListener::bind(bind)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let state: Shared = Arc::new(Mutex::new(SimState::new(token)));
    std::thread::Builder::new().name("flex-sim".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let app = axum::Router::new().fallback(handle).with_state(state);
            axum::serve(listener, app).await.expect("simulator server");
        });
    })?;
    Ok(Simulator { addr })
}

/// Marker carried by the unwind that drops a connection.
struct DroppedConnection;

fn drop_connection() -> ! {
    std::panic::resume_unwind(Box::new(DroppedConnection))
}

fn render(reply: Reply) -> Response {
    match reply {
        Reply::Json(status, body) => (code(status), axum::Json(body)).into_response(),
        Reply::Empty(status) => code(status).into_response(),
        Reply::Html(status) => (
            code(status),
            [("content-type", "text/html")],
            "<!DOCTYPE html><html><head><title>403 Forbidden</title></head><body><h1>Forbidden</h1></body></html>",
        )
            .into_response(),
    }
}

fn code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn handle(State(state): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    if let Some(rest) = path.strip_prefix("/_sim") {
        return control(&state, &method, rest, &body);
    }
    let Some(api_path) = path.strip_prefix("/f5/api") else {
        let require = lock(&state).config.require_f5_prefix;
        return if require { render(Reply::Html(403)) } else { render(flex_error(404, "FLEX_5000")) };
    };
    let token_ok = {
        let s = lock(&state);
        headers.get("x-auth-token").and_then(|v| v.to_str().ok()) == Some(s.token.as_str())
    };
    if !token_ok {
        return render(flex_error(401, "Full authentication is required to access this resource"));
    }
    let segments: Vec<String> = api_path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let endpoint = match (&method, segs.as_slice()) {
        (&Method::POST, ["line-item", _, "add-resource", _]) => Endpoint::Add,
        (&Method::GET, ["line-item", _, "row-data"]) => Endpoint::List,
        (&Method::POST, ["line-item", _, "row-data"]) => Endpoint::Role,
        (&Method::DELETE, ["line-item", _]) => Endpoint::Delete,
        (&Method::DELETE, ["line-item"]) => Endpoint::BulkDelete,
        _ => Endpoint::Other,
    };
    let _in_flight = InFlight::enter(&state);
    let refused = {
        let mut s = lock(&state);
        if s.in_flight > s.config.max_concurrent {
            Some(flex_error(429, "Maximum number of concurrent API requests reached."))
        } else {
            s.charge(endpoint)
        }
    };
    if let Some(reply) = refused {
        return render(reply);
    }
    // Unknown paths still count against the customer's budget, as they would in Flex.
    if endpoint == Endpoint::Other {
        return render(flex_error(405, &format!("Request method '{method}' not supported")));
    }
    let fault = lock(&state).take_fault(endpoint);
    let query: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let apply = |state: &Shared| -> Reply { apply_call(&mut lock(state), endpoint, &segs, &query, &headers, &body) };
    match fault {
        None => render(apply(&state)),
        Some(FaultKind::Latency { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            render(apply(&state))
        }
        Some(FaultKind::Hang { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            drop_connection()
        }
        Some(FaultKind::DropAfterApply) => {
            let _ = apply(&state);
            drop_connection()
        }
        Some(FaultKind::Status { status, apply: applied }) => {
            if applied {
                let _ = apply(&state);
            }
            render(flex_error(status, "Simulated failure"))
        }
        Some(FaultKind::Garbage) => {
            let _ = apply(&state);
            (StatusCode::OK, [("content-type", "application/json")], "\u{1}\u{2}not json{{{").into_response()
        }
        Some(FaultKind::Html) => (
            StatusCode::OK,
            [("content-type", "text/html")],
            "<html><body><form id=\"login\">Flex5 login</form></body></html>",
        )
            .into_response(),
        Some(FaultKind::Oversized { bytes }) => oversized(bytes),
    }
}

/// Counts requests in flight for the concurrency limit, also when a simulated drop unwinds.
struct InFlight(Shared);

impl InFlight {
    fn enter(state: &Shared) -> InFlight {
        let mut s = lock(state);
        s.in_flight += 1;
        s.peak_in_flight = s.peak_in_flight.max(s.in_flight);
        drop(s);
        InFlight(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).in_flight -= 1;
    }
}

fn oversized(bytes: u64) -> Response {
    const CHUNK: usize = 64 * 1024;
    let chunks = bytes.div_ceil(CHUNK as u64);
    let stream = futures_util::stream::iter((0..chunks).map(|i| {
        let piece = if i == 0 { b'[' } else { b' ' };
        let mut chunk = vec![b' '; CHUNK];
        chunk[0] = piece;
        Ok::<_, std::io::Error>(Bytes::from(chunk))
    }));
    (StatusCode::OK, [("content-type", "application/json")], Body::from_stream(stream)).into_response()
}

fn apply_call(
    s: &mut SimState,
    endpoint: Endpoint,
    segs: &[&str],
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &Bytes,
) -> Reply {
    let is_form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form: Vec<(String, String)> =
        if is_form { serde_urlencoded::from_bytes(body).unwrap_or_default() } else { Vec::new() };
    match endpoint {
        Endpoint::Add => {
            let mut params: HashMap<String, String> = HashMap::new();
            let mode = s.config.add_params.clone();
            if mode != "form" {
                params.extend(query.iter().cloned());
            }
            if mode != "query" {
                params.extend(form.iter().cloned());
            }
            s.add_contact(segs[1], segs[3], &params)
        }
        Endpoint::List => {
            let codes: Vec<String> = query.iter().filter(|(k, _)| k == "codeList").map(|(_, v)| v.clone()).collect();
            let present = query.iter().any(|(k, _)| k == "codeList");
            s.list(segs[1], present.then_some(codes.as_slice()))
        }
        Endpoint::Role => match serde_json::from_slice::<Value>(body) {
            Ok(value) => s.set_cell(segs[1], &value),
            Err(_) => flex_error(400, "JSON parse error"),
        },
        Endpoint::Delete => s.delete_line(segs[1]),
        Endpoint::BulkDelete => s.bulk_delete(&form),
        Endpoint::Other => flex_error(404, "FLEX_5000"),
    }
}

#[derive(Deserialize)]
struct SeedBody {
    /// Element id to resource ids, added as a person would in the Flex UI.
    elements: HashMap<String, Vec<String>>,
}

fn control(state: &Shared, method: &Method, path: &str, body: &Bytes) -> Response {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let json_body = || serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let bad = |e: String| (StatusCode::BAD_REQUEST, axum::Json(json!({"error": e}))).into_response();
    let mut s = lock(state);
    match (method, segs.as_slice()) {
        (&Method::GET, ["state"]) => axum::Json(s.snapshot()).into_response(),
        (&Method::GET, ["calls"]) => axum::Json(json!(s.calls)).into_response(),
        (&Method::POST, ["calls", "reset"]) => {
            s.calls.clear();
            s.peak_in_flight = 0;
            StatusCode::NO_CONTENT.into_response()
        }
        (&Method::POST, ["reset"]) => {
            s.reset();
            StatusCode::NO_CONTENT.into_response()
        }
        (&Method::POST, ["config"]) => match serde_json::from_value::<SimConfig>(json_body()) {
            Ok(config) => {
                s.config = config;
                axum::Json(json!(s.config)).into_response()
            }
            Err(e) => bad(e.to_string()),
        },
        (&Method::POST, ["faults"]) => match serde_json::from_value::<Vec<Fault>>(json_body()) {
            Ok(faults) => {
                s.faults = faults;
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => bad(e.to_string()),
        },
        (&Method::DELETE, ["faults"]) => {
            s.faults.clear();
            StatusCode::NO_CONTENT.into_response()
        }
        (&Method::POST, ["seed"]) => match serde_json::from_value::<SeedBody>(json_body()) {
            Ok(seed) => {
                let mut made = serde_json::Map::new();
                for (element, resources) in seed.elements {
                    let ids: Vec<String> = resources.iter().map(|r| s.add_by_hand(&element, r)).collect();
                    made.insert(element, json!(ids));
                }
                axum::Json(Value::Object(made)).into_response()
            }
            Err(e) => bad(e.to_string()),
        },
        (&Method::DELETE, ["lines", line]) => {
            if s.remove_line(line) {
                StatusCode::NO_CONTENT.into_response()
            } else {
                StatusCode::NOT_FOUND.into_response()
            }
        }
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"error": "unknown control path"}))).into_response(),
    }
}
