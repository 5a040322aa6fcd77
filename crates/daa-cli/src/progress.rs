//! Progress of long work on the terminal (indicatif): reference scoring and
//! training steps, with the latest loss and top-k entropy.

use daa_train::eval::EvalReport;
use daa_train::records::{EvalRecord, TrainRecord};
use daa_train::run::RunObserver;
use indicatif::{ProgressBar, ProgressStyle};

/// A bar with a prefix, position, ETA and a message.
pub fn bar(len: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

/// `daa train`'s view of a run.
#[derive(Debug)]
pub struct TrainProgress {
    k: usize,
    scoring: Option<ProgressBar>,
    training: Option<ProgressBar>,
}

impl TrainProgress {
    /// For a run whose statistics use the top `k` tokens.
    pub fn new(k: usize) -> Self {
        Self { k, scoring: None, training: None }
    }

    /// Clears the bars.
    pub fn finish(&mut self) {
        for bar in [self.scoring.take(), self.training.take()].into_iter().flatten() {
            bar.finish_and_clear();
        }
    }

    fn println(&self, line: &str) {
        // A hidden bar (standard error is not a terminal) prints nothing.
        match &self.training {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

impl RunObserver for TrainProgress {
    fn note(&mut self, line: &str) {
        if let Some(bar) = self.scoring.take() {
            bar.finish_and_clear();
        }
        self.println(line);
    }

    fn scoring(&mut self, done: usize, total: usize) {
        let bar = self.scoring.get_or_insert_with(|| bar(total as u64, "reference"));
        bar.set_position(done as u64);
    }

    fn training(&mut self, start: u64, last: u64) {
        if let Some(bar) = self.scoring.take() {
            bar.finish_and_clear();
        }
        let bar = bar(last, "train");
        bar.set_position(start);
        self.training = Some(bar);
    }

    fn stepped(&mut self, record: &TrainRecord, last_eval: Option<&EvalReport>) {
        if let Some(bar) = &self.training {
            let entropy = last_eval.map_or(f64::NAN, |r| r.topk_entropy);
            bar.set_message(format!("loss {:.4} H_k {entropy:.3}", record.step.loss));
            bar.set_position(record.step.step);
        }
    }

    fn evaluated(&mut self, record: &EvalRecord) {
        let (r, k) = (&record.report, self.k);
        let samples = record.samples.map_or(String::new(), |s| {
            format!("  win prob {:.3}  gold {:.3}  KL {:.2}  EAD {:.3}", s.win_prob, s.gold_reward, s.kl, s.ead)
        });
        self.println(&format!(
            "step {:>5}  eval loss {:.4}  acc {:.3}  chosen ll/token {:.4}  top-{k} entropy {:.4}  top-{k} mass {:.4}{samples}",
            record.step, r.loss, r.accuracy, r.chosen_token_loglik, r.topk_entropy, r.topk_mass
        ));
    }
}
