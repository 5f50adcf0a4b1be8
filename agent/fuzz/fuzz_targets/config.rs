//! The config parser: any text gives a config or an error.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ota_agent::config::Config;

fuzz_target!(|text: &str| {
    if let Ok(config) = Config::parse(text, Path::new("/etc/ota-agent/agent.toml")) {
        assert!(!config.packages.is_empty());
    }
});
