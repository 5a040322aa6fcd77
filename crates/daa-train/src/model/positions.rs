//! Where each row's tokens sit, and which keys each query may see.
//!
//! Columns are the token slots of a batch, counted from the first call of a
//! [`super::KvCache`] (0 without one). Row `r` may start with `pad_r` columns
//! of left padding: its token in column `c` has position `c − pad_r`, and its
//! padding columns are never attended to. Right padding needs no mention: a
//! real token never sees a later column.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

/// The layout of a batch's rows (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    left_padding: Option<Vec<usize>>,
}

impl Positions {
    /// Every row starts at column 0 (no padding, or padding on the right).
    pub fn from_zero() -> Self {
        Self { left_padding: None }
    }

    /// Row `r` starts with `pads[r]` columns of left padding.
    pub fn left_padded(pads: Vec<usize>) -> Self {
        if pads.iter().all(|&p| p == 0) { Self::from_zero() } else { Self { left_padding: Some(pads) } }
    }

    /// Left padding per row, when any row has some.
    pub fn left_padding(&self) -> Option<&[usize]> {
        self.left_padding.as_deref()
    }

    /// Positions of columns `first..first + seq` of every row, row-major
    /// (padding columns get position 0; they are hidden as keys).
    pub(crate) fn of_columns(&self, rows: usize, first: usize, seq: usize) -> Vec<usize> {
        let pads = self.left_padding.as_deref();
        (0..rows)
            .flat_map(|r| {
                let pad = pads.map_or(0, |p| p[r]);
                (first..first + seq).map(move |c| c.saturating_sub(pad))
            })
            .collect()
    }
}

/// `true` where query column `q` (of `past..past + seq`) must not see key
/// column `k` (of `0..past + seq`), `[rows or 1, 1, seq, keys]`:
/// `k > q` (the future); with a sliding window `w`, `q − k ≥ w`; with left
/// padding, `k < pad_r` unless `k = q` (a padding query sees itself, so its
/// softmax has a term and stays finite; nothing reads its output).
/// `None` when every key is visible (one new column, no padding, no window).
/// Built on the device from index ranges; nothing `[seq × keys]` is made on the host.
pub(crate) fn hidden_keys<B: Backend>(
    rows: usize,
    past: usize,
    seq: usize,
    pads: Option<&[usize]>,
    window: Option<usize>,
    device: &B::Device,
) -> Option<Tensor<B, 4, Bool>> {
    let keys = past + seq;
    if seq == 1 && pads.is_none() && window.is_none() {
        return None;
    }
    let query = Tensor::<B, 1, Int>::arange(past as i64..keys as i64, device).reshape([seq, 1]).expand([seq, keys]);
    let key = Tensor::<B, 1, Int>::arange(0..keys as i64, device).reshape([1, keys]).expand([seq, keys]);
    let mut hidden = key.clone().greater(query.clone());
    if let Some(w) = window {
        hidden = hidden.bool_or((query.clone() - key.clone()).greater_equal_elem(w as i64));
    }
    let Some(pads) = pads else {
        return Some(hidden.reshape([1, 1, seq, keys]));
    };
    let pad: Vec<i64> = pads.iter().map(|&p| p as i64).collect();
    let pad = Tensor::<B, 1, Int>::from_data(TensorData::new(pad, [rows]), device)
        .reshape([rows, 1, 1])
        .expand([rows, seq, keys]);
    let per_row = |t: Tensor<B, 2, Bool>| t.unsqueeze_dim::<3>(0).expand([rows, seq, keys]);
    let padding_key = key.clone().unsqueeze_dim::<3>(0).expand([rows, seq, keys]).lower(pad);
    let itself = per_row(key.equal(query));
    let hidden = per_row(hidden).bool_or(padding_key.bool_and(itself.bool_not()));
    Some(hidden.reshape([rows, 1, seq, keys]))
}
