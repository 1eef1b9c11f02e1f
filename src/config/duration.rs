//! Durations as the configuration file writes them: `90s`, `15m`, `250ms`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Text that is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {0:?}: expected a number followed by ms, s, m, h or d, like \"90s\" or \"5d\""
)]
pub struct BadDuration(
    /// The text as it was written.
    pub String,
);

/// Parses a duration such as `90s`, `15m`, `8h`, `5d` or `250ms`.
///
/// ```
/// use mailqueue::config::parse_duration;
/// assert_eq!(parse_duration("1.5h").unwrap().as_secs(), 5400);
/// assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
/// assert!(parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, BadDuration> {
    let err = || BadDuration(text.to_string());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| err())?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(err()),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 100.0 * 365.0 * 86400.0 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(super) fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// For an optional key: present means `Some`.
pub(super) fn deserialize_some<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<Duration>, D::Error> {
    deserialize(de).map(Some)
}
