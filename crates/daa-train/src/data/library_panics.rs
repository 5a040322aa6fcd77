//! Libraries that panic on malformed files (found by fuzzing: tokenizers
//! 0.22.2 on some `tokenizer.json` files, parquet 60.1 on negative column
//! offsets and other damaged metadata): their panics become errors that name
//! the file, as a user expects of bad input.

/// `load()`, with a panic inside it turned into an error carrying its
/// message (`the LIBRARY library failed on it (MESSAGE)`), and the
/// message kept off standard error.
pub(crate) fn catching_panics<T>(library: &str, load: impl FnOnce() -> T) -> Result<T, String> {
    let message = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let hook = std::panic::take_hook();
    let seen = message.clone();
    std::panic::set_hook(Box::new(move |info| {
        let text = match (info.payload().downcast_ref::<&str>(), info.payload().downcast_ref::<String>()) {
            (Some(s), _) => (*s).to_string(),
            (_, Some(s)) => s.clone(),
            _ => "a panic".to_string(),
        };
        if let Ok(mut m) = seen.lock() {
            *m = text;
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load));
    std::panic::set_hook(hook);
    result.map_err(|_| {
        let text = message.lock().map(|m| m.clone()).unwrap_or_default();
        format!("the {library} library failed on it ({text})")
    })
}
