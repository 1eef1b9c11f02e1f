//! The "relaxed" canonicalisation of RFC 6376 §3.4.2 (header) and
//! §3.4.4 (body), over the lines the wire will carry (see
//! [`crate::header`]): a bare CR or LF is a line end, as the SMTP client
//! sends it as CR LF.

/// A header field in relaxed form: the name in lower case, unfolded,
/// runs of blanks made one space, blanks around the colon and at the end
/// removed, then CR LF. `name` is the name as written, `value` what
/// follows the colon (with its line ends).
pub(crate) fn header_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend(name.trim_ascii().iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let mut blank = false;
    let mut any = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => blank = true,
            _ => {
                if blank && any {
                    out.push(b' ');
                }
                blank = false;
                any = true;
                out.push(b);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// The relaxed body canonicaliser, fed the body in pieces of any size:
/// blanks within a line made one space, blanks at a line's end removed,
/// empty lines at the end removed, a last line without a line end given
/// one (as the wire gives it). What it makes goes to `sink`.
pub(crate) struct RelaxedBody<F: FnMut(&[u8])> {
    sink: F,
    buf: Vec<u8>,
    /// A CR seen as the last byte of a piece: a line end either way.
    held_cr: bool,
    /// Blanks seen since the last text in this line.
    blank: bool,
    /// Text in this line so far.
    text: bool,
    /// Empty lines seen and not yet written: they are written only if
    /// text follows them.
    empty_lines: u64,
}

impl<F: FnMut(&[u8])> RelaxedBody<F> {
    pub(crate) fn new(sink: F) -> Self {
        RelaxedBody {
            sink,
            buf: Vec::with_capacity(8 * 1024),
            held_cr: false,
            blank: false,
            text: false,
            empty_lines: 0,
        }
    }

    pub(crate) fn update(&mut self, piece: &[u8]) {
        for &b in piece {
            if self.held_cr {
                self.held_cr = false;
                self.line_end();
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.held_cr = true,
                b'\n' => self.line_end(),
                b' ' | b'\t' => self.blank = true,
                _ => {
                    if !self.text {
                        for _ in 0..self.empty_lines {
                            self.buf.extend_from_slice(b"\r\n");
                            self.spill();
                        }
                        self.empty_lines = 0;
                    }
                    if self.blank {
                        self.buf.push(b' ');
                        self.blank = false;
                    }
                    self.buf.push(b);
                    self.text = true;
                }
            }
            self.spill();
        }
    }

    /// Ends the body (its last line) and hands on what is left.
    pub(crate) fn finish(mut self) {
        if self.held_cr || self.text {
            self.line_end();
        }
        (self.sink)(&self.buf);
    }

    fn line_end(&mut self) {
        if self.text {
            self.buf.extend_from_slice(b"\r\n");
        } else {
            self.empty_lines += 1;
        }
        self.text = false;
        self.blank = false;
    }

    fn spill(&mut self) {
        if self.buf.len() >= 8 * 1024 {
            (self.sink)(&self.buf);
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut c = RelaxedBody::new(|b: &[u8]| out.extend_from_slice(b));
        for p in pieces {
            c.update(p);
        }
        c.finish();
        out
    }

    #[test]
    fn rfc6376_example_body() {
        // RFC 6376 §3.4.6, relaxed.
        let b = body(&[b" C \r\nD \t E\r\n\r\n\r\n"]);
        assert_eq!(b, b" C\r\nD E\r\n");
    }

    #[test]
    fn any_line_end_and_any_piece_size_give_the_same_body() {
        let whole = body(&[b"a  b\r\n\r\nc\nd\re\r\n\r\n"]);
        assert_eq!(whole, b"a b\r\n\r\nc\r\nd\r\ne\r\n");
        let bytes = b"a  b\r\n\r\nc\nd\re\r\n\r\n";
        let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(body(&pieces), whole);
    }

    #[test]
    fn an_empty_body_stays_empty_and_a_last_line_gets_its_end() {
        assert_eq!(body(&[b""]), b"");
        assert_eq!(body(&[b"\r\n\r\n"]), b"");
        assert_eq!(body(&[b"x"]), b"x\r\n");
        assert_eq!(body(&[b"x\r"]), b"x\r\n");
    }

    /// What the SMTP client sends for stored bytes: every bare CR or LF
    /// as CR LF (`smtp::transport::write_dot_stuffed`, dots aside).
    fn wire(stored: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < stored.len() {
            match stored[i] {
                b'\r' if stored.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                }
                b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
                b => out.push(b),
            }
            i += 1;
        }
        out
    }

    proptest::proptest! {
        /// The body hashed at queueing is the body the next hop gets,
        /// whatever the line ends, blanks and read sizes.
        #[test]
        fn the_stored_and_the_sent_body_canonicalise_alike(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'.', b' ', b'\t', b'\r', b'\n', 0xc3]),
                0..200,
            ),
            step in 1usize..17,
        ) {
            let whole = body(&[&bytes]);
            let pieces: Vec<&[u8]> = bytes.chunks(step).collect();
            proptest::prop_assert_eq!(&body(&pieces), &whole);
            proptest::prop_assert_eq!(&body(&[&wire(&bytes)]), &whole);
            // Canonical form: CRLF lines, no blank at a line's end, no
            // empty line last.
            proptest::prop_assert!(whole.is_empty() || whole.ends_with(b"\r\n"));
            proptest::prop_assert!(!whole.ends_with(b"\r\n\r\n"));
            let text = String::from_utf8_lossy(&whole);
            proptest::prop_assert!(!text.contains(" \r\n") && !text.contains('\t'));
        }
    }

    #[test]
    fn rfc6376_example_header() {
        let mut out = Vec::new();
        header_field(b"A", b" X\r\n", &mut out);
        header_field(b"B ", b" Y\t\r\n\tZ  \r\n", &mut out);
        assert_eq!(out, b"a:X\r\nb:Y Z\r\n");
    }
}
