//! The testbed's synthetic task and its gold reward.
//!
//! A prompt asks for a word over the letters `a…p` (the alphabet `Σ`, 16
//! letters) that contains every letter of a required set `R`, none of a
//! forbidden set `F` (disjoint from `R`), and has a target length `L`:
//!
//! ```text
//! need cfk avoid bm length 8
//! ```
//!
//! For a completion `y = y_1 … y_n` (its characters, the end token excluded)
//! and `e = 1` when the model ended it itself (0 when it hit the length
//! limit), the gold reward is
//!
//! ```text
//! r(x, y) = cover − bad − repeat − length − ½·(1 − e)
//! cover   = |R ∩ {y_i}| / |R|
//! bad     = #{i : y_i ∈ F or y_i ∉ Σ} / max(n, 1)
//! repeat  = #{i : y_i = y_{i−1} or y_i = y_{i−2}} / max(n, 1)
//! length  = min(1, |n − L| / L)
//! ```
//!
//! so `r ≤ 1`, with equality for every word of length `L` that uses all of
//! `R`, nothing outside `Σ \ F`, and never repeats a letter within two
//! places. Many words reach it (the other `L − |R|` places are free), so a
//! policy can be best in many different ways; one that collapses onto a
//! single high-likelihood pattern tends to repeat itself and is penalised.

use crate::rng::splitmix64;

/// The letters words are made of.
pub const ALPHABET: [char; 16] = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p'];

/// Sizes of the task's prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskShape {
    /// `|R|`.
    pub required: usize,
    /// `|F|`.
    pub forbidden: usize,
    /// Shortest target length.
    pub min_length: usize,
    /// Longest target length.
    pub max_length: usize,
}

impl Default for TaskShape {
    fn default() -> Self {
        Self { required: 3, forbidden: 2, min_length: 6, max_length: 10 }
    }
}

/// One prompt: what a good word contains, avoids and how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraints {
    /// `R`, in alphabet order.
    pub required: Vec<char>,
    /// `F`, in alphabet order.
    pub forbidden: Vec<char>,
    /// `L`.
    pub length: usize,
}

/// Draws `count` distinct letters not in `taken`, in alphabet order.
fn distinct_letters(count: usize, taken: &[char], state: &mut u64) -> Vec<char> {
    let mut pool: Vec<char> = ALPHABET.iter().copied().filter(|c| !taken.contains(c)).collect();
    let mut picked = Vec::with_capacity(count);
    for _ in 0..count.min(pool.len()) {
        let i = (splitmix64(state) % pool.len() as u64) as usize;
        picked.push(pool.swap_remove(i));
    }
    picked.sort_unstable();
    picked
}

impl Constraints {
    /// Prompt `index` of the task drawn from `seed`: the same on every
    /// machine for the same seed, shape and index.
    pub fn draw(seed: u64, index: u64, shape: &TaskShape) -> Self {
        let mut state = seed ^ index.wrapping_mul(0xA24B_AED4_963E_E407);
        splitmix64(&mut state);
        let required = distinct_letters(shape.required, &[], &mut state);
        let forbidden = distinct_letters(shape.forbidden, &required, &mut state);
        let span = (shape.max_length.max(shape.min_length) - shape.min_length + 1) as u64;
        let length = shape.min_length + (splitmix64(&mut state) % span) as usize;
        Self { required, forbidden, length }
    }

    /// The prompt text, `need cfk avoid bm length 8`.
    pub fn to_text(&self) -> String {
        let letters = |s: &[char]| s.iter().collect::<String>();
        format!("need {} avoid {} length {}", letters(&self.required), letters(&self.forbidden), self.length)
    }

    /// Reads a prompt written by [`Constraints::to_text`] (surrounding
    /// whitespace allowed); the error says what does not fit.
    pub fn parse(text: &str) -> Result<Self, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let [need, required, avoid, forbidden, length_word, length] = words.as_slice() else {
            return Err(format!("expected `need <letters> avoid <letters> length <n>`, found {text:?}"));
        };
        if (*need, *avoid, *length_word) != ("need", "avoid", "length") {
            return Err(format!("expected `need <letters> avoid <letters> length <n>`, found {text:?}"));
        }
        let letters = |s: &str, what: &str| -> Result<Vec<char>, String> {
            let list: Vec<char> = s.chars().collect();
            match list.iter().find(|c| !ALPHABET.contains(c)) {
                Some(c) => Err(format!("{what} letter {c:?} is not one of a…p")),
                None => Ok(list),
            }
        };
        let length: usize = length.parse().map_err(|_| format!("length {length:?} is not a number"))?;
        if length == 0 {
            return Err("length must be at least 1".into());
        }
        Ok(Self { required: letters(required, "required")?, forbidden: letters(forbidden, "forbidden")?, length })
    }
}

/// The parts of the gold reward (module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GoldBreakdown {
    /// `cover`.
    pub cover: f64,
    /// `bad`.
    pub bad: f64,
    /// `repeat`.
    pub repeat: f64,
    /// `length`.
    pub length: f64,
    /// `½·(1 − e)`.
    pub unfinished: f64,
}

impl GoldBreakdown {
    /// `r = cover − bad − repeat − length − unfinished`.
    pub fn reward(&self) -> f64 {
        self.cover - self.bad - self.repeat - self.length - self.unfinished
    }
}

/// The gold reward's parts of `completion` for `prompt`; `ended` says
/// whether the model ended the completion itself.
pub fn gold_breakdown(prompt: &Constraints, completion: &str, ended: bool) -> GoldBreakdown {
    let y: Vec<char> = completion.chars().collect();
    let n = y.len();
    let per = |count: usize| count as f64 / n.max(1) as f64;
    let covered = prompt.required.iter().filter(|c| y.contains(c)).count();
    let cover = if prompt.required.is_empty() { 1.0 } else { covered as f64 / prompt.required.len() as f64 };
    let bad = per(y.iter().filter(|c| prompt.forbidden.contains(c) || !ALPHABET.contains(c)).count());
    let repeat = per((0..n).filter(|&i| (i >= 1 && y[i] == y[i - 1]) || (i >= 2 && y[i] == y[i - 2])).count());
    let length = (n.abs_diff(prompt.length) as f64 / prompt.length as f64).min(1.0);
    let unfinished = if ended { 0.0 } else { 0.5 };
    GoldBreakdown { cover, bad, repeat, length, unfinished }
}

/// The gold reward `r(x, y)` (module documentation).
pub fn gold_reward(prompt: &Constraints, completion: &str, ended: bool) -> f64 {
    gold_breakdown(prompt, completion, ended).reward()
}

/// A deliberately mediocre writer of completions, whose samples teach the
/// reference policy the task's format and a spread of quality: a length
/// within ±3 of `L` (at least 1); at each place, a required letter with
/// probability 0.3, a forbidden one with 0.08, the previous letter again
/// with 0.1, otherwise any letter of `Σ \ F`.
pub fn behaviour_completion(prompt: &Constraints, state: &mut u64) -> String {
    let uniform = |state: &mut u64| (splitmix64(state) >> 11) as f64 / (1u64 << 53) as f64;
    let pick = |list: &[char], state: &mut u64| list[(splitmix64(state) % list.len() as u64) as usize];
    let allowed: Vec<char> = ALPHABET.iter().copied().filter(|c| !prompt.forbidden.contains(c)).collect();
    let shift = (splitmix64(state) % 7) as i64 - 3;
    let n = (prompt.length as i64 + shift).max(1) as usize;
    let mut word = String::with_capacity(n);
    let mut previous: Option<char> = None;
    for _ in 0..n {
        let u = uniform(state);
        let c = if u < 0.3 && !prompt.required.is_empty() {
            pick(&prompt.required, state)
        } else if u < 0.38 && !prompt.forbidden.is_empty() {
            pick(&prompt.forbidden, state)
        } else if u < 0.48 && previous.is_some() {
            previous.unwrap_or('a')
        } else {
            pick(&allowed, state)
        };
        word.push(c);
        previous = Some(c);
    }
    word
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_deterministic_per_seed_and_round_trip() {
        let shape = TaskShape::default();
        let a: Vec<Constraints> = (0..50).map(|i| Constraints::draw(7, i, &shape)).collect();
        let b: Vec<Constraints> = (0..50).map(|i| Constraints::draw(7, i, &shape)).collect();
        let c: Vec<Constraints> = (0..50).map(|i| Constraints::draw(8, i, &shape)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        for p in &a {
            assert_eq!(p.required.len(), 3);
            assert_eq!(p.forbidden.len(), 2);
            assert!(p.forbidden.iter().all(|f| !p.required.contains(f)));
            assert!((6..=10).contains(&p.length));
            assert_eq!(Constraints::parse(&p.to_text()).unwrap(), *p);
        }
        // Every length of the range appears.
        for l in 6..=10 {
            assert!(a.iter().any(|p| p.length == l), "length {l}");
        }
        assert_eq!(
            Constraints { required: vec!['c', 'f', 'k'], forbidden: vec!['b', 'm'], length: 8 }.to_text(),
            "need cfk avoid bm length 8"
        );
        assert!(Constraints::parse("need cfk avoid bz length 8").unwrap_err().contains("'z'"));
        assert!(Constraints::parse("hello").is_err());
    }

    #[test]
    fn gold_reward_by_hand() {
        let p = Constraints { required: vec!['c', 'f', 'k'], forbidden: vec!['b', 'm'], length: 8 };
        // Perfect words, in different ways.
        for word in ["acdfghik", "kfcadegh", "cafekdhi"] {
            assert_eq!(gold_reward(&p, word, true), 1.0, "{word}");
        }
        assert_eq!(gold_reward(&p, "acdfghik", false), 0.5);
        // "ccbk": cover 2/3; bad 1/4 (b); repeat 1/4 (second c); length |4 − 8|/8 = 1/2.
        let b = gold_breakdown(&p, "ccbk", true);
        assert_eq!((b.cover, b.bad, b.repeat, b.length), (2.0 / 3.0, 0.25, 0.25, 0.5));
        assert!((b.reward() - (2.0 / 3.0 - 1.0)).abs() < 1e-15);
        // "cfcfcfcf": the alternating pattern repeats at distance two from place 3 on.
        let b = gold_breakdown(&p, "cfcfcfcf", true);
        assert_eq!((b.cover, b.repeat), (2.0 / 3.0, 6.0 / 8.0));
        // Empty: no cover, full length penalty; characters outside the alphabet are bad.
        assert_eq!(gold_reward(&p, "", true), -1.0);
        assert_eq!(gold_breakdown(&p, "c f", true).bad, 1.0 / 3.0);
        // Far too long saturates the length term at 1.
        assert_eq!(gold_breakdown(&p, &"acdfghik".repeat(4), true).length, 1.0);
    }

    #[test]
    fn behaviour_samples_are_mediocre_and_diverse() {
        let shape = TaskShape::default();
        let mut state = 3;
        let mut rewards = Vec::new();
        let mut words = std::collections::HashSet::new();
        for i in 0..400 {
            let p = Constraints::draw(1, i, &shape);
            let w = behaviour_completion(&p, &mut state);
            rewards.push(gold_reward(&p, &w, true));
            words.insert(w);
        }
        let mean = rewards.iter().sum::<f64>() / rewards.len() as f64;
        let best = rewards.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert!(mean > -0.5 && mean < 0.6, "mean gold reward {mean}");
        assert!(best > 0.8, "best {best}");
        assert!(words.len() > 390, "{} distinct words", words.len());
    }
}
