//! Where each row's tokens sit, and which keys each query may see.
//!
//! Columns are the token slots of a batch, counted from the first call of a
//! [`super::KvCache`] (0 without one). Three layouts:
//!
//! - **from zero**: every row's first token is in column 0 (right padding
//!   needs no mention: a real token never sees a later column);
//! - **left padded**: row `r` starts with `pad_r` columns of padding; its
//!   token in column `c` has position `c − pad_r`, and its padding columns
//!   are never attended to;
//! - **packed**: row `r` holds several sequences one after another, starting
//!   at columns `0 = o_{r,0} < o_{r,1} < …`; the token in column `c` of the
//!   sequence starting at `o` has position `c − o` and sees only the keys of
//!   its own sequence (attention is block-diagonal). Columns after the last
//!   sequence's end are right padding.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::error::ModelError;

/// The layout of a batch's rows (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    layout: Layout,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Layout {
    #[default]
    FromZero,
    LeftPadded(Vec<usize>),
    /// Each row's sequence starts (the first is 0).
    Packed(Vec<Vec<usize>>),
}

impl Positions {
    /// Every row starts at column 0 (no padding, or padding on the right).
    pub fn from_zero() -> Self {
        Self { layout: Layout::FromZero }
    }

    /// Row `r` starts with `pads[r]` columns of left padding.
    pub fn left_padded(pads: Vec<usize>) -> Self {
        if pads.iter().all(|&p| p == 0) { Self::from_zero() } else { Self { layout: Layout::LeftPadded(pads) } }
    }

    /// Row `r` holds sequences starting at columns `starts[r]` (increasing,
    /// the first 0): positions restart at each, and no query sees another
    /// sequence's keys.
    pub fn packed(starts: Vec<Vec<usize>>) -> Self {
        if starts.iter().all(|row| row.len() <= 1) {
            Self::from_zero()
        } else {
            Self { layout: Layout::Packed(starts) }
        }
    }

    /// Left padding per row, when any row has some.
    pub fn left_padding(&self) -> Option<&[usize]> {
        match &self.layout {
            Layout::LeftPadded(pads) => Some(pads),
            _ => None,
        }
    }

    /// Where each row's sequences start, when rows hold several.
    pub fn packed_starts(&self) -> Option<&[Vec<usize>]> {
        match &self.layout {
            Layout::Packed(starts) => Some(starts),
            _ => None,
        }
    }

    /// Whether every row's positions are its columns (`0, 1, 2, …`).
    pub(crate) fn is_from_zero(&self) -> bool {
        self.layout == Layout::FromZero
    }

    /// Checks the layout against a call of `rows` rows and `seq` new columns
    /// after `past` cached ones.
    pub(crate) fn check(&self, rows: usize, past: usize, seq: usize) -> Result<(), ModelError> {
        match &self.layout {
            Layout::FromZero => Ok(()),
            Layout::LeftPadded(pads) => {
                if pads.len() != rows {
                    return Err(ModelError::Batch(format!("{} left-padding counts for {rows} rows", pads.len())));
                }
                match pads.iter().enumerate().find(|&(_, &p)| p >= past + seq) {
                    Some((r, &p)) => Err(ModelError::Batch(format!(
                        "row {r} has {p} columns of left padding but the batch has only {} columns: no token",
                        past + seq
                    ))),
                    None => Ok(()),
                }
            }
            Layout::Packed(starts) => {
                if past > 0 {
                    return Err(ModelError::Batch(
                        "packed rows (several sequences per row) cannot extend a key/value cache".into(),
                    ));
                }
                if starts.len() != rows {
                    return Err(ModelError::Batch(format!(
                        "packed sequence starts for {} rows, the batch has {rows}",
                        starts.len()
                    )));
                }
                for (r, row) in starts.iter().enumerate() {
                    let ordered = row.first() == Some(&0) && row.windows(2).all(|w| w[0] < w[1]);
                    if !ordered || row.last().is_some_and(|&o| o >= seq) {
                        return Err(ModelError::Batch(format!(
                            "row {r}'s packed sequences start at columns {row:?}: expected 0 first, increasing, below {seq}"
                        )));
                    }
                }
                Ok(())
            }
        }
    }

    /// Positions of columns `first..first + seq` of every row, row-major
    /// (padding columns get position 0; they are hidden as keys).
    pub(crate) fn of_columns(&self, rows: usize, first: usize, seq: usize) -> Vec<usize> {
        (0..rows)
            .flat_map(|r| {
                (first..first + seq).map(move |c| match &self.layout {
                    Layout::FromZero => c,
                    Layout::LeftPadded(pads) => c.saturating_sub(pads[r]),
                    Layout::Packed(starts) => c - start_of(&starts[r], c),
                })
            })
            .collect()
    }
}

/// Which of a row's packed sequences holds column `c` (the last start `≤ c`).
fn sequence_of(starts: &[usize], c: usize) -> usize {
    starts.partition_point(|&o| o <= c) - 1
}

/// The start of the packed sequence that holds column `c`.
fn start_of(starts: &[usize], c: usize) -> usize {
    starts[sequence_of(starts, c)]
}

/// `true` where query column `q` (of `past..past + seq`) must not see key
/// column `k` (of `0..past + seq`), `[rows or 1, 1, seq, keys]`:
/// `k > q` (the future); with a sliding window `w`, `q − k ≥ w`; with left
/// padding, `k < pad_r` unless `k = q` (a padding query sees itself, so its
/// softmax has a term and stays finite; nothing reads its output); packed,
/// `k` in another sequence than `q`.
/// `None` when every key is visible (one new column, no padding, no window).
/// Built on the device from index ranges (packed: from each column's
/// sequence number); nothing `[seq × keys]` is made on the host.
pub(crate) fn hidden_keys<B: Backend>(
    rows: usize,
    past: usize,
    seq: usize,
    positions: &Positions,
    window: Option<usize>,
    device: &B::Device,
) -> Option<Tensor<B, 4, Bool>> {
    let keys = past + seq;
    if seq == 1 && positions.is_from_zero() && window.is_none() {
        return None;
    }
    let query = Tensor::<B, 1, Int>::arange(past as i64..keys as i64, device).reshape([seq, 1]).expand([seq, keys]);
    let key = Tensor::<B, 1, Int>::arange(0..keys as i64, device).reshape([1, keys]).expand([seq, keys]);
    let mut hidden = key.clone().greater(query.clone());
    if let Some(w) = window {
        hidden = hidden.bool_or((query.clone() - key.clone()).greater_equal_elem(w as i64));
    }
    let per_row = |t: Tensor<B, 2, Bool>| t.unsqueeze_dim::<3>(0).expand([rows, seq, keys]);
    let hidden = match &positions.layout {
        Layout::FromZero => return Some(hidden.reshape([1, 1, seq, keys])),
        Layout::LeftPadded(pads) => {
            let pad: Vec<i64> = pads.iter().map(|&p| p as i64).collect();
            let pad = Tensor::<B, 1, Int>::from_data(TensorData::new(pad, [rows]), device)
                .reshape([rows, 1, 1])
                .expand([rows, seq, keys]);
            let padding_key = key.clone().unsqueeze_dim::<3>(0).expand([rows, seq, keys]).lower(pad);
            let itself = per_row(key.equal(query));
            per_row(hidden).bool_or(padding_key.bool_and(itself.bool_not()))
        }
        Layout::Packed(starts) => {
            // Packed rows never extend a cache: keys = seq, query column = key column.
            let sequence: Vec<i64> =
                starts.iter().flat_map(|row| (0..seq).map(move |c| sequence_of(row, c) as i64)).collect();
            let sequence = Tensor::<B, 2, Int>::from_data(TensorData::new(sequence, [rows, seq]), device);
            let of_query = sequence.clone().reshape([rows, seq, 1]).expand([rows, seq, keys]);
            let of_key = sequence.reshape([rows, 1, keys]).expand([rows, seq, keys]);
            per_row(hidden).bool_or(of_query.not_equal(of_key))
        }
    };
    Some(hidden.reshape([rows, 1, seq, keys]))
}
