//! Validation of a [`WorkerConfig`] before anything is applied. Pure: no I/O except reading
//! referenced secret files, which is done later by the runtime.

use super::{AlgorithmName, WorkerConfig};

/// Highest budget any configuration may allow (the reference service's limit).
pub const MAX_BUDGET_LIMIT: u32 = 1000;
/// `max_budget` of a ScalingEndpoint that sets none: a bound on what one request can cost.
pub const DEFAULT_MAX_BUDGET: u32 = 16;

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
    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
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
        if let Some(rm) = &self.rm_name
            && rm != "llm-judge"
        {
            return Err(ConfigError::invalid(
                "rm_name",
                format!("rm_name {rm:?} is not supported: the only reward model is \"llm-judge\""),
            ));
        }
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
        if self.judge_top_n == Some(0) {
            return Err(ConfigError::invalid(
                "judge_top_n",
                "judge_top_n must be at least 1",
            ));
        }
        if self.judge_max_tokens == Some(0) {
            return Err(ConfigError::invalid(
                "judge_max_tokens",
                "judge_max_tokens must be at least 1",
            ));
        }
        if let Some(c) = &self.judge_criterion
            && c.trim().is_empty()
        {
            return Err(ConfigError::invalid(
                "judge_criterion",
                "judge_criterion must not be empty",
            ));
        }
        if let Some(u) = &self.upstream {
            for (param, v) in [
                ("upstream.connect_timeout_secs", u.connect_timeout_secs),
                ("upstream.call_timeout_secs", u.call_timeout_secs),
                ("upstream.request_timeout_secs", u.request_timeout_secs),
            ] {
                if let Some(v) = v
                    && !(v.is_finite() && v > 0.0)
                {
                    return Err(ConfigError::invalid(
                        param,
                        format!("{param} must be a positive number of seconds"),
                    ));
                }
            }
            if matches!(u.candidates_per_call, Some(n) if !(1..=128).contains(&n)) {
                return Err(ConfigError::invalid(
                    "upstream.candidates_per_call",
                    "upstream.candidates_per_call must be between 1 and 128",
                ));
            }
            if u.max_concurrency == Some(0) {
                return Err(ConfigError::invalid(
                    "upstream.max_concurrency",
                    "upstream.max_concurrency must be at least 1",
                ));
            }
            if u.min_successful_candidates == Some(0) {
                return Err(ConfigError::invalid(
                    "upstream.min_successful_candidates",
                    "upstream.min_successful_candidates must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

fn check_endpoint(param: &'static str, value: &str) -> Result<(), ConfigError> {
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
            Some("rm_name")
        );
    }
}
