//! Shared server state: scenario, counters, recorded requests, and the
//! per-request guard that counts completions and client cancellations.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;

use crate::engine::Seqs;
use crate::rng::Rng;
use crate::scenario::Scenario;
use crate::sigv4::Credentials;

/// At most this many request bodies are kept for `/_mock/requests`.
pub const MAX_RECORDED: usize = 200;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// LLM requests received (chat completions and Converse).
    pub requests: u64,
    /// Requests whose response was produced (any status).
    pub completed: u64,
    /// Requests whose client went away before the response was produced.
    pub cancelled: u64,
    /// Requests currently being handled.
    pub in_flight: u64,
    /// Faults that fired (a request can fire several, e.g. delay + status).
    pub faults_injected: u64,
    /// Requests recognised as judge calls.
    pub judge_requests: u64,
    /// Converse requests refused by SigV4 verification.
    pub signature_failures: u64,
    /// Responses by HTTP status code.
    pub by_status: BTreeMap<String, u64>,
    /// `/pooling` (reward model) requests; not counted in `requests`.
    pub pooling_requests: u64,
}

#[derive(Debug, Default)]
struct Counters {
    stats: Stats,
    /// Bumped by reset; guards created before a reset do not count after it.
    epoch: u64,
    answers_seq: u64,
    judge_seq: u64,
}

pub struct AppState {
    scenario: RwLock<Arc<Scenario>>,
    seed: u64,
    rng: Mutex<Rng>,
    counters: Mutex<Counters>,
    pub answer_cursor: AtomicU64,
    pub tool_cursor: AtomicU64,
    /// Next draw of each answer stream (`answer_draw: hashed`), keyed by the request's `user`.
    streams: Mutex<HashMap<String, u64>>,
    recorded: Mutex<VecDeque<Value>>,
    changed: Notify,
    /// Credentials from the command line (scenario `aws` takes precedence).
    cli_aws: Option<Credentials>,
}

/// Most answer streams remembered between resets.
const MAX_ANSWER_STREAMS: usize = 100_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data in an
    // unusable state, so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AppState {
    pub fn new(scenario: Scenario, seed: u64, cli_aws: Option<Credentials>) -> Arc<Self> {
        Arc::new(AppState {
            scenario: RwLock::new(Arc::new(scenario)),
            seed,
            rng: Mutex::new(Rng::new(seed)),
            counters: Mutex::new(Counters::default()),
            answer_cursor: AtomicU64::new(0),
            tool_cursor: AtomicU64::new(0),
            streams: Mutex::new(HashMap::new()),
            recorded: Mutex::new(VecDeque::new()),
            changed: Notify::new(),
            cli_aws,
        })
    }

    pub fn scenario(&self) -> Arc<Scenario> {
        self.scenario
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_scenario(&self, s: Scenario) {
        *self.scenario.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }

    pub fn aws_credentials(&self) -> Option<Credentials> {
        match &self.scenario().aws {
            Some(a) => Some(Credentials {
                access_key_id: a.access_key_id.clone(),
                secret_access_key: a.secret_access_key.clone(),
                session_token: a.session_token.clone(),
            }),
            None => self.cli_aws.clone(),
        }
    }

    /// The simulator's `--seed`.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Reserve `n` draws of an answer stream; returns the position of the first.
    pub fn take_stream_draws(&self, stream: &str, n: u64) -> u64 {
        let mut streams = lock(&self.streams);
        // A test double, but still bounded: a client inventing a `user` per request must not grow
        // the map forever. Forgetting every stream restarts their sequences, which only a
        // benchmark replaying more than this many streams between resets would notice.
        if streams.len() >= MAX_ANSWER_STREAMS && !streams.contains_key(stream) {
            streams.clear();
        }
        let next = streams.entry(stream.to_owned()).or_insert(0);
        let first = *next;
        *next += n;
        first
    }

    pub fn with_rng<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut lock(&self.rng))
    }

    pub fn stats(&self) -> Stats {
        lock(&self.counters).stats.clone()
    }

    fn update(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut lock(&self.counters));
        self.changed.notify_waiters();
    }

    /// Zero counters, cursors, recorded requests and re-seed the RNG.
    /// Requests still in flight stay counted in `in_flight` only.
    pub fn reset(&self) {
        self.update(|c| {
            let in_flight = c.stats.in_flight;
            *c = Counters {
                epoch: c.epoch + 1,
                ..Counters::default()
            };
            c.stats.in_flight = in_flight;
        });
        self.answer_cursor.store(0, Ordering::SeqCst);
        self.tool_cursor.store(0, Ordering::SeqCst);
        lock(&self.streams).clear();
        lock(&self.recorded).clear();
        *lock(&self.rng) = Rng::new(self.seed);
    }

    pub fn record(&self, entry: Value) {
        let mut r = lock(&self.recorded);
        if r.len() == MAX_RECORDED {
            r.pop_front();
        }
        r.push_back(entry);
    }

    /// The last `limit` recorded requests, oldest first.
    pub fn recorded(&self, limit: usize) -> Vec<Value> {
        let r = lock(&self.recorded);
        r.iter()
            .skip(r.len().saturating_sub(limit))
            .cloned()
            .collect()
    }

    /// Classify the request (judge or not) and return its sequence numbers.
    pub fn classify(&self, guard: &RequestGuard, is_judge: bool) -> Seqs {
        let mut seqs = Seqs {
            all: guard.seq,
            ..Seqs::default()
        };
        self.update(|c| {
            if c.epoch != guard.epoch {
                return;
            }
            if is_judge {
                c.stats.judge_requests += 1;
                c.judge_seq += 1;
                seqs.judge = c.judge_seq;
            } else {
                c.answers_seq += 1;
                seqs.answers = c.answers_seq;
            }
        });
        seqs
    }

    /// Count a `/pooling` request and return its 1-based sequence number.
    pub fn next_pooling_seq(&self) -> u64 {
        let mut seq = 0;
        self.update(|c| {
            c.stats.pooling_requests += 1;
            seq = c.stats.pooling_requests;
        });
        seq
    }

    pub fn add_faults(&self, n: u64) {
        if n > 0 {
            self.update(|c| c.stats.faults_injected += n);
        }
    }

    pub fn add_signature_failure(&self) {
        self.update(|c| c.stats.signature_failures += 1);
    }

    /// Wait until `cond` holds for the stats or the deadline passes.
    /// Returns the stats and whether the condition was met.
    pub async fn wait_for(
        &self,
        cond: impl Fn(&Stats) -> bool,
        deadline: tokio::time::Instant,
    ) -> (Stats, bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let stats = self.stats();
            if cond(&stats) {
                return (stats, true);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let stats = self.stats();
                let ok = cond(&stats);
                return (stats, ok);
            }
        }
    }
}

/// Lives for the duration of one LLM request handler. Dropped without
/// [`RequestGuard::finish`] means the handler future was dropped, i.e. the
/// client went away: counted as cancelled.
pub struct RequestGuard {
    state: Arc<AppState>,
    epoch: u64,
    pub seq: u64,
    done: bool,
}

impl RequestGuard {
    pub fn start(state: &Arc<AppState>) -> Self {
        let mut epoch = 0;
        let mut seq = 0;
        state.update(|c| {
            c.stats.requests += 1;
            c.stats.in_flight += 1;
            epoch = c.epoch;
            seq = c.stats.requests;
        });
        RequestGuard {
            state: state.clone(),
            epoch,
            seq,
            done: false,
        }
    }

    pub fn finish(&mut self, status: u16) {
        if self.done {
            return;
        }
        self.done = true;
        let epoch = self.epoch;
        self.state.update(|c| {
            c.stats.in_flight = c.stats.in_flight.saturating_sub(1);
            if c.epoch == epoch {
                c.stats.completed += 1;
                *c.stats.by_status.entry(status.to_string()).or_insert(0) += 1;
            }
        });
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let epoch = self.epoch;
        self.state.update(|c| {
            c.stats.in_flight = c.stats.in_flight.saturating_sub(1);
            if c.epoch == epoch {
                c.stats.cancelled += 1;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state() -> Arc<AppState> {
        AppState::new(Scenario::default(), 1, None)
    }

    #[test]
    fn guard_counts_completion_and_cancellation() {
        let s = state();
        let mut g1 = RequestGuard::start(&s);
        let g2 = RequestGuard::start(&s);
        assert_eq!((g1.seq, g2.seq), (1, 2));
        assert_eq!(s.stats().in_flight, 2);
        g1.finish(200);
        drop(g1);
        drop(g2);
        let st = s.stats();
        assert_eq!(
            (st.requests, st.completed, st.cancelled, st.in_flight),
            (2, 1, 1, 0)
        );
        assert_eq!(st.by_status.get("200"), Some(&1));
    }

    #[test]
    fn reset_keeps_live_requests_out_of_new_counts() {
        let s = state();
        let old = RequestGuard::start(&s);
        s.record(json!(1));
        s.reset();
        assert_eq!(s.stats().in_flight, 1);
        assert_eq!(s.stats().requests, 0);
        assert!(s.recorded(10).is_empty());
        drop(old);
        let st = s.stats();
        assert_eq!((st.in_flight, st.cancelled), (0, 0));
        let g = RequestGuard::start(&s);
        assert_eq!(g.seq, 1);
    }

    #[test]
    fn recorder_is_bounded_and_ordered() {
        let s = state();
        for i in 0..250 {
            s.record(json!(i));
        }
        assert_eq!(s.recorded(1000).len(), MAX_RECORDED);
        assert_eq!(s.recorded(3), vec![json!(247), json!(248), json!(249)]);
    }

    #[test]
    fn classify_counts_per_class() {
        let s = state();
        let g1 = RequestGuard::start(&s);
        let g2 = RequestGuard::start(&s);
        let g3 = RequestGuard::start(&s);
        assert_eq!(
            s.classify(&g1, false),
            Seqs {
                all: 1,
                answers: 1,
                judge: 0
            }
        );
        assert_eq!(
            s.classify(&g2, true),
            Seqs {
                all: 2,
                answers: 0,
                judge: 1
            }
        );
        assert_eq!(
            s.classify(&g3, false),
            Seqs {
                all: 3,
                answers: 2,
                judge: 0
            }
        );
        assert_eq!(s.stats().judge_requests, 1);
    }

    #[tokio::test]
    async fn wait_wakes_on_change_and_times_out() {
        let s = state();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            s2.wait_for(|st| st.in_flight >= 2, deadline).await
        });
        let _a = RequestGuard::start(&s);
        let _b = RequestGuard::start(&s);
        let (st, ok) = waiter.await.unwrap();
        assert!(ok);
        assert_eq!(st.in_flight, 2);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(20);
        let (_, ok) = s.wait_for(|st| st.cancelled >= 1, deadline).await;
        assert!(!ok);
    }
}
