//! `config.json` objects of tiny models in the real Hugging Face layouts, for
//! tests, the built-in run and the browser: no files needed.

use serde_json::{Value, json};

/// A tiny Llama `config.json` (GQA: 4 query heads, 2 key/value heads).
pub fn llama_config(vocab: usize, hidden: usize, layers: usize) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": hidden * 8 / 3,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "tie_word_embeddings": false,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": 256,
        "eos_token_id": 257,
        "torch_dtype": "float32",
    })
}

/// A tiny Cohere Command R `config.json` (tied embeddings, logit scale).
pub fn cohere_config(vocab: usize, hidden: usize, layers: usize) -> Value {
    json!({
        "architectures": ["CohereForCausalLM"],
        "model_type": "cohere",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "layer_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "logit_scale": 0.5,
        "use_qk_norm": false,
        "max_position_embeddings": 512,
        "tie_word_embeddings": true,
        "bos_token_id": 256,
        "eos_token_id": 257,
        "torch_dtype": "float32",
    })
}
