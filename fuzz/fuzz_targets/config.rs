//! The config loader on any text and environment: never a panic, and every error names its place
//! and says what is wrong.
#![no_main]

use arbitrary::Arbitrary;
use clamgate::config::Config;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    text: String,
    env: Vec<(String, String)>,
}

fuzz_target!(|input: Input| {
    let env = input.env.into_iter().map(|(name, value)| (format!("CLAMGATE_{name}"), value));
    if let Err(errors) = Config::load_text(&input.text, "config", env) {
        assert!(!errors.0.is_empty());
        for error in &errors.0 {
            assert!(!error.key.is_empty() && !error.message.is_empty(), "{error:?}");
        }
    }
});
