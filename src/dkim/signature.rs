//! The `DKIM-Signature:` field: its tags, folded to lines of at most 78
//! characters (RFC 5322 §2.1.1). The field is hashed as written (with an
//! empty `b=`), so however it is folded the verifier sees what was signed.

/// Longest line of the field, line end excluded.
const MAX_LINE: usize = 78;

/// Builds a folded header field word by word.
pub(crate) struct Folded {
    text: String,
    /// Characters on the current line.
    column: usize,
}

impl Folded {
    /// A field starting with `name:`.
    pub(crate) fn new(name: &str) -> Folded {
        Folded {
            text: format!("{name}:"),
            column: name.len() + 1,
        }
    }

    /// Adds `word`, after a space when `spaced`; on a new line when it
    /// would not fit on this one (a word too long for any line is cut
    /// across lines only through [`Folded::split_word`]).
    pub(crate) fn word(&mut self, word: &str, spaced: bool) {
        let room = usize::from(spaced) + word.len();
        if self.column + room > MAX_LINE && self.column > 1 {
            self.text.push_str("\r\n\t");
            self.column = 1;
        } else if spaced {
            self.text.push(' ');
            self.column += 1;
        }
        self.text.push_str(word);
        self.column += word.len();
    }

    /// Adds `word` (base64, where folding whitespace may go anywhere),
    /// filling each line and going on on the next.
    pub(crate) fn split_word(&mut self, mut word: &str) {
        while !word.is_empty() {
            if self.column >= MAX_LINE {
                self.text.push_str("\r\n\t");
                self.column = 1;
            }
            let take = (MAX_LINE - self.column).min(word.len());
            self.text.push_str(&word[..take]);
            self.column += take;
            word = &word[take..];
        }
    }

    /// The field so far, without a line end.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The field with its line end.
    pub(crate) fn finish(mut self) -> String {
        self.text.push_str("\r\n");
        self.text
    }
}

/// The tags of a signature before `b=`.
pub(crate) struct Tags<'a> {
    pub algorithm: &'static str,
    pub domain: &'a str,
    pub selector: &'a str,
    pub timestamp: u64,
    /// The `h=` list, in order, repeats included.
    pub headers: &'a [String],
    /// The body hash, base64.
    pub body_hash: &'a str,
}

/// The field up to and including an empty `b=`: what is hashed, and then
/// completed with the signature by [`Folded::split_word`].
pub(crate) fn unsigned_field(t: &Tags<'_>) -> Folded {
    let mut f = Folded::new("DKIM-Signature");
    f.word("v=1;", true);
    f.word(&format!("a={};", t.algorithm), true);
    f.word("c=relaxed/relaxed;", true);
    f.word(&format!("d={};", t.domain), true);
    f.word(&format!("s={};", t.selector), true);
    f.word(&format!("t={};", t.timestamp), true);
    for (i, h) in t.headers.iter().enumerate() {
        let last = i + 1 == t.headers.len();
        let word = match (i, last) {
            (0, true) => format!("h={h};"),
            (0, false) => format!("h={h}:"),
            (_, true) => format!("{h};"),
            (_, false) => format!("{h}:"),
        };
        // Folding whitespace may follow a colon of h= (RFC 6376 §3.5).
        f.word(&word, i == 0);
    }
    f.word(&format!("bh={};", t.body_hash), true);
    f.word("b=", true);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_fits_in_78_characters() {
        let headers: Vec<String> = ["from", "from", "to", "cc", "subject", "date", "message-id"]
            .iter()
            .cycle()
            .take(30)
            .map(|s| s.to_string())
            .collect();
        let bh = "x".repeat(44);
        let mut f = unsigned_field(&Tags {
            algorithm: "rsa-sha256",
            domain: "a-rather-long-subdomain.of-a-long-domain-name.example.org",
            selector: "selector-2026-12",
            timestamp: 1_700_000_000,
            headers: &headers,
            body_hash: &bh,
        });
        f.split_word(&"A".repeat(684));
        let text = f.finish();
        for line in text.split("\r\n") {
            assert!(line.len() <= MAX_LINE, "{line:?}");
        }
        let unfolded = text.replace("\r\n\t", "");
        assert!(unfolded.contains(&format!("b={}", "A".repeat(684))));
        assert!(unfolded.contains("h=from:from:to:"));
    }
}
