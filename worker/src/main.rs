use std::process::ExitCode;

use clap::Parser;
use inferscale_worker::server::{Cli, init_logging, serve, shutdown_signal};

// Each request fans out into N upstream calls whose bodies, headers and JSON are small,
// short-lived and often freed on another thread than the one that allocated them; glibc malloc
// spent ~18% of the worker's CPU on them (issue 14). Measured with tests/bench/ab.sh, see
// BENCHMARKS.md, "Global allocator".
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's memory options. It reads them from the environment once, as the process starts
/// (before `main`): setting them later with `mi_option_set` was measured not to help (peak RSS
/// 32 MB at budget 8, against 23 MB with the variables present from the start; BENCHMARKS.md).
/// So when one is missing, the worker restarts itself in place (`exec`, same pid, same
/// arguments) with it set. A value given by the deployment is kept.
mod allocator {
    use std::ffi::OsString;

    /// Return freed pages to the OS at once (the default waits), and commit arena memory only
    /// when used: with mimalloc's defaults peak RSS grew by 8-10 MB, over 30 MB at budget 8.
    const MEMORY_OPTIONS: [(&str, &str); 2] = [
        ("MIMALLOC_PURGE_DELAY", "0"),
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    ];

    /// The options the environment does not set yet, with the worker's values.
    fn missing(env: impl Fn(&str) -> Option<OsString>) -> Vec<(&'static str, &'static str)> {
        MEMORY_OPTIONS
            .into_iter()
            .filter(|(name, _)| env(name).is_none())
            .collect()
    }

    /// Restarts the process with the missing options set; returns only when nothing is missing
    /// or the restart failed (then the worker runs with mimalloc's defaults, and says so).
    #[cfg(unix)]
    pub fn ensure_memory_options() {
        use std::os::unix::process::CommandExt;
        let missing = missing(|name| std::env::var_os(name));
        if missing.is_empty() {
            return;
        }
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                return eprintln!(
                    "inferscale-worker: {e}; mimalloc keeps its default memory options"
                );
            }
        };
        let mut again = std::process::Command::new(exe);
        again.args(std::env::args_os().skip(1)).envs(missing);
        // `exec` returns only on failure.
        let e = again.exec();
        eprintln!(
            "inferscale-worker: cannot restart with mimalloc's memory options ({e}); keeping its defaults"
        );
    }

    #[cfg(not(unix))]
    pub fn ensure_memory_options() {}

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn only_options_the_environment_lacks_are_added() {
            assert_eq!(missing(|_| None), MEMORY_OPTIONS.to_vec());
            assert!(missing(|_| Some("7".into())).is_empty());
            assert_eq!(
                missing(|name| (name == "MIMALLOC_PURGE_DELAY").then(|| "10".into())),
                vec![("MIMALLOC_ARENA_EAGER_COMMIT", "0")]
            );
        }
    }
}

fn main() -> ExitCode {
    allocator::ensure_memory_options();
    let startup = match Cli::parse().startup() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("inferscale-worker: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(startup.log_format, &startup.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("inferscale-worker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let addr = format!("{}:{}", startup.host, startup.port);
        let listener = match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("inferscale-worker: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
        // Tests and scripts wait for this line instead of sleeping.
        println!("inferscale-worker listening on http://{local}");
        tracing::info!(addr = %local, configured = startup.state.runtime.load().is_some(), "listening");
        match serve(listener, startup.state, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("inferscale-worker: server error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
