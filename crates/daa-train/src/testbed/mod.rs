//! The over-optimisation testbed: a synthetic task whose gold reward is
//! known exactly ([`task`]), preference labels drawn from it like
//! annotators' ([`labels`]), and the stages that make a reference policy and
//! labelled pairs ([`stages`], [`spec`], [`byte_chat`]), the study's prompt
//! splits and their evaluation after training ([`splits`], [`split_eval`]); without the `io` feature
//! pure Rust, no files, so it runs in the browser too. With it, [`build`]
//! runs the stages once and caches the reference checkpoint and the pairs.

#[cfg(feature = "io")]
pub mod build;
pub mod byte_chat;
pub mod labels;
pub mod spec;
pub mod split_eval;
pub mod splits;
pub mod stages;
pub mod task;

pub use labels::{first_preferred, preference_probability, ultrafeedback_row};
pub use spec::TestbedSpec;
pub use task::{ALPHABET, Constraints, GoldBreakdown, TaskShape, behaviour_completion, gold_reward};
