//! # mock-llm — a TEST DOUBLE for LLM providers
//!
//! Not a model and not a proxy: a scripted fake upstream used by inferscale's
//! tests, benchmarks and demo. It speaks the OpenAI chat-completions API
//! (JSON and SSE) and the AWS Bedrock Converse API (with SigV4 verification),
//! answers from a scenario (cycled answers, judge replies, injected latency
//! and faults), and exposes a `/_mock/*` control API so tests can inspect and
//! synchronise with it. It never contacts anything; it only listens.
//!
//! ```text
//! mock-llm --host 127.0.0.1 --port 8100 [--scenario FILE.yaml|json] [--seed N]
//!          [--aws-access-key-id ID --aws-secret-access-key SECRET [--aws-session-token T]]
//! ```
//!
//! Prints `mock-llm listening on http://HOST:PORT` once bound (`--port 0`
//! picks a free port and prints it). See README.md for the control API and
//! the scenario format.

mod converse;
mod engine;
mod judge;
mod openai;
mod pooling;
mod rng;
mod scenario;
mod server;
mod sigv4;
mod state;
mod stepwise;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::scenario::Scenario;
use crate::sigv4::Credentials;
use crate::state::AppState;

/// Test double for LLM providers (OpenAI chat completions, Bedrock Converse).
#[derive(Debug, Parser)]
#[command(name = "mock-llm", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8100)]
    port: u16,
    /// Scenario file (YAML or JSON). Default: the built-in demo scenario.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Seed for fault rates and latency sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Access key id that Bedrock Converse requests must be signed with.
    #[arg(
        long,
        env = "MOCK_LLM_AWS_ACCESS_KEY_ID",
        requires = "aws_secret_access_key"
    )]
    aws_access_key_id: Option<String>,
    /// Secret access key for SigV4 verification.
    #[arg(
        long,
        env = "MOCK_LLM_AWS_SECRET_ACCESS_KEY",
        requires = "aws_access_key_id"
    )]
    aws_secret_access_key: Option<String>,
    /// Session token that must accompany signed requests (`x-amz-security-token`).
    #[arg(
        long,
        env = "MOCK_LLM_AWS_SESSION_TOKEN",
        requires = "aws_access_key_id"
    )]
    aws_session_token: Option<String>,
}

fn load_scenario(path: Option<&PathBuf>) -> Result<Scenario, String> {
    let Some(path) = path else {
        return Ok(Scenario::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read scenario {}: {e}", path.display()))?;
    Scenario::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Resolves on SIGTERM or SIGINT. Handlers are installed when this is
/// called (not when first polled), so call it before announcing readiness.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let scenario = match load_scenario(cli.scenario.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mock-llm: {e}");
            return ExitCode::from(2);
        }
    };
    let aws = match (cli.aws_access_key_id, cli.aws_secret_access_key) {
        (Some(access_key_id), Some(secret_access_key)) => Some(Credentials {
            access_key_id,
            secret_access_key,
            session_token: cli.aws_session_token,
        }),
        _ => None,
    };
    let state = AppState::new(scenario, cli.seed, aws);
    let listener = match tokio::net::TcpListener::bind((cli.host.as_str(), cli.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-llm: cannot listen on {}:{}: {e}", cli.host, cli.port);
            return ExitCode::from(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mock-llm: {e}");
            return ExitCode::from(1);
        }
    };
    let shutdown = shutdown_signal();
    println!("mock-llm listening on http://{addr}");
    let _ = std::io::stdout().flush();
    let app = server::router(state);
    tokio::select! {
        r = axum::serve(listener, app) => {
            if let Err(e) = r {
                eprintln!("mock-llm: server error: {e}");
                return ExitCode::from(1);
            }
        }
        _ = shutdown => {}
    }
    ExitCode::SUCCESS
}
