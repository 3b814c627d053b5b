//! inferscale operator: reconciles `ScalingEndpoint` objects into configured inferscale workers,
//! their Service, and optionally an in-cluster vLLM model server on GPU nodes.
//!
//! The reconcile is a pipeline of plain functions, one module each:
//! [`dereference`] (fetch referenced Secrets) → [`validate`] (render and check the worker config)
//! → [`build`] (desired children, pure) → [`apply`] (server-side apply, deletions, Events)
//! → [`status`] (conditions, pure). [`controller`] wires them to watches.

pub mod apply;
pub mod apply_failure;
pub mod build;
pub mod config_rollout;
pub mod controller;
pub mod crd;
pub mod custom_endpoint;
pub mod dereference;
pub mod digest;
pub mod error;
pub mod layout;
pub mod leader;
pub mod metrics;
pub mod probe;
pub mod problem;
pub mod run;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod validate;
pub mod vllm_key;
pub mod workload_health;
