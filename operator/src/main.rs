//! `inferscale-operator`: `run` the controller, print the `crd`, or `probe` URLs (helm test).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use inferscale_operator::run::{RunArgs, run};

#[derive(Parser)]
#[command(
    name = "inferscale-operator",
    version,
    about = "Kubernetes operator for inferscale ScalingEndpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(Box<RunArgs>),
    /// Print the ScalingEndpoint CustomResourceDefinition as YAML.
    Crd,
    /// GET each http:// URL and fail unless every one answers 2xx (the chart's `helm test`).
    Probe {
        /// URLs to GET, e.g. http://inferscale-metrics.inferscale-system.svc:8080/healthz.
        #[arg(required = true)]
        urls: Vec<String>,
        /// Seconds each connection and read may take.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match inferscale_operator::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Probe { urls, timeout } => {
            let timeout = std::time::Duration::from_secs(timeout);
            let mut ok = true;
            for url in &urls {
                match inferscale_operator::probe::probe(url, timeout) {
                    Ok(status) => println!("ok {status} {url}"),
                    Err(e) => {
                        eprintln!("probe failed: {e}");
                        ok = false;
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Run(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "operator stopped");
                    eprintln!("inferscale-operator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
