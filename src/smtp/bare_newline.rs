//! What the SMTP listener does with a bare LF: `[listen] bare_newline`.

use serde::Deserialize;

/// What the listener does with a bare LF (no CR before it) in a command
/// or in DATA; `[listen] bare_newline` in the configuration file
/// (`"normalize"` or `"reject"`).
///
/// Either way DATA ends only at `<CR><LF>.<CR><LF>`: a bare LF never
/// takes part in the end of data, so a message cannot carry a second
/// transaction past a front MTA that reads line ends differently (SMTP
/// smuggling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BareNewline {
    /// Read a bare LF as CRLF within lines (old mailers send it): for a
    /// listener only local programs reach.
    #[default]
    Normalize,
    /// Refuse the message or command with `550 5.5.2` and end the session:
    /// for a listener other MTAs reach, as they always send CRLF.
    Reject,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Key {
        bare_newline: BareNewline,
    }

    fn parse(text: &str) -> Result<BareNewline, toml::de::Error> {
        toml::from_str::<Key>(text).map(|k| k.bare_newline)
    }

    #[test]
    fn config_file_names() {
        assert_eq!(BareNewline::default(), BareNewline::Normalize);
        assert_eq!(
            parse("bare_newline = \"normalize\"").unwrap(),
            BareNewline::Normalize
        );
        assert_eq!(
            parse("bare_newline = \"reject\"").unwrap(),
            BareNewline::Reject
        );
        assert!(parse("bare_newline = \"strip\"").is_err());
    }
}
