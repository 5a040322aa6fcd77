//! A data-parallel step's figures over every rank: each rank's per-pair
//! log-probabilities and losses gathered in rank order (rank slices are
//! contiguous, so this is the global batch's order), token counts and the
//! statistics' sums added, so every rank's [`crate::StepRecord`] describes
//! the global batch, as one rank stepping on all of it would.

use daa_core::preference::{PAIR_INPUT_COLUMNS, PairLogps, PairLoss};

use super::collective::{Collective, CollectiveError};
use crate::eval::StatsSums;

/// What a step computed on one rank (or, gathered, on all).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepFigures {
    /// Per pair: the loss's inputs.
    pub inputs: Vec<PairLogps>,
    /// Per pair: its loss and rewards.
    pub losses: Vec<PairLoss>,
    /// Tokens of the step's sequences.
    pub tokens: usize,
    /// Sums of the batch's top-k statistics.
    pub stats: StatsSums,
    /// `Σ z` over the chosen and rejected completions' positions.
    pub logit_sums: [Option<f64>; 2],
    /// The entropy floor term's value.
    pub floor: f64,
}

const LOSS_COLUMNS: usize = 7;

fn loss_columns(l: &PairLoss) -> [f64; LOSS_COLUMNS] {
    [l.loss, l.grad_policy_chosen, l.grad_policy_rejected, l.chosen_reward, l.rejected_reward, l.margin, l.accuracy]
}

impl StepFigures {
    fn to_bytes(&self) -> Vec<u8> {
        let optional = |v: Option<f64>| [f64::from(u8::from(v.is_some())), v.unwrap_or(0.0)];
        let [chosen, rejected] = self.logit_sums;
        let mut values: Vec<f64> = vec![
            self.inputs.len() as f64,
            self.tokens as f64,
            self.stats.topk_entropy,
            self.stats.topk_mass,
            self.stats.entropy,
            self.stats.rows as f64,
            self.floor,
        ];
        values.extend(optional(chosen));
        values.extend(optional(rejected));
        for (input, loss) in self.inputs.iter().zip(&self.losses) {
            values.extend(input.to_columns());
            values.extend(loss_columns(loss));
        }
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let values: Vec<f64> =
            bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        let (head, pairs) = values.split_at_checked(11)?;
        let n = head[0] as usize;
        if pairs.len() != n * (PAIR_INPUT_COLUMNS + LOSS_COLUMNS) {
            return None;
        }
        let optional = |flag: f64, v: f64| (flag != 0.0).then_some(v);
        let (mut inputs, mut losses) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for row in pairs.chunks_exact(PAIR_INPUT_COLUMNS + LOSS_COLUMNS) {
            inputs.push(PairLogps::from_columns(&row[..PAIR_INPUT_COLUMNS]));
            let l = &row[PAIR_INPUT_COLUMNS..];
            losses.push(PairLoss {
                loss: l[0],
                grad_policy_chosen: l[1],
                grad_policy_rejected: l[2],
                chosen_reward: l[3],
                rejected_reward: l[4],
                margin: l[5],
                accuracy: l[6],
            });
        }
        Some(Self {
            inputs,
            losses,
            tokens: head[1] as usize,
            stats: StatsSums { topk_entropy: head[2], topk_mass: head[3], entropy: head[4], rows: head[5] as usize },
            floor: head[6],
            logit_sums: [optional(head[7], head[8]), optional(head[9], head[10])],
        })
    }

    /// Every rank's figures together, in rank order (every rank must call it).
    pub fn gather(self, collective: &mut dyn Collective) -> Result<Self, CollectiveError> {
        let (rank, world) = (collective.rank(), collective.world_size());
        let mine = self.to_bytes();
        let mut all = Self::default();
        for root in 0..world {
            let mut bytes = if root == rank { mine.clone() } else { Vec::new() };
            collective.broadcast_bytes(root, &mut bytes)?;
            let part = Self::from_bytes(&bytes).ok_or(CollectiveError::Transport {
                operation: "gathering the step's figures",
                message: format!("rank {root} sent {} bytes that are not a step's figures", bytes.len()),
            })?;
            all.inputs.extend(part.inputs);
            all.losses.extend(part.losses);
            all.tokens += part.tokens;
            all.stats.topk_entropy += part.stats.topk_entropy;
            all.stats.topk_mass += part.stats.topk_mass;
            all.stats.entropy += part.stats.entropy;
            all.stats.rows += part.stats.rows;
            all.floor += part.floor;
            for (sum, add) in all.logit_sums.iter_mut().zip(part.logit_sums) {
                *sum = match (*sum, add) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
            }
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_survive_the_bytes() {
        let figures = StepFigures {
            inputs: vec![PairLogps::from_columns(&[-1.5, -2.25, -1.0, -3.0, 4.0, 2.0])],
            losses: vec![PairLoss { loss: 0.7, margin: 0.1, accuracy: 1.0, ..PairLoss::default() }],
            tokens: 17,
            stats: StatsSums { topk_entropy: 1.5, topk_mass: 0.9, entropy: 2.0, rows: 3 },
            logit_sums: [Some(-12.5), None],
            floor: 0.25,
        };
        assert_eq!(StepFigures::from_bytes(&figures.to_bytes()), Some(figures));
        assert_eq!(StepFigures::from_bytes(&[0u8; 16]), None);
    }
}
