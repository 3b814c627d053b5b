//! How steps become a partial answer and when a particle is finished. Pure; the joining rule
//! and its test vectors are the reference's (its_hub `StepGeneration`, docs/algorithms.md).

use crate::providers::UpstreamStop;

/// The text of a partial answer: the steps joined with the step token, plus a trailing step
/// token while the particle is still going, so the next step starts on a fresh line. The
/// upstream drops the stop string from each step (vLLM's default), which is why it is put back.
pub fn join_steps(steps: &[String], step_token: &str, finished: bool) -> String {
    let mut out = steps.join(step_token);
    if !finished && !steps.is_empty() {
        out.push_str(step_token);
    }
    out
}

/// How one generated step ended, as the upstream reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepEnd<'a> {
    /// `finish_reason`: `stop` or `length` (others are treated as `stop`).
    pub finish_reason: Option<&'a str>,
    /// vLLM's `stop_reason`.
    pub stop: &'a UpstreamStop,
}

/// The rules that finish a particle, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct StopRules<'a> {
    pub step_tokens: &'a [String],
    pub stop_token: Option<&'a str>,
    pub max_steps: u32,
}

impl StopRules<'_> {
    /// Whether the particle is finished after this step, its `steps_done`-th (1-based):
    /// `max_steps` steps are done; or the step contains `stop_token`; or the model ended its
    /// answer — vLLM reports `stop_reason: null` (end of sequence) rather than one of the step
    /// tokens, or the step is empty. A step cut by the per-step token cap (`length`) continues.
    /// A server that does not report `stop_reason` cannot tell a step's end from the answer's,
    /// so there only `stop_token`, an empty step and `max_steps` finish a particle.
    pub fn finished(&self, step: &str, end: StepEnd<'_>, steps_done: u32) -> bool {
        if steps_done >= self.max_steps {
            return true;
        }
        if self.stop_token.is_some_and(|t| step.contains(t)) {
            return true;
        }
        if end.finish_reason == Some("length") {
            return false;
        }
        if step.trim().is_empty() {
            return true;
        }
        match end.stop {
            UpstreamStop::NotReported => false,
            UpstreamStop::EndOfSequence => true,
            UpstreamStop::Matched(s) => !self.step_tokens.iter().any(|t| t == s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> Vec<String> {
        ["step1", "step2", "step3"].map(String::from).to_vec()
    }

    #[test]
    fn joining_matches_the_reference_vectors() {
        assert_eq!(join_steps(&steps(), "\n", false), "step1\nstep2\nstep3\n");
        assert_eq!(join_steps(&steps(), "\n", true), "step1\nstep2\nstep3");
        assert_eq!(join_steps(&[], "\n\n", false), "");
        assert_eq!(join_steps(&steps()[..1], "\n\n", false), "step1\n\n");
    }

    fn rules<'a>(tokens: &'a [String], stop: Option<&'a str>) -> StopRules<'a> {
        StopRules {
            step_tokens: tokens,
            stop_token: stop,
            max_steps: 4,
        }
    }

    fn at_step(stop: &UpstreamStop) -> StepEnd<'_> {
        StepEnd {
            finish_reason: Some("stop"),
            stop,
        }
    }

    fn matched(s: &str) -> UpstreamStop {
        UpstreamStop::Matched(s.to_owned())
    }

    #[test]
    fn a_step_ended_by_the_step_token_continues() {
        let t = ["\n\n".to_owned()];
        let m = matched("\n\n");
        assert!(!rules(&t, Some("\\boxed")).finished("Step 1: x", at_step(&m), 1));
    }

    #[test]
    fn stop_token_end_of_sequence_and_max_steps_finish() {
        let t = ["\n\n".to_owned()];
        let r = rules(&t, Some("\\boxed"));
        let m = matched("\n\n");
        assert!(r.finished("so \\boxed{4}", at_step(&m), 1));
        let eos = UpstreamStop::EndOfSequence;
        assert!(rules(&t, None).finished("the end", at_step(&eos), 2));
        assert!(r.finished("Step 4: x", at_step(&m), 4));
    }

    #[test]
    fn a_step_cut_by_the_token_cap_continues() {
        let t = ["\n\n".to_owned()];
        let eos = UpstreamStop::EndOfSequence;
        let cut = StepEnd {
            finish_reason: Some("length"),
            stop: &eos,
        };
        assert!(!rules(&t, None).finished("a long ste", cut, 1));
    }

    #[test]
    fn any_of_several_step_tokens_continues() {
        let t = ["\n\n".to_owned(), "\nStep".to_owned()];
        let m = matched("\nStep");
        assert!(!rules(&t, None).finished("x", at_step(&m), 1));
    }

    #[test]
    fn without_a_reported_stop_reason_only_stop_token_empty_step_or_max_steps_finish() {
        let t = ["\n\n".to_owned()];
        let silent = UpstreamStop::NotReported;
        let r = rules(&t, Some("\\boxed"));
        assert!(!r.finished("Step 1: x", at_step(&silent), 1));
        assert!(r.finished("so \\boxed{4}", at_step(&silent), 2));
        assert!(r.finished("  ", at_step(&silent), 2));
        assert!(r.finished("Step 4", at_step(&silent), 4));
    }
}
