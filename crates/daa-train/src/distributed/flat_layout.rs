//! The trained parameters as one flat f32 vector, divided over the ranks of
//! a sharded run (ZeRO): parameter `i` (in the model's visiting order,
//! flattened in burn's layout) occupies `offset_i .. offset_i + len_i`, the
//! vector is padded with zeros to `n·W` for `W` ranks, and rank `r` owns
//! `r·n .. (r+1)·n` with `n = ⌈Σ len_i / W⌉`.
//!
//! Parameter ids are random per process, so a layout names parameters; a
//! checkpoint's `layout.json` is this, and resuming onto another world size
//! re-slices the same flat vector ([`FlatLayout::with_world`]).

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// One parameter's place in the flat vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlatEntry {
    /// Its name in the checkpoint (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Its shape as stored in files.
    pub shape: Vec<usize>,
    /// First index in the flat vector.
    pub offset: usize,
    /// Values (`Π shape`).
    pub len: usize,
    /// Whether AdamW's weight decay applies.
    pub decay: bool,
}

/// Parameters laid end to end, and the ranks' slices of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlatLayout {
    /// Ranks the vector is divided over (`W`).
    pub world_size: usize,
    /// Every parameter, in order.
    pub entries: Vec<FlatEntry>,
}

/// Where a range of the flat vector falls in one parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Index of the parameter in [`FlatLayout::entries`].
    pub entry: usize,
    /// The values of that parameter (`0..len`).
    pub within: Range<usize>,
    /// The same values in the flat vector.
    pub flat: Range<usize>,
}

impl FlatLayout {
    /// The layout of parameters `(name, file shape, decays)` in order, over
    /// `world_size` ranks (at least 1).
    pub fn new(parameters: impl IntoIterator<Item = (String, Vec<usize>, bool)>, world_size: usize) -> Self {
        let mut offset = 0;
        let entries = parameters
            .into_iter()
            .map(|(name, shape, decay)| {
                let len = shape.iter().product();
                let entry = FlatEntry { name, shape, offset, len, decay };
                offset += len;
                entry
            })
            .collect();
        Self { world_size: world_size.max(1), entries }
    }

    /// Values of all parameters (`Σ len_i`).
    pub fn total(&self) -> usize {
        self.entries.last().map_or(0, |e| e.offset + e.len)
    }

    /// Values each rank owns (`n = ⌈total / W⌉`).
    pub fn shard_len(&self) -> usize {
        self.total().div_ceil(self.world_size)
    }

    /// The padded vector's length (`n·W`).
    pub fn padded_len(&self) -> usize {
        self.shard_len() * self.world_size
    }

    /// The flat range `rank` owns (its end may pass [`Self::total`]: padding).
    pub fn shard(&self, rank: usize) -> Range<usize> {
        let n = self.shard_len();
        rank * n..(rank + 1) * n
    }

    /// The same parameters over `world_size` ranks.
    pub fn with_world(&self, world_size: usize) -> Self {
        Self { world_size: world_size.max(1), entries: self.entries.clone() }
    }

    /// The parameters a flat range covers, in order (padding is in none).
    pub fn segments(&self, range: Range<usize>) -> Vec<Segment> {
        let first = self.entries.partition_point(|e| e.offset + e.len <= range.start);
        self.entries[first..]
            .iter()
            .enumerate()
            .take_while(|(_, e)| e.offset < range.end)
            .filter_map(|(i, e)| {
                let start = range.start.max(e.offset);
                let end = range.end.min(e.offset + e.len);
                (start < end).then(|| Segment {
                    entry: first + i,
                    within: start - e.offset..end - e.offset,
                    flat: start..end,
                })
            })
            .collect()
    }

    /// `Ok` when `other` lays out the same parameters (names and shapes in
    /// the same order; the world size may differ), else what differs.
    pub fn check_same_parameters(&self, other: &FlatLayout) -> Result<(), String> {
        if self.entries.len() != other.entries.len() {
            return Err(format!("{} parameters, expected {}", other.entries.len(), self.entries.len()));
        }
        for (mine, theirs) in self.entries.iter().zip(&other.entries) {
            if mine.name != theirs.name || mine.shape != theirs.shape {
                return Err(format!(
                    "parameter `{}` {:?} where `{}` {:?} was expected",
                    theirs.name, theirs.shape, mine.name, mine.shape
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(lens: &[usize], world: usize) -> FlatLayout {
        FlatLayout::new(lens.iter().enumerate().map(|(i, &l)| (format!("p{i}"), vec![l], i % 2 == 0)), world)
    }

    #[test]
    fn shards_cover_the_parameters_then_padding() {
        let l = layout(&[5, 3, 4], 5);
        assert_eq!((l.total(), l.shard_len(), l.padded_len()), (12, 3, 15));
        assert_eq!(l.shard(4), 12..15);
        assert!(l.segments(l.shard(4)).is_empty(), "the last rank holds padding only");
        let s = l.segments(l.shard(1));
        assert_eq!(
            s,
            vec![Segment { entry: 0, within: 3..5, flat: 3..5 }, Segment { entry: 1, within: 0..1, flat: 5..6 }]
        );
    }
}
