//! Log-probabilities daa gives each next token of some token-id sequences,
//! as JSON: what `scripts/peft_check.py` compares with transformers + peft
//! on the same checkpoint or adapter folder.
//!
//! ```text
//! cargo run -p daa-train --example token_logprobs -- MODEL_OR_ADAPTER_DIR IDS.json
//! cargo run -p daa-train --example token_logprobs -- --write-tiny llama|cohere MODEL_DIR DATA.jsonl
//! ```
//!
//! `IDS.json` is a list of token-id lists; the output is one list per
//! sequence, `ln p(ids[t+1] | ids[..=t])` for every `t`, on burn's CPU
//! backend (Flex) in f32. An adapter folder loads onto the base it names.
//! `--write-tiny` writes the check's inputs: a tiny random checkpoint of the
//! architecture (2 blocks, width 32, byte-level tokenizer) and 80 arithmetic
//! preference pairs.

use burn::backend::Flex;
use daa_train::batch::{Sequence, TokenBatch};
use daa_train::checkpoint::load_model;
use daa_train::model::CausalLm;
use daa_train::objective::CompletionLogits;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, arch, model_dir, data] = args.as_slice()
        && flag == "--write-tiny"
    {
        use daa_train::tiny_run::{TINY_VOCAB, arithmetic_rows, cohere_config, llama_config, write_checkpoint};
        let config = match arch.as_str() {
            "llama" => llama_config(TINY_VOCAB, 32, 2),
            "cohere" => cohere_config(TINY_VOCAB, 32, 2),
            other => anyhow::bail!("--write-tiny {other}: expected llama or cohere"),
        };
        write_checkpoint(std::path::Path::new(model_dir), &config, 3, 0.3)?;
        let rows: String = arithmetic_rows(80, 1).iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(data, rows)?;
        return Ok(());
    }
    let [model_dir, ids] = args.as_slice() else {
        anyhow::bail!("usage: token_logprobs MODEL_OR_ADAPTER_DIR IDS.json");
    };
    let ids: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(ids)?)?;
    let model: CausalLm<Flex> = load_model(std::path::Path::new(model_dir), &Default::default())?;
    let sequences: Vec<Sequence> = ids.into_iter().map(|ids| Sequence { ids, completion_start: 1 }).collect();
    let batch = TokenBatch::new(&sequences.iter().collect::<Vec<_>>(), 0, model.config().vocab_size)?;
    let scored = CompletionLogits::of(&model, &batch, &Default::default())?;
    let flat: Vec<f32> =
        scored.token_logps().into_data().convert::<f32>().into_vec().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut rows = Vec::new();
    let mut at = 0;
    for s in &sequences {
        let n = s.ids.len() - 1;
        rows.push(flat[at..at + n].to_vec());
        at += n;
    }
    println!("{}", serde_json::to_string(&rows)?);
    Ok(())
}
