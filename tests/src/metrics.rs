//! Comparing two runs' `metrics.jsonl` records: what resume tests and
//! interruption tests require of a continued run.

use serde_json::Value;

/// Asserts two metric logs agree: same records, fields and integers, floats
/// within `1e-4·(1 + |x|)`. burn's ndarray backend is not bitwise
/// reproducible from one process to the next (two fresh runs differ at
/// ~1e-7 relative from the first forward pass), so this is as exact as a
/// comparison between two uninterrupted runs can be. A reward accuracy may
/// flip only where the margin is rounding noise.
pub fn assert_same_metrics(a: &[Value], b: &[Value]) {
    assert_eq!(a.len(), b.len(), "record counts");
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x.as_object().unwrap(), y.as_object().unwrap());
        assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
        for (k, u) in x {
            let v = &y[k];
            if k == "elapsed_s" {
                continue;
            }
            match (u.as_f64(), v.as_f64()) {
                (Some(p), Some(q)) if u.is_f64() || v.is_f64() => {
                    let noise_margin = ["rewards/margins", "eval_rewards/margins"]
                        .iter()
                        .any(|m| x.get(*m).and_then(Value::as_f64).is_some_and(|m| m.abs() < 1e-4));
                    if k.ends_with("accuracy") && noise_margin {
                        continue;
                    }
                    assert!((p - q).abs() <= 1e-4 * (1.0 + p.abs()), "step {}: {k} {p} vs {q}", x["step"]);
                }
                _ => assert_eq!(u, v, "step {}: {k}", x["step"]),
            }
        }
    }
}
