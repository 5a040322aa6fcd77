//! Preference data: rows from JSON Lines or Parquet in binarized
//! UltraFeedback's schema, rendered with the model's chat template, tokenised
//! and truncated into pairs of [`Sequence`](crate::batch::Sequence)s.

pub mod chat;
pub mod encode;
mod library_panics;
mod parquet_footer;
mod parquet_rows;
pub mod rows;
pub mod source;

pub use chat::{ChatTemplate, TextEncoder};
pub use encode::{EncodeOptions, EncodedPair, EncodedSet, encode_prompt, encode_rows};
pub use rows::{Example, Message, Prompt, RawRow, read_rows};
pub use source::{DataSource, RowIndex};
