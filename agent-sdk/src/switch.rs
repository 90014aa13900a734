//! The one vocabulary of on/off environment variables (`JOBAGENT_CLUSTER`, `JOBAGENT_LOG_ONLY`,
//! `JOBAGENT_AUTO_REGISTER`, ...).

use crate::error::ConfigError;

/// Reads an on/off value: `1`/`true`/`on`/`yes` or `0`/`false`/`off`/`no`, any case.
pub(crate) fn parse_switch(name: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        other => Err(ConfigError::invalid(
            name,
            format!("`{other}` is not on/off (true/false, 1/0, on/off, yes/no)"),
        )),
    }
}
