//! The over-optimisation testbed: a synthetic task whose gold reward is
//! known exactly ([`task`]), and preference labels drawn from it like
//! annotators' ([`labels`]); without the `io` feature pure Rust, no files,
//! so it runs in the browser too. With it, [`build`] makes and caches the
//! SFT reference policy and the labelled pairs.

#[cfg(feature = "io")]
pub mod build;
pub mod labels;
pub mod task;

pub use labels::{first_preferred, preference_probability, ultrafeedback_row};
pub use task::{ALPHABET, Constraints, GoldBreakdown, TaskShape, behaviour_completion, gold_breakdown, gold_reward};
