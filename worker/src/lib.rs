//! inferscale worker: an OpenAI-compatible endpoint that spends a budget of N upstream calls per
//! request and returns the best answer (self-consistency voting or best-of-n with an LLM judge).
//!
//! Layout, each layer importing only those below it: [`server`] → [`api`] (thin HTTP handlers)
//! → [`plan`] (budget and call planning) and [`runtime`] (a configuration made ready) →
//! [`algorithms`] (vote, best-of-n) → [`judge`] → [`fanout`] (concurrent upstream calls) →
//! [`providers`] (one module per upstream family behind one trait) → [`config`]. [`config`] is
//! the configuration type shared with the operator; without the default `server` feature only
//! it is built. [`logging`] (feature `logging`, part of `server`) is the log setup both binaries
//! use.

pub mod config;
#[cfg(feature = "logging")]
pub mod logging;

#[cfg(feature = "server")]
pub mod algorithms;
#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod fanout;
#[cfg(feature = "server")]
pub mod judge;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod plan;
#[cfg(feature = "server")]
pub mod providers;
#[cfg(feature = "server")]
mod rand;
#[cfg(feature = "server")]
pub mod reward;
#[cfg(feature = "server")]
pub mod runtime;
#[cfg(feature = "server")]
pub mod server;
