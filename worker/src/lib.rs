//! inferscale worker: an OpenAI-compatible endpoint that spends a budget of N upstream calls per
//! request and returns the best answer (self-consistency voting or best-of-n with an LLM judge).
//!
//! Without the default `server` feature only [`config`] is built; the operator uses it to write
//! the worker's configuration.

pub mod config;
