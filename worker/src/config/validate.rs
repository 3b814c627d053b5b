//! Validation of a [`WorkerConfig`] before anything is applied. Pure: no I/O except reading
//! referenced secret files, which is done later by the runtime.

use super::{AdaptiveConfig, AlgorithmName, WorkerConfig, limits};

/// Highest budget any configuration may allow (the reference service's limit).
pub const MAX_BUDGET_LIMIT: u32 = 1000;

/// Why a configuration was refused. `param` names the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("{message}")]
    Invalid {
        param: &'static str,
        message: String,
    },
}

impl ConfigError {
    pub(super) fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            param,
            message: message.into(),
        }
    }

    /// The field the error is about, when there is one.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            ConfigError::Invalid { param, .. } => Some(param),
            ConfigError::Parse(_) => None,
        }
    }
}

impl WorkerConfig {
    /// Checks every field and cross-field rule; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.model.trim().is_empty() {
            return Err(ConfigError::invalid("model", "model must not be empty"));
        }
        check_endpoint("endpoint", &self.endpoint)?;
        if let Some(url) = &self.judge_base_url {
            check_endpoint("judge_base_url", url)?;
        }
        let max = self.max_budget();
        if !(1..=MAX_BUDGET_LIMIT).contains(&max) {
            return Err(ConfigError::invalid(
                "max_budget",
                format!("max_budget must be between 1 and {MAX_BUDGET_LIMIT}, got {max}"),
            ));
        }
        if let Some(b) = self.budget
            && !(1..=max).contains(&b)
        {
            return Err(ConfigError::invalid(
                "budget",
                format!("budget must be between 1 and max_budget ({max}), got {b}"),
            ));
        }
        check_temperature("temperature", self.temperature)?;
        check_temperature("judge_temperature", self.judge_temperature)?;
        for (i, pattern) in self.regex_patterns.iter().flatten().enumerate() {
            if let Err(e) = regex::Regex::new(pattern) {
                return Err(ConfigError::invalid(
                    "regex_patterns",
                    format!(
                        "regex_patterns[{i}] {pattern:?} is not a valid regular expression: {e}"
                    ),
                ));
            }
        }
        if self.exclude_args.iter().any(|a| a.is_empty()) {
            return Err(ConfigError::invalid(
                "exclude_args",
                "exclude_args must not contain empty names",
            ));
        }
        super::stepwise::check_stepwise(self)?;
        if self.alg == AlgorithmName::BestOfN
            && self
                .judge_model
                .as_deref()
                .is_some_and(|m| m.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "judge_model",
                "judge_model must not be empty",
            ));
        }
        limits::check_count("judge_top_n", self.judge_top_n, 1, MAX_BUDGET_LIMIT)?;
        limits::check_count(
            "judge_max_tokens",
            self.judge_max_tokens,
            1,
            limits::MAX_JUDGE_MAX_TOKENS,
        )?;
        if let Some(c) = &self.judge_criterion
            && c.trim().is_empty()
        {
            return Err(ConfigError::invalid(
                "judge_criterion",
                "judge_criterion must not be empty",
            ));
        }
        if let Some(a) = &self.adaptive {
            if self.alg != AlgorithmName::SelfConsistency {
                return Err(ConfigError::invalid(
                    "adaptive",
                    format!(
                        "adaptive applies to self-consistency only, not to {}",
                        self.alg.as_str()
                    ),
                ));
            }
            check_adaptive(a, max).map_err(|(field, problem)| {
                let param = field.config_param();
                ConfigError::invalid(param, format!("{param} {problem}"))
            })?;
        }
        if let Some(u) = &self.upstream {
            limits::check_upstream(u, max)?;
        }
        if let Some(server) = &self.server {
            limits::check_server(server)?;
        }
        check_provider_resolution(self)?;
        Ok(())
    }
}

/// Everything the worker would refuse at start when resolving the upstreams (routing, Bedrock
/// settings, `candidates_per_call` without `n`), through the very function the runtime uses.
/// `OPENAI_BASE_URL` only changes a base URL, so it is left out here.
fn check_provider_resolution(cfg: &WorkerConfig) -> Result<(), ConfigError> {
    super::routing::resolve_routes(cfg, None).map(|_| ())
}

pub(super) fn check_endpoint(param: &'static str, value: &str) -> Result<(), ConfigError> {
    if value == "auto" {
        return Ok(());
    }
    let ok = (value.starts_with("http://") || value.starts_with("https://"))
        && value
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            param,
            format!("{param} must be \"auto\" or an http(s) URL, got {value:?}"),
        ))
    }
}

/// A field of the adaptive settings, for error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaptiveField {
    Threshold,
    MinSamples,
    Parallelism,
}

impl AdaptiveField {
    /// The field's path in the configuration.
    pub fn config_param(self) -> &'static str {
        match self {
            AdaptiveField::Threshold => "adaptive.threshold",
            AdaptiveField::MinSamples => "adaptive.min_samples",
            AdaptiveField::Parallelism => "adaptive.parallelism",
        }
    }

    /// The field's path in a request's `algorithm` override.
    pub fn request_param(self) -> &'static str {
        match self {
            AdaptiveField::Threshold => "algorithm.adaptive.threshold",
            AdaptiveField::MinSamples => "algorithm.adaptive.min_samples",
            AdaptiveField::Parallelism => "algorithm.adaptive.parallelism",
        }
    }
}

/// Checks adaptive settings against the endpoint's `max_budget`. The error is the field and
/// what is wrong with it ("must be …, got …"), so the configuration and a request override can
/// each report it under its own path.
pub fn check_adaptive(a: &AdaptiveConfig, max_budget: u32) -> Result<(), (AdaptiveField, String)> {
    if let Some(t) = a.threshold
        && !(t.is_finite() && t > 0.0 && t <= 1.0)
    {
        return Err((
            AdaptiveField::Threshold,
            format!("must be above 0 and at most 1, got {t}"),
        ));
    }
    if let Some(m) = a.min_samples
        && !(1..=max_budget).contains(&m)
    {
        return Err((
            AdaptiveField::MinSamples,
            format!("must be between 1 and max_budget ({max_budget}), got {m}"),
        ));
    }
    if a.parallelism == Some(0) {
        return Err((
            AdaptiveField::Parallelism,
            "must be at least 1, got 0".to_owned(),
        ));
    }
    Ok(())
}

fn check_temperature(param: &'static str, value: Option<f64>) -> Result<(), ConfigError> {
    match value {
        Some(t) if !(0.0..=2.0).contains(&t) => Err(ConfigError::invalid(
            param,
            format!("{param} must be between 0 and 2, got {t}"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {

    use crate::config::WorkerConfig;

    fn cfg(json: &str) -> WorkerConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn accepts_guide_config() {
        cfg(r#"{"model":"gpt-4o-mini","endpoint":"auto","tool_vote":"tool_name"}"#)
            .validate()
            .unwrap();
    }

    #[test]
    fn rejects_bad_budget_and_names_the_field() {
        let e = cfg(r#"{"model":"m","budget":0}"#).validate().unwrap_err();
        assert_eq!(e.param(), Some("budget"));
        let e = cfg(r#"{"model":"m","budget":20,"max_budget":10}"#)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("max_budget (10)"), "{e}");
        let e = cfg(r#"{"model":"m","max_budget":1001}"#)
            .validate()
            .unwrap_err();
        assert_eq!(e.param(), Some("max_budget"));
    }

    #[test]
    fn rejects_invalid_regex() {
        let e = cfg(r#"{"model":"m","regex_patterns":["ok","("]}"#)
            .validate()
            .unwrap_err();
        assert!(e.to_string().starts_with("regex_patterns[1] \"(\""), "{e}");
    }

    #[test]
    fn rejects_bad_endpoint_and_reward_model() {
        assert_eq!(
            cfg(r#"{"model":"m","endpoint":"localhost:8000"}"#)
                .validate()
                .unwrap_err()
                .param(),
            Some("endpoint")
        );
        assert_eq!(
            cfg(r#"{"model":"m","alg":"best-of-n","rm_name":"Qwen/PRM"}"#)
                .validate()
                .unwrap_err()
                .param(),
            Some("rm_endpoint")
        );
    }

    #[test]
    fn rejects_unbounded_timeouts_with_their_param() {
        for field in [
            "connect_timeout_secs",
            "call_timeout_secs",
            "request_timeout_secs",
        ] {
            for v in ["1e20", "-1", "0"] {
                let e = cfg(&format!(r#"{{"model":"m","upstream":{{"{field}":{v}}}}}"#))
                    .validate()
                    .unwrap_err();
                assert_eq!(
                    e.param(),
                    Some(format!("upstream.{field}").as_str()),
                    "{field}={v}"
                );
            }
        }
    }

    #[test]
    fn adaptive_settings_are_bounded_and_name_their_field() {
        cfg(r#"{"model":"m","adaptive":{"rule":"beta"}}"#)
            .validate()
            .unwrap();
        cfg(r#"{"model":"m","adaptive":{"rule":"its_hub","threshold":1,"min_samples":16,"parallelism":16}}"#)
            .validate()
            .unwrap();
        let cases = [
            (r#"{"rule":"beta","threshold":0}"#, "adaptive.threshold"),
            (r#"{"rule":"beta","threshold":1.01}"#, "adaptive.threshold"),
            (
                r#"{"rule":"dirichlet","min_samples":0}"#,
                "adaptive.min_samples",
            ),
            (
                r#"{"rule":"dirichlet","min_samples":17}"#,
                "adaptive.min_samples",
            ),
            (
                r#"{"rule":"its_hub","parallelism":0}"#,
                "adaptive.parallelism",
            ),
        ];
        for (adaptive, param) in cases {
            let e = cfg(&format!(r#"{{"model":"m","adaptive":{adaptive}}}"#))
                .validate()
                .unwrap_err();
            assert_eq!(e.param(), Some(param), "{adaptive}: {e}");
        }
        let e = cfg(r#"{"model":"m","alg":"best-of-n","adaptive":{"rule":"beta"}}"#)
            .validate()
            .unwrap_err();
        assert_eq!(e.param(), Some("adaptive"));
        assert!(
            serde_json::from_str::<WorkerConfig>(r#"{"model":"m","adaptive":{"rule":"vibes"}}"#)
                .is_err()
        );
    }

    #[test]
    fn max_budget_default_is_16_and_1000_still_allowed_explicitly() {
        let c = cfg(r#"{"model":"m"}"#);
        assert_eq!(c.max_budget(), 16);
        cfg(r#"{"model":"m","max_budget":1000,"budget":1000}"#)
            .validate()
            .unwrap();
        let e = cfg(r#"{"model":"m","budget":17}"#).validate().unwrap_err();
        assert_eq!(e.param(), Some("budget"));
    }
}
