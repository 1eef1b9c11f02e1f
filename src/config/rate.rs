//! Rates as the configuration file writes them: `55/1m`, `1000/1h`,
//! `5/1s`; a count of messages, a slash, and an interval in the
//! duration syntax.

use serde::{Deserialize, Deserializer};

use super::duration::parse_duration;
use crate::delivery::limits::Rate;

/// Text that is not a rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid rate {text:?}: {why}; expected messages per interval, like \"55/1m\", \
     \"1000/1h\" or \"5/1s\" (empty for no limit)"
)]
pub(crate) struct BadRate {
    /// The text as it was written.
    pub text: String,
    /// Which part is wrong.
    pub why: &'static str,
}

/// Parses `count/interval`; empty text is no limit.
pub(crate) fn parse_rate(text: &str) -> Result<Option<Rate>, BadRate> {
    let err = |why| BadRate {
        text: text.to_string(),
        why,
    };
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let (count, per) = t.split_once('/').ok_or_else(|| err("no \"/\""))?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| err("the count is not a whole number"))?;
    if count == 0 {
        return Err(err("the count must be at least 1"));
    }
    let per = parse_duration(per.trim()).map_err(|_| err("the interval is not a duration"))?;
    if per.is_zero() {
        return Err(err("the interval must be longer than zero"));
    }
    Ok(Some(Rate { count, per }))
}

/// For a route's optional `rate`: present (even `""`, no limit) means
/// `Some`, so that a route can lift `[delivery]`'s rate.
pub(in crate::config) fn deserialize_some<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<Option<Rate>>, D::Error> {
    deserialize(de).map(Some)
}

/// Serde's side of [`parse_rate`], for `rate` keys.
pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<Rate>, D::Error> {
    let text = String::deserialize(de)?;
    parse_rate(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    fn rate(count: u32, secs: u64) -> Option<Rate> {
        Some(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    }

    #[test]
    fn rates_parse_as_count_per_interval() {
        assert_eq!(parse_rate("55/1m"), Ok(rate(55, 60)));
        assert_eq!(parse_rate("1000/1h"), Ok(rate(1000, 3600)));
        assert_eq!(parse_rate("5/1s"), Ok(rate(5, 1)));
        assert_eq!(parse_rate(" 2 / 90s "), Ok(rate(2, 90)));
        assert_eq!(parse_rate("1/1d"), Ok(rate(1, 86400)));
        assert_eq!(parse_rate(""), Ok(None));
        assert_eq!(parse_rate("55/1m").unwrap().unwrap().to_string(), "55/1m");
    }

    #[test]
    fn bad_rates_say_which_part_is_wrong() {
        for (text, why) in [
            ("55", "no \"/\""),
            ("55 per minute", "no \"/\""),
            ("x/1m", "the count is not a whole number"),
            ("-1/1m", "the count is not a whole number"),
            ("1.5/1m", "the count is not a whole number"),
            ("0/1m", "the count must be at least 1"),
            ("55/m", "the interval is not a duration"),
            ("55/minute", "the interval is not a duration"),
            ("55/0s", "the interval must be longer than zero"),
        ] {
            assert_eq!(parse_rate(text).unwrap_err().why, why, "{text:?}");
        }
        assert_eq!(
            parse_rate("55").unwrap_err().to_string(),
            "invalid rate \"55\": no \"/\"; expected messages per interval, like \"55/1m\", \
             \"1000/1h\" or \"5/1s\" (empty for no limit)"
        );
    }

    #[test]
    fn the_delivery_rate_is_read_and_its_errors_name_the_key() {
        assert_eq!(Config::default().delivery.rate, None);
        let c = Config::from_toml("[delivery]\nrate = \"55/1m\"\n").unwrap();
        assert_eq!(c.delivery.rate, rate(55, 60));
        let c = Config::from_toml("[delivery]\nrate = \"\"\n").unwrap();
        assert_eq!(c.delivery.rate, None);
        let e = Config::from_toml("[delivery]\nrate = \"55 a minute\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rate = \"55 a minute\""), "{e}");
        assert!(e.contains("invalid rate"), "{e}");
        assert!(e.contains("\"55/1m\""), "{e}");
    }
}
