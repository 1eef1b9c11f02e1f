//! `[log]`: how the daemon writes its log lines.

use serde::Deserialize;

/// `[log]`: the shape of the daemon's log lines on standard error. The
/// level comes from `RUST_LOG` (default `info`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LogConfig {
    /// `"plain"` (the default): `[time LEVEL module] line`, for a
    /// terminal or a file. `"journald"`: `<N>line`, with the sd-daemon
    /// priority prefix journald and syslog read (sd-daemon(3)), and no
    /// time of ours, since they add their own.
    pub format: LogFormat,
    /// The most detailed lines written: `error`, `warn`, `info` (the
    /// default), `debug` or `trace`. `RUST_LOG`, when set, wins (and
    /// takes module filters); a reload (SIGHUP) applies a new level.
    pub level: LogLevel,
}

/// How much is logged; see [`LogConfig::level`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// What happens to each message, and the above.
    #[default]
    Info,
    /// Protocol details.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// As the `log` crate filters.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// How each log line is written; see [`LogConfig::format`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// `[2026-12-01T07:05:49Z INFO  module] line`.
    #[default]
    Plain,
    /// `<6>line`: the syslog priority for journald, no timestamp.
    Journald,
}

impl LogFormat {
    /// `record` as journald reads it: each of its lines prefixed with the
    /// priority of `level` (err 3, warning 4, info 6, debug 7), so a
    /// message of several lines keeps its priority on each.
    pub fn journald(level: log::Level, text: &str) -> String {
        let priority = match level {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            log::Level::Debug | log::Level::Trace => 7,
        };
        let mut out = String::with_capacity(text.len() + 4);
        for line in text.split('\n') {
            out.push_str(&format!("<{priority}>{line}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn the_format_is_plain_by_default_and_journald_when_asked() {
        assert_eq!(Config::default().log.format, LogFormat::Plain);
        let c = Config::from_toml("[log]\nformat = \"journald\"\n").unwrap();
        assert_eq!(c.log.format, LogFormat::Journald);
        assert!(Config::from_toml("[log]\nformat = \"json\"\n").is_err());
        assert_eq!(Config::default().log.level, LogLevel::Info);
        let c = Config::from_toml("[log]\nlevel = \"debug\"\n").unwrap();
        assert_eq!(c.log.level.filter(), log::LevelFilter::Debug);
        assert!(Config::from_toml("[log]\nlevel = \"loud\"\n").is_err());
    }

    #[test]
    fn journald_lines_carry_the_priority_on_each_line() {
        assert_eq!(
            LogFormat::journald(log::Level::Info, "A: removed"),
            "<6>A: removed\n"
        );
        assert_eq!(
            LogFormat::journald(log::Level::Error, "one\ntwo"),
            "<3>one\n<3>two\n"
        );
        assert_eq!(LogFormat::journald(log::Level::Warn, "w"), "<4>w\n");
        assert_eq!(LogFormat::journald(log::Level::Debug, "d"), "<7>d\n");
    }
}
