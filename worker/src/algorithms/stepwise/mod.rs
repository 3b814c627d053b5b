//! Step-wise search guided by a process reward model (issue 9): particle filtering, beam
//! search and PRM-scored best-of-n. `steps` (joining, stop rules) and `weights` (logit,
//! softmax, resampling, selection) are pure; the PRM client is `crate::reward`.

pub mod steps;
pub mod weights;
