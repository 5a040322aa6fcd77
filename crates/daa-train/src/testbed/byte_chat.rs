//! The testbed's text ↔ token ids without a tokenizer file: the built-in
//! byte-level tokenizer (`daa_train::tiny_run`: every byte is its own id, the
//! special tokens follow) and its chat template, written out by hand so the
//! browser needs neither `tokenizers` nor `minijinja`. A test checks these
//! ids equal the tokenizer's and the template's.
//!
//! A prompt renders as `<|bos|><|user|>{prompt | trim}<|end|><|assistant|>`;
//! a reply continues it with `{reply | trim}<|end|>`.

/// `<|bos|>`.
pub const BOS: u32 = 256;
/// `<|end|>`: ends a turn; the stop token of generation and the padding id.
pub const END: u32 = 257;
/// `<|user|>`.
pub const USER: u32 = 258;
/// `<|assistant|>`.
pub const ASSISTANT: u32 = 259;
/// Vocabulary: 256 bytes and the five special tokens.
pub const VOCAB: usize = 261;

/// Ids of a one-turn conversation's prompt with the assistant's turn opened.
pub fn prompt_ids(prompt: &str) -> Vec<u32> {
    let mut ids = vec![BOS, USER];
    ids.extend(prompt.trim().bytes().map(u32::from));
    ids.extend([END, ASSISTANT]);
    ids
}

/// Ids of a reply after [`prompt_ids`]: its trimmed bytes, then `<|end|>`.
pub fn reply_ids(reply: &str) -> Vec<u32> {
    let mut ids: Vec<u32> = reply.trim().bytes().map(u32::from).collect();
    ids.push(END);
    ids
}

/// The text of generated ids, special tokens left out, invalid UTF-8
/// replaced by U+FFFD (as the byte-level decoder does).
pub fn decode(ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids.iter().filter_map(|&id| u8::try_from(id).ok()).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
