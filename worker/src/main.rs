use std::process::ExitCode;

use clap::Parser;
use inferscale_worker::server::{Cli, init_logging, serve, shutdown_signal};

fn main() -> ExitCode {
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
