//! The command-line tools beside `serve`: `scan` (the verdict for message files) and
//! `rules check` (compile the rule files and report problems with file:line).

pub mod fit;
pub mod learn;
pub mod rules;
pub mod scan;
pub mod sources;
mod state_explain;

use std::path::Path;

use crate::config::Config;

/// The config for an offline tool: `--config` if given (must exist), else `mailwarden.toml`
/// in the working directory if present, else the built-in defaults.
pub fn load_config(explicit: Option<&Path>) -> Result<Config, String> {
    match explicit {
        Some(path) => Config::load(path).map_err(|e| e.to_string()),
        None => {
            let default = Path::new("mailwarden.toml");
            if default.exists() {
                Config::load(default).map_err(|e| e.to_string())
            } else {
                Ok(Config::default())
            }
        }
    }
}
