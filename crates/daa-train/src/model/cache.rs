//! The key/value cache of incremental decoding.
//!
//! Each layer keeps the rotated keys and the values of every column seen so
//! far, `[rows, kv_heads, columns, h]` (before grouped-query heads are
//! repeated). A call of [`super::CausalLm::hidden`] with a cache attends to
//! the cached columns and appends its own, so generating token `n + 1`
//! costs one position's work instead of `n + 1`.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Cached keys and values of one decoder layer.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
}

impl<B: Backend> Default for LayerCache<B> {
    fn default() -> Self {
        Self { keys: None, values: None }
    }
}

impl<B: Backend> LayerCache<B> {
    /// Appends this call's keys and values (`[rows, kv_heads, seq, h]`) and
    /// returns every column's.
    pub(crate) fn append(&mut self, keys: Tensor<B, 4>, values: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let keys = match self.keys.take() {
            Some(past) => Tensor::cat(vec![past, keys], 2),
            None => keys,
        };
        let values = match self.values.take() {
            Some(past) => Tensor::cat(vec![past, values], 2),
            None => values,
        };
        self.keys = Some(keys.clone());
        self.values = Some(values.clone());
        (keys, values)
    }
}

/// Keys and values of every layer for a batch of `rows` sequences, and how
/// many columns (tokens, padding included) they hold.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<LayerCache<B>>,
    pub(crate) rows: Option<usize>,
    pub(crate) columns: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model of `layers` decoder layers.
    pub fn new(layers: usize) -> Self {
        Self { layers: (0..layers).map(|_| LayerCache::default()).collect(), rows: None, columns: 0 }
    }

    /// Columns cached so far (the next call's first column).
    pub fn len(&self) -> usize {
        self.columns
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.columns == 0
    }

    /// Rows (sequences) of the batch the cache holds, once something is cached.
    pub fn rows(&self) -> Option<usize> {
        self.rows
    }
}
