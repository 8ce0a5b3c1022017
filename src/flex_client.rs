//! The guarded outbound client. Every Flex request runs on a worker thread that never touches
//! Postgres; the backend thread waits on a channel and checks for interrupts between waits, so
//! `pg_cancel_backend` and `statement_timeout` stop a sync while a call hangs. Calls whose answers
//! nobody waits for any more (a cancel, a listing sent ahead and not used) finish the attempt in
//! progress (bounded by the request timeout), are not tried again, and no call of theirs starts.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use flex_sync_core::endpoints::{FlexCall, Method};
use flex_sync_core::flex_response::{is_budget_exhausted, parse_added_line_id};
use flex_sync_core::protocol::{Answer, ErrorCode, Failure, Outcome, Request};
use flex_sync_core::settings::{check_resolved, CheckedAnswers, DestinationRefused, FlexOrigin, Options};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// What the workers of one sync count and obey together: calls, the deadline, the budget flag.
struct SyncBudget {
    calls: AtomicU64,
    max_calls: u64,
    deadline: Instant,
    rate_limited: AtomicBool,
}

pub struct FlexClient {
    /// Time this backend spent waiting for Flex answers, for the summary's own-work figure.
    waited: std::cell::Cell<Duration>,
    /// Everything the worker threads need, shared with them.
    worker: Arc<Worker>,
}

impl FlexClient {
    /// `deadline` is when this sync must stop calling Flex.
    /// `rate_limited` starts the sync with Flex's hourly budget known to be spent.
    pub fn new(origin: FlexOrigin, token: String, options: Options, deadline: Instant, rate_limited: bool) -> FlexClient {
        let worker = Worker {
            agent: shared_agent(options.connect_timeout_ms, options.allow_insecure_loopback),
            origin,
            token,
            budget: SyncBudget {
                calls: AtomicU64::new(0),
                max_calls: options.max_calls_per_sync,
                deadline,
                rate_limited: AtomicBool::new(rate_limited),
            },
            options,
        };
        FlexClient { waited: std::cell::Cell::new(Duration::ZERO), worker: Arc::new(worker) }
    }

    pub fn options(&self) -> &Options {
        &self.worker.options
    }

    pub fn is_rate_limited(&self) -> bool {
        self.worker.budget.rate_limited.load(Ordering::SeqCst)
    }

    pub fn time_waited(&self) -> Duration {
        self.waited.get()
    }

    /// Requests sent so far in this sync, retries included.
    pub fn calls_made(&self) -> u64 {
        self.worker.budget.calls.load(Ordering::SeqCst)
    }

    /// Runs the requests with up to `max_parallel_requests` in flight; each answer carries its
    /// request's tag. `wait` runs on this thread between polls: it is where the caller checks for
    /// interrupts.
    pub fn send_all(&self, requests: Vec<Request>, wait: &dyn Fn()) -> Vec<Answer> {
        self.collect(self.start(requests), wait)
    }

    /// Hands the requests to the workers and returns at once: this thread may do other work (read
    /// the database) while Flex answers. Dropped without `collect`, the answers are discarded: a
    /// call already made counts, none starts or is tried again.
    pub fn start(&self, requests: Vec<Request>) -> InFlight {
        let total = requests.len();
        let tasks = requests
            .iter()
            .enumerate()
            .map(|(slot, r)| Task { slot, call: r.call.clone(), role_after_add: r.role_after_add.clone(), follow_up: false })
            .collect();
        let queue = Arc::new(WorkQueue {
            state: Mutex::new((tasks, total)),
            ready: Condvar::new(),
            unwanted: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel::<Message>();
        let workers = (self.worker.options.max_parallel_requests as usize).max(1).min(total);
        for _ in 0..workers {
            let worker = Arc::clone(&self.worker);
            let (queue, tx) = (Arc::clone(&queue), tx.clone());
            run_on_pool(Box::new(move || {
                while let Some(task) = queue.take() {
                    if queue.unwanted.load(Ordering::SeqCst) {
                        queue.abandon();
                        break;
                    }
                    let done = worker.serve(&task, &queue.unwanted);
                    // The answer goes out before its follow-up is queued, so it arrives first.
                    if tx.send(done.message).is_err() {
                        // The backend stopped waiting (a cancel): send nothing more.
                        queue.abandon();
                        break;
                    }
                    queue.finish(done.follow_up);
                }
            }));
        }
        InFlight { requests, answers: rx, queue }
    }

    /// Waits for every answer of `in_flight`, running `wait` between polls.
    pub fn collect(&self, in_flight: InFlight, wait: &dyn Fn()) -> Vec<Answer> {
        let started = Instant::now();
        let mut answers: Vec<Answer> = in_flight
            .requests
            .iter()
            .map(|r| Answer { tag: r.tag, outcome: Outcome::Failure(Failure::new(ErrorCode::WorkerLost, None, true)), role: None })
            .collect();
        let (mut expected, mut received) = (answers.len(), 0);
        while received < expected {
            match in_flight.answers.recv_timeout(Duration::from_millis(20)) {
                Ok(message) => {
                    received += 1;
                    match message {
                        Message::Primary { slot, outcome, follow_up_queued } => {
                            answers[slot].outcome = outcome;
                            expected += usize::from(follow_up_queued);
                        }
                        Message::FollowUp { slot, outcome } => answers[slot].role = Some(outcome),
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => wait(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.waited.set(self.waited.get() + started.elapsed());
        answers
    }
}

/// Requests handed to the workers whose answers nobody has collected yet.
pub struct InFlight {
    requests: Vec<Request>,
    answers: mpsc::Receiver<Message>,
    queue: Arc<WorkQueue>,
}

impl InFlight {
    /// Whether these are exactly the requests in flight, so that their answers answer them.
    pub fn is_for(&self, requests: &[Request]) -> bool {
        self.requests == requests
    }
}

impl Drop for InFlight {
    /// Collected or not, nobody waits for these answers any more.
    fn drop(&mut self) {
        self.queue.unwanted.store(true, Ordering::SeqCst);
    }
}

/// The calls of one `start`, shared by its workers. A role that follows an add is queued
/// behind the calls not yet started when the add answers (calls that can make more work go
/// first), and whichever worker is free sends it: the pool never idles while there is work, and
/// n adds with roles take about ceil(2n / p) rounds.
struct WorkQueue {
    /// Tasks not yet taken, and tasks not yet finished (taken or not).
    state: Mutex<(VecDeque<Task>, usize)>,
    ready: Condvar,
    /// Set when the answers are no longer wanted: no task starts, no call is tried again.
    unwanted: AtomicBool,
}

impl WorkQueue {
    fn take(&self) -> Option<Task> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(task) = state.0.pop_front() {
                return Some(task);
            }
            if state.1 == 0 {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn abandon(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = state.0.len() + 1;
        state.0.clear();
        state.1 -= dropped;
        self.ready.notify_all();
    }

    fn finish(&self, follow_up: Option<Task>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = follow_up {
            state.0.push_back(task);
            state.1 += 1;
        }
        state.1 -= 1;
        self.ready.notify_all();
    }
}

struct Task {
    slot: usize,
    call: FlexCall,
    role_after_add: Option<String>,
    follow_up: bool,
}

enum Message {
    Primary { slot: usize, outcome: Outcome, follow_up_queued: bool },
    FollowUp { slot: usize, outcome: Outcome },
}

struct Done {
    message: Message,
    follow_up: Option<Task>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The backend's worker threads: they live as long as the backend and wait for jobs, so a sync
/// does not start a thread per batch of calls. A job runs on an idle thread, or on a new one when
/// every thread is busy (workers a cancelled sync left behind are still finishing).
struct Pool {
    jobs: Mutex<(VecDeque<Job>, usize)>,
    ready: Condvar,
}

fn run_on_pool(job: Job) {
    static POOL: Pool = Pool { jobs: Mutex::new((VecDeque::new(), 0)), ready: Condvar::new() };
    let mut state = POOL.jobs.lock().unwrap_or_else(|e| e.into_inner());
    let idle = state.1;
    state.0.push_back(job);
    if idle > state.0.len() - 1 {
        POOL.ready.notify_one();
        return;
    }
    drop(state);
    std::thread::spawn(|| loop {
        let mut state = POOL.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let job = loop {
            if let Some(job) = state.0.pop_front() {
                break job;
            }
            state.1 += 1;
            state = POOL.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            state.1 -= 1;
        };
        drop(state);
        job();
    });
}

/// One agent per backend, connect timeout and loopback switch: building one sets up TLS, and
/// reusing it keeps connections to Flex alive from one sync to the next.
fn shared_agent(connect_timeout_ms: u64, allow_insecure_loopback: bool) -> ureq::Agent {
    static AGENT: Mutex<Option<((u64, bool), ureq::Agent)>> = Mutex::new(None);
    let key = (connect_timeout_ms, allow_insecure_loopback);
    let mut cached = AGENT.lock().unwrap_or_else(|e| e.into_inner());
    match cached.as_ref() {
        Some((cached_key, agent)) if *cached_key == key => agent.clone(),
        _ => {
            let config = ureq::Agent::config_builder()
                .timeout_connect(Some(Duration::from_millis(connect_timeout_ms)))
                .max_redirects(0)
                .http_status_as_error(false)
                // ureq reads a proxy from the environment by default: a proxy would resolve and
                // reach the host itself, and the checked addresses would mean nothing.
                .proxy(None)
                .user_agent(concat!("flex_sync/", env!("CARGO_PKG_VERSION")))
                .build();
            let resolver =
                CheckedResolver { inner: DefaultResolver::default(), allow_insecure_loopback, answers: Default::default() };
            let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), resolver);
            *cached = Some((key, agent.clone()));
            agent
        }
    }
}

/// Hands ureq only addresses that passed the check, to connect to: resolving once for the check
/// and again for the connect would let a DNS answer that changes in between (rebinding) reach an
/// address never checked.
#[derive(Debug)]
struct CheckedResolver {
    /// Does the lookup, so that the request's timeouts still bound it.
    inner: DefaultResolver,
    allow_insecure_loopback: bool,
    /// Checked answers for host names, shared by the backend's workers.
    answers: Mutex<CheckedAnswers>,
}

impl Resolver for CheckedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        // A literal address needs no lookup, and the default resolver would start a thread
        // for it on every request.
        let host = uri.host().map(|h| h.trim_start_matches('[').trim_end_matches(']')).unwrap_or_default();
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        let mut addrs = self.empty();
        if let Ok(ip) = host.parse::<IpAddr>() {
            addrs.push(SocketAddr::new(ip, port));
            // ureq returns a resolver's error from the call as it is, for classify_transport_error.
            return check_resolved(addrs, self.allow_insecure_loopback).map_err(refused);
        }
        let now = Instant::now();
        if let Some(kept) = self.answers.lock().unwrap_or_else(|e| e.into_inner()).get(host, port, now) {
            // Checked when it was kept.
            kept.iter().for_each(|addr| addrs.push(*addr));
            return Ok(addrs);
        }
        let addrs = check_resolved(self.inner.resolve(uri, config, timeout)?, self.allow_insecure_loopback).map_err(refused)?;
        self.answers.lock().unwrap_or_else(|e| e.into_inner()).keep(host, port, &addrs, now);
        Ok(addrs)
    }
}

/// A refused destination as ureq passes a resolver's error on.
fn refused(refused: DestinationRefused) -> ureq::Error {
    ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, refused))
}

struct Worker {
    agent: ureq::Agent,
    origin: FlexOrigin,
    token: String,
    options: Options,
    budget: SyncBudget,
}

impl Worker {
    fn serve(&self, task: &Task, unwanted: &AtomicBool) -> Done {
        let outcome = self.run(&task.call, unwanted);
        if task.follow_up {
            return Done { message: Message::FollowUp { slot: task.slot, outcome }, follow_up: None };
        }
        let follow_up = match (&task.call, &task.role_after_add, &outcome) {
            (FlexCall::AddContact { element, .. }, Some(role), Outcome::Success(body)) => {
                parse_added_line_id(body).map(|line| Task {
                    slot: task.slot,
                    call: FlexCall::SetRole { element: element.clone(), line, role: role.clone() },
                    role_after_add: None,
                    follow_up: true,
                })
            }
            _ => None,
        };
        let message = Message::Primary { slot: task.slot, outcome, follow_up_queued: follow_up.is_some() };
        Done { message, follow_up }
    }

    /// One call with its retries. Only idempotent calls are retried; an add whose answer was lost
    /// is reported as ambiguous and the sync looks before adding again.
    /// `unwanted` set, a failed call is not tried again: nobody reads its answer.
    fn run(&self, call: &FlexCall, unwanted: &AtomicBool) -> Outcome {
        let mut attempt: u64 = 0;
        loop {
            attempt += 1;
            let outcome = self.attempt(call);
            let Outcome::Failure(failure) = &outcome else { return outcome };
            let retryable = call.is_idempotent() && attempt < self.options.retry_max_attempts && failure.is_transient();
            if !retryable || unwanted.load(Ordering::SeqCst) {
                return outcome;
            }
            let pause = backoff(attempt);
            if Instant::now() + pause >= self.budget.deadline {
                return outcome;
            }
            std::thread::sleep(pause);
            if unwanted.load(Ordering::SeqCst) {
                return outcome;
            }
        }
    }

    fn attempt(&self, call: &FlexCall) -> Outcome {
        if self.budget.rate_limited.load(Ordering::SeqCst) {
            return Outcome::Failure(Failure::new(ErrorCode::RateLimited, Some(429), false));
        }
        let now = Instant::now();
        let Some(left) = self.budget.deadline.checked_duration_since(now).filter(|d| !d.is_zero()) else {
            return Outcome::Failure(Failure::new(ErrorCode::Deadline, None, false));
        };
        if self.budget.calls.fetch_add(1, Ordering::SeqCst) >= self.budget.max_calls {
            self.budget.calls.fetch_sub(1, Ordering::SeqCst);
            return Outcome::Failure(Failure::new(ErrorCode::CallBudget, None, false));
        }
        let timeout = left.min(Duration::from_millis(self.options.request_timeout_ms));
        let url = call.url(&self.origin);
        let sent = match (call.method(), call.body()) {
            (Method::Get, _) => self.with_headers(self.agent.get(&url)).config().timeout_global(Some(timeout)).build().call(),
            (Method::Delete, None) => {
                self.with_headers(self.agent.delete(&url)).config().timeout_global(Some(timeout)).build().call()
            }
            (Method::Delete, Some(body)) => self
                .with_headers(self.agent.delete(&url))
                .force_send_body()
                .content_type(body.content_type)
                .config()
                .timeout_global(Some(timeout))
                .build()
                .send(&body.bytes[..]),
            (Method::Post, body) => {
                let body = body.unwrap_or_else(|| flex_sync_core::endpoints::Body { content_type: "application/json", bytes: Vec::new() });
                self.with_headers(self.agent.post(&url))
                    .content_type(body.content_type)
                    .config()
                    .timeout_global(Some(timeout))
                    .build()
                    .send(&body.bytes[..])
            }
        };
        let may_have_applied = !call.is_idempotent();
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => return Outcome::Failure(classify_transport_error(&error, may_have_applied)),
        };
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(self.options.max_response_bytes)
            .read_to_vec();
        let body = match body {
            Ok(body) => body,
            Err(ureq::Error::BodyExceedsLimit(_)) => {
                return Outcome::Failure(Failure::new(ErrorCode::ResponseTooLarge, Some(status), may_have_applied))
            }
            Err(error) => return Outcome::Failure(classify_transport_error(&error, may_have_applied)),
        };
        match status {
            200..=299 => match success_body_problem(&body) {
                None => Outcome::Success(body),
                Some(code) => Outcome::Failure(Failure::new(code, Some(status), may_have_applied)),
            },
            429 if is_budget_exhausted(&body) => {
                self.budget.rate_limited.store(true, Ordering::SeqCst);
                Outcome::Failure(Failure::new(ErrorCode::RateLimited, Some(429), false))
            }
            300..=399 => Outcome::Failure(Failure::new(ErrorCode::RedirectRefused, Some(status), false)),
            401 | 403 => Outcome::Failure(Failure::new(ErrorCode::Unauthorized, Some(status), false)),
            500..=599 => Outcome::Failure(Failure::new(ErrorCode::Http(status), Some(status), may_have_applied)),
            _ => Outcome::Failure(Failure::new(ErrorCode::Http(status), Some(status), false)),
        }
    }

    fn with_headers<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        request.header("X-Auth-Token", &self.token).header("Accept", "application/json")
    }
}

/// A 2xx is trusted only with an empty or JSON body: area-tecnica saw Flex-fronting proxies
/// answer 200 with an HTML login page, and an error object can arrive with a 200 too.
fn success_body_problem(body: &[u8]) -> Option<ErrorCode> {
    let body = body.trim_ascii();
    match body.first() {
        None => None,
        Some(b'{') => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(value) if value.get("exceptionMessage").is_some() => Some(ErrorCode::ErrorInBody),
            Ok(_) => None,
            Err(_) => Some(ErrorCode::BadResponse),
        },
        Some(_) => match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => None,
            Err(_) => Some(ErrorCode::BadResponse),
        },
    }
}

/// Transport errors carry no secret (the token is a header, never in the URL), but their text
/// names hosts and internals, so only a stable code leaves this module.
fn classify_transport_error(error: &ureq::Error, may_have_applied: bool) -> Failure {
    match error {
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
            Failure::new(ErrorCode::ConnectTimeout, None, false)
        }
        ureq::Error::Timeout(_) => Failure::new(ErrorCode::Timeout, None, may_have_applied),
        // Refused before any connection, so nothing was sent.
        ureq::Error::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<DestinationRefused>()) => {
            Failure::new(ErrorCode::DestinationRefused, None, false)
        }
        ureq::Error::HostNotFound => Failure::new(ErrorCode::HostNotFound, None, false),
        ureq::Error::ConnectionFailed => Failure::new(ErrorCode::Connection, None, false),
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Failure::new(ErrorCode::Connection, None, false)
        }
        _ => Failure::new(ErrorCode::Connection, None, may_have_applied),
    }
}

/// Exponential backoff with full jitter: a random pause in [0, 100 ms * 2^attempt], capped at 5 s.
fn backoff(attempt: u64) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let ceiling = (100u64 << attempt.min(6)).min(5_000);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(attempt);
    Duration::from_millis(hasher.finish() % (ceiling + 1))
}
