//! The step loop shared by particle filtering and beam search, and PRM-scored best-of-n.
//!
//! Each step extends every live particle by one step (all calls at once, through the same
//! fan-out as candidates), scores every extended particle in one PRM call, then reselects:
//! particle filtering resamples all particles from softmax(logit(score)); beam search keeps the
//! best `beam_width` and copies each budget/beam_width times. If the PRM fails, the search goes
//! on unguided to the end and the particles' answers are put to the majority vote.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::steps::{StepEnd, StopRules, join_steps};
use super::{ParticleReport, StepwiseDetail, StepwiseSetup, prm_prompt, split_steps, weights};
use crate::algorithms::vote::{self, Vote};
use crate::algorithms::{AlgorithmError, AlgorithmInputs, CallCounts, Detail, Outcome, StopReason};
use crate::config::{AlgorithmName, Resampling, Selection, StepwiseSettings};
use crate::fanout::InFlight;
use crate::metrics::Metrics;
use crate::providers::{Candidate, UpstreamError, Usage};
use crate::reward::PrmError;
use crate::reward::pooling::{aggregate, render_input};

#[derive(Debug, Clone, Default)]
struct Particle {
    steps: Vec<String>,
    step_scores: Vec<f64>,
    score: Option<f64>,
    weight: Option<f64>,
    finished: bool,
    /// Its last generation call failed; it is not extended again and is replaced at the next
    /// resampling.
    failed: bool,
    ancestry: Vec<usize>,
}

impl Particle {
    fn live(&self) -> bool {
        !self.finished && !self.failed
    }

    fn report(&self) -> ParticleReport {
        ParticleReport {
            steps: self.steps.clone(),
            step_scores: self.step_scores.clone(),
            score: self.score,
            weight: self.weight,
            finished: self.finished,
            ancestry: self.ancestry.clone(),
        }
    }
}

/// The generation request of one step: the conversation, the partial answer as a trailing
/// assistant message to continue (when there is one), stop at the step tokens, the step cap.
pub fn step_body(
    forward: &Map<String, Value>,
    messages: &[Value],
    partial: &str,
    s: &StepwiseSettings,
) -> Map<String, Value> {
    let mut body = forward.clone();
    let mut messages = messages.to_vec();
    if !partial.is_empty() {
        messages.push(json!({"role": "assistant", "content": partial}));
        body.insert("continue_final_message".into(), Value::Bool(true));
        body.insert("add_generation_prompt".into(), Value::Bool(false));
    }
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stop".into(), json!(s.step_tokens));
    body.insert("max_tokens".into(), json!(s.max_step_tokens));
    // One continuation per particle; the request's own caps apply to the whole search.
    for key in ["n", "max_completion_tokens"] {
        body.remove(key);
    }
    body
}

/// What the loop accumulates besides the particles.
#[derive(Default)]
struct Tally {
    usage: Usage,
    generation_calls: usize,
    reward_calls: usize,
    reward_prompt_tokens: u64,
    steps: u32,
    resamplings: u32,
    errors: Vec<UpstreamError>,
    upstream_time: Duration,
    fingerprint: Option<String>,
    fallback: Option<String>,
    max_calls_reached: bool,
}

/// Particle filtering or beam search for one request; `budget` particles.
pub async fn run(
    inputs: &AlgorithmInputs<'_>,
    setup: &StepwiseSetup,
    forward: &Map<String, Value>,
    budget: u32,
    metrics: &Metrics,
) -> Result<Outcome, AlgorithmError> {
    let s = &setup.settings;
    let alg = inputs.algorithm;
    let label = alg.as_str();
    let messages = forward
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (system, question) = prm_prompt(&messages);
    let rules = StopRules {
        step_tokens: &s.step_tokens,
        stop_token: s.stop_token.as_deref(),
        max_steps: s.max_steps,
    };
    let joiner = s.step_tokens.first().map_or("\n\n", String::as_str);
    let n = budget as usize;
    let mut particles = vec![Particle::default(); n];
    let mut t = Tally::default();

    for _ in 0..s.max_steps {
        let live: Vec<usize> = (0..n).filter(|i| particles[*i].live()).collect();
        if live.is_empty() {
            break;
        }
        if t.generation_calls + live.len() > s.max_calls as usize {
            t.max_calls_reached = true;
            break;
        }
        t.steps += 1;
        metrics
            .search
            .live_particles
            .with_label_values(&[label])
            .observe(live.len() as f64);
        extend(
            inputs,
            forward,
            &messages,
            s,
            &rules,
            joiner,
            &live,
            &mut particles,
            &mut t,
        )
        .await;
        let extended: Vec<usize> = live
            .iter()
            .copied()
            .filter(|i| !particles[*i].failed)
            .collect();
        if extended.is_empty() {
            break;
        }
        if t.fallback.is_some() {
            continue;
        }
        let texts: Vec<String> = extended
            .iter()
            .map(|i| render_input(&system, &question, &particles[*i].steps, &s.rm_step_tag))
            .collect();
        let rows: Vec<usize> = extended.iter().map(|i| particles[*i].steps.len()).collect();
        match score(setup, &texts, &rows, label, metrics, &mut t).await {
            Ok(step_scores) => {
                for (i, scores) in extended.iter().zip(step_scores) {
                    let p = &mut particles[*i];
                    p.score = aggregate(&scores, s.rm_agg_method);
                    p.weight = p.score.map(|sc| match alg {
                        AlgorithmName::ParticleFiltering => weights::logit(sc),
                        _ => sc,
                    });
                    p.step_scores = scores;
                }
            }
            Err(reason) => {
                metrics
                    .search
                    .reward_fallbacks
                    .with_label_values(&[label])
                    .inc();
                t.fallback = Some(reason);
                continue;
            }
        }
        if particles.iter().all(|p| !p.live()) {
            break;
        }
        particles = match (alg, s.beam_width) {
            (AlgorithmName::BeamSearch, Some(width)) => beam_select(&particles, width as usize, n),
            _ => resample(&particles, s.resampling, n, &mut crate::rand::unit),
        };
        t.resamplings += 1;
        metrics.search.resamplings.with_label_values(&[label]).inc();
    }
    metrics
        .search
        .steps
        .with_label_values(&[label])
        .observe(f64::from(t.steps));
    record_cost(metrics, label, &t);
    finish(inputs, s, particles, t, joiner, budget)
}

/// The shared cost metrics: step calls count as candidates, the PRM's tokens as `reward`.
fn record_cost(metrics: &Metrics, label: &str, t: &Tally) {
    let failed = t.errors.len().min(t.generation_calls);
    metrics
        .candidates
        .with_label_values(&[label, "ok"])
        .inc_by((t.generation_calls - failed) as u64);
    metrics
        .candidates
        .with_label_values(&[label, "error"])
        .inc_by(failed as u64);
    for (kind, n) in [
        ("prompt", t.usage.prompt_tokens),
        ("completion", t.usage.completion_tokens),
    ] {
        metrics
            .tokens
            .with_label_values(&[kind, "candidate"])
            .inc_by(n);
    }
    metrics
        .tokens
        .with_label_values(&["prompt", "reward"])
        .inc_by(t.reward_prompt_tokens);
}

/// Generates the next step of every `live` particle at once.
#[allow(clippy::too_many_arguments)]
async fn extend(
    inputs: &AlgorithmInputs<'_>,
    forward: &Map<String, Value>,
    messages: &[Value],
    s: &StepwiseSettings,
    rules: &StopRules<'_>,
    joiner: &str,
    live: &[usize],
    particles: &mut [Particle],
    t: &mut Tally,
) {
    let started = Instant::now();
    let mut in_flight = InFlight::new(inputs.provider, inputs.candidate_metrics);
    for &i in live {
        let partial = join_steps(&particles[i].steps, joiner, false);
        match inputs
            .provider
            .prepare(step_body(forward, messages, &partial, s))
        {
            Ok(call) => {
                in_flight.push(i, &Arc::new(call));
                t.generation_calls += 1;
            }
            Err(e) => {
                particles[i].failed = true;
                t.errors.push(UpstreamError::Transport(format!(
                    "the step request could not be built: {e}"
                )));
            }
        }
    }
    while let Some((i, call)) = in_flight.next().await {
        let completion = match call.result {
            Ok(c) => c,
            Err(e) => {
                particles[i].failed = true;
                t.errors.push(e);
                continue;
            }
        };
        t.usage.add(completion.usage);
        if t.fingerprint.is_none() {
            t.fingerprint = completion.system_fingerprint;
        }
        let Some(c) = completion.candidates.into_iter().next() else {
            particles[i].failed = true;
            continue;
        };
        let end = StepEnd {
            finish_reason: c.finish_reason.as_deref(),
            stop: &c.stop_reason,
        };
        let p = &mut particles[i];
        let done = u32::try_from(p.steps.len() + 1).unwrap_or(u32::MAX);
        p.finished = rules.finished(&c.text, end, done);
        p.steps.push(c.text);
    }
    t.upstream_time += started.elapsed();
}

/// One PRM call; its per-input step scores, or why they are unusable (the fallback reason).
async fn score(
    setup: &StepwiseSetup,
    texts: &[String],
    rows: &[usize],
    label: &'static str,
    metrics: &Metrics,
    t: &mut Tally,
) -> Result<Vec<Vec<f64>>, String> {
    let started = Instant::now();
    let result = setup.prm.score(texts, rows).await;
    let elapsed = started.elapsed();
    t.reward_calls += 1;
    t.upstream_time += elapsed;
    metrics
        .search
        .reward_duration
        .with_label_values(&[label])
        .observe(elapsed.as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics
        .search
        .reward_calls
        .with_label_values(&[label, outcome])
        .inc();
    match result {
        Ok(scored) => {
            t.reward_prompt_tokens += scored.scores.prompt_tokens;
            Ok(scored.scores.steps)
        }
        Err(e @ (PrmError::Upstream(_) | PrmError::Response(_))) => {
            tracing::warn!(error = %e, "process reward model failed; falling back to a majority vote");
            Err(e.to_string())
        }
    }
}

/// Particle filtering's reselection: `n` draws from softmax(log-weights) over the particles
/// that did not fail; unscored particles count as score 0.5 (log-weight 0).
fn resample(
    particles: &[Particle],
    method: Resampling,
    n: usize,
    uniform: &mut impl FnMut() -> f64,
) -> Vec<Particle> {
    let pool: Vec<usize> = (0..particles.len())
        .filter(|i| !particles[*i].failed)
        .collect();
    let log_weights: Vec<f64> = pool
        .iter()
        .map(|i| particles[*i].weight.unwrap_or(0.0))
        .collect();
    let probs = weights::softmax(&log_weights);
    let draws = match method {
        Resampling::Multinomial => weights::multinomial(&probs, n, uniform),
        Resampling::Systematic => weights::systematic(&probs, n, uniform),
    };
    draws
        .into_iter()
        .map(|d| descendant(particles, pool[d]))
        .collect()
}

/// Beam search's reselection: the `width` best particles (by score), each copied n/width times.
fn beam_select(particles: &[Particle], width: usize, n: usize) -> Vec<Particle> {
    let pool: Vec<usize> = (0..particles.len())
        .filter(|i| !particles[*i].failed)
        .collect();
    let scores: Vec<f64> = pool
        .iter()
        .map(|i| particles[*i].weight.unwrap_or(f64::NEG_INFINITY))
        .collect();
    let best = weights::top_k(&scores, width);
    let copies = (n / width.max(1)).max(1);
    (0..n)
        .map(|k| descendant(particles, pool[best[(k / copies).min(best.len() - 1)]]))
        .collect()
}

fn descendant(particles: &[Particle], parent: usize) -> Particle {
    let mut child = particles[parent].clone();
    child.ancestry.push(parent);
    child
}

/// Picks the answer among the particles with at least one step (finished ones first) and
/// builds the outcome.
fn finish(
    inputs: &AlgorithmInputs<'_>,
    s: &StepwiseSettings,
    particles: Vec<Particle>,
    t: Tally,
    joiner: &str,
    budget: u32,
) -> Result<Outcome, AlgorithmError> {
    let failed = particles.iter().filter(|p| p.failed).count();
    let pool: Vec<Particle> = particles
        .into_iter()
        .filter(|p| !p.steps.is_empty())
        .collect();
    if pool.is_empty() {
        return Err(AlgorithmError::Upstream {
            errors: t.errors,
            succeeded: 0,
            attempted: budget as usize,
            needed: 1,
        });
    }
    let candidates: Vec<Candidate> = pool
        .iter()
        .map(|p| {
            let text = join_steps(&p.steps, joiner, true);
            let finish = if p.finished { "stop" } else { "length" };
            Candidate::from_message(
                json!({"role": "assistant", "content": text}),
                Some(finish.to_owned()),
                None,
            )
        })
        .collect();
    let eligible: Vec<usize> = match pool.iter().any(|p| p.finished) {
        true => (0..pool.len()).filter(|i| pool[*i].finished).collect(),
        false => (0..pool.len()).collect(),
    };
    let mut fallback_vote: Option<Vote> = None;
    let selected = if t.fallback.is_some() {
        let voters: Vec<Candidate> = eligible.iter().map(|i| candidates[*i].clone()).collect();
        match vote::vote(&voters, inputs.vote) {
            Ok(v) => {
                let winner = eligible[v.selected];
                fallback_vote = Some(v);
                winner
            }
            Err(_) => eligible[0],
        }
    } else {
        let w: Vec<f64> = eligible
            .iter()
            .map(|i| pool[*i].weight.unwrap_or(f64::NEG_INFINITY))
            .collect();
        let pick = match (inputs.algorithm, s.selection) {
            (AlgorithmName::ParticleFiltering, Selection::Sample) => {
                weights::sample(&w, &mut crate::rand::unit)
            }
            _ => weights::argmax(&w),
        };
        eligible[pick.unwrap_or(0)]
    };
    let detail = StepwiseDetail {
        particles: pool.iter().map(Particle::report).collect(),
        steps: t.steps,
        generation_calls: t.generation_calls,
        reward_calls: t.reward_calls,
        reward_prompt_tokens: t.reward_prompt_tokens,
        resamplings: t.resamplings,
        fallback_reason: t.fallback,
        max_calls_reached: t.max_calls_reached,
    };
    Ok(Outcome {
        algorithm: inputs.algorithm,
        candidates,
        selected,
        usage: t.usage,
        upstream_time: t.upstream_time,
        failures: t.errors.iter().map(ToString::to_string).collect(),
        failed_candidates: failed,
        system_fingerprint: t.fingerprint,
        detail: Detail::Stepwise(Box::new((detail, fallback_vote))),
        calls: CallCounts {
            sent: t.generation_calls,
            completed: t.generation_calls,
            cancelled: 0,
        },
        stop_reason: StopReason::AllCompleted,
    })
}

/// Best-of-n scored by the PRM: the candidates are generated as for any best-of-n (`outcome`,
/// decided by the vote), then every complete answer is split into steps at the step token and
/// scored in one PRM call; the highest aggregated score wins. If the PRM fails, the vote stands.
pub async fn run_prm_best_of_n(
    setup: &StepwiseSetup,
    mut outcome: Outcome,
    context: &[Value],
    metrics: &Metrics,
) -> Outcome {
    if outcome.candidates.len() < 2 {
        return outcome;
    }
    let s = &setup.settings;
    let label = AlgorithmName::BestOfN.as_str();
    let joiner = s.step_tokens.first().map_or("\n\n", String::as_str);
    let (system, question) = prm_prompt(context);
    let steps: Vec<Vec<String>> = outcome
        .candidates
        .iter()
        .map(|c| split_steps(&c.text, joiner))
        .collect();
    let texts: Vec<String> = steps
        .iter()
        .map(|st| render_input(&system, &question, st, &s.rm_step_tag))
        .collect();
    let rows: Vec<usize> = steps.iter().map(Vec::len).collect();
    let mut t = Tally::default();
    let scored = score(setup, &texts, &rows, label, metrics, &mut t).await;
    outcome.upstream_time += t.upstream_time;
    metrics
        .tokens
        .with_label_values(&["prompt", "reward"])
        .inc_by(t.reward_prompt_tokens);
    let vote = match std::mem::replace(&mut outcome.detail, Detail::Stepwise(Box::default())) {
        Detail::Vote(v) => Some(v),
        _ => None,
    };
    let mut reports: Vec<ParticleReport> = steps
        .into_iter()
        .map(|st| ParticleReport {
            steps: st,
            step_scores: Vec::new(),
            score: None,
            weight: None,
            finished: true,
            ancestry: Vec::new(),
        })
        .collect();
    let fallback_vote = match scored {
        Ok(all) => {
            for (r, scores) in reports.iter_mut().zip(all) {
                r.score = aggregate(&scores, s.rm_agg_method);
                r.weight = r.score;
                r.step_scores = scores;
            }
            let w: Vec<f64> = reports
                .iter()
                .map(|r| r.score.unwrap_or(f64::NEG_INFINITY))
                .collect();
            outcome.selected = weights::argmax(&w).unwrap_or(outcome.selected);
            None
        }
        Err(reason) => {
            metrics
                .search
                .reward_fallbacks
                .with_label_values(&[label])
                .inc();
            t.fallback = Some(reason);
            vote
        }
    };
    let detail = StepwiseDetail {
        particles: reports,
        steps: 1,
        generation_calls: outcome.calls.sent,
        reward_calls: t.reward_calls,
        reward_prompt_tokens: t.reward_prompt_tokens,
        resamplings: 0,
        fallback_reason: t.fallback,
        max_calls_reached: false,
    };
    outcome.detail = Detail::Stepwise(Box::new((detail, fallback_vote)));
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(weight: f64, finished: bool) -> Particle {
        Particle {
            steps: vec![format!("w{weight}")],
            weight: Some(weight),
            finished,
            ..Default::default()
        }
    }

    #[test]
    fn step_body_continues_the_partial_answer() {
        let s = StepwiseSettings {
            rm_name: "prm".into(),
            rm_base_url: "http://127.0.0.1:9".into(),
            rm_step_tag: "<extra_0>".into(),
            rm_agg_method: Default::default(),
            step_tokens: vec!["\n\n".into()],
            stop_token: None,
            max_steps: 4,
            max_step_tokens: 64,
            beam_width: None,
            resampling: Resampling::Multinomial,
            selection: Selection::Argmax,
            max_calls: 100,
        };
        let forward: Map<String, Value> =
            serde_json::from_value(json!({"model":"m","temperature":0.7,"n":3,"max_tokens":9}))
                .unwrap();
        let msgs = vec![json!({"role":"user","content":"Q"})];
        let first = step_body(&forward, &msgs, "", &s);
        assert_eq!(first["messages"], json!([{"role":"user","content":"Q"}]));
        assert!(!first.contains_key("continue_final_message") && !first.contains_key("n"));
        assert_eq!(first["stop"], json!(["\n\n"]));
        assert_eq!(first["max_tokens"], json!(64));
        assert_eq!(first["temperature"], json!(0.7));
        let next = step_body(&forward, &msgs, "Step 1\n\n", &s);
        assert_eq!(
            next["messages"][1],
            json!({"role":"assistant","content":"Step 1\n\n"})
        );
        assert_eq!(next["continue_final_message"], json!(true));
        assert_eq!(next["add_generation_prompt"], json!(false));
    }

    #[test]
    fn resampling_draws_by_weight_and_records_ancestry() {
        let ps = vec![
            scored(weights::logit(0.999), false),
            scored(weights::logit(0.001), false),
        ];
        // Systematic with 2 draws: the heavy particle (p ≈ 0.999 999) takes both.
        let next = resample(&ps, Resampling::Systematic, 2, &mut || 0.5);
        assert_eq!(next.len(), 2);
        assert!(next.iter().all(|p| p.ancestry == vec![0]));
        // A failed particle is never drawn.
        let mut ps = ps;
        ps[0].failed = true;
        let next = resample(&ps, Resampling::Multinomial, 2, &mut || 0.0);
        assert!(next.iter().all(|p| p.ancestry == vec![1] && !p.failed));
    }

    #[test]
    fn beam_keeps_the_best_width_each_copied_evenly() {
        let ps = vec![
            scored(0.2, false),
            scored(0.9, false),
            scored(0.5, true),
            scored(0.1, false),
        ];
        let next = beam_select(&ps, 2, 4);
        let parents: Vec<usize> = next.iter().map(|p| p.ancestry[0]).collect();
        assert_eq!(parents, vec![1, 1, 2, 2]);
        assert!(next[2].finished);
    }
}
