//! A message's header as the next hop will read it: lines end at CR LF,
//! at a bare LF or at a bare CR, because the SMTP client sends each of
//! them as CR LF (see `smtp::transport::write_dot_stuffed`). Whatever
//! checks or signs the header here must see the lines the wire carries,
//! or a signature made over one reading fails over the other.

/// Where one line of `bytes` starting at `at` ends: the end of its text
/// and the start of the next line. `None` when no line end is known yet:
/// none in `bytes`, or a CR as its last byte while more may follow
/// (`complete` false). With `complete`, text running to the end of
/// `bytes` is a last line.
pub(crate) fn line_at(bytes: &[u8], at: usize, complete: bool) -> Option<(usize, usize)> {
    let rest = &bytes[at..];
    match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) => {
            let i = at + i;
            if bytes[i] == b'\n' {
                Some((i, i + 1))
            } else if i + 1 < bytes.len() {
                Some((i, if bytes[i + 1] == b'\n' { i + 2 } else { i + 1 }))
            } else if complete {
                Some((i, i + 1))
            } else {
                None
            }
        }
        None if complete => Some((bytes.len(), bytes.len())),
        None => None,
    }
}

/// One header field: byte offsets into the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    /// Where the field's first line starts.
    pub(crate) start: usize,
    /// Where its name ends (whitespace before the colon excluded).
    pub(crate) name_end: usize,
    /// Where its colon is.
    pub(crate) colon: usize,
    /// Past its last line end (continuation lines included).
    pub(crate) end: usize,
}

impl Field {
    /// The field's name as written.
    pub(crate) fn name<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.start..self.name_end]
    }

    /// Whether its name is `name`, in any case.
    pub(crate) fn is(&self, bytes: &[u8], name: &str) -> bool {
        self.name(bytes).eq_ignore_ascii_case(name.as_bytes())
    }

    /// What follows the colon, continuation lines and line ends included.
    pub(crate) fn value<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.colon + 1..self.end]
    }

    /// The value unfolded (line ends removed) and trimmed, as text.
    pub(crate) fn unfolded(&self, bytes: &[u8]) -> String {
        let v: Vec<u8> = self
            .value(bytes)
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        String::from_utf8_lossy(&v).trim().to_string()
    }
}

/// A message's header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// The fields, in order.
    pub(crate) fields: Vec<Field>,
    /// Where the last field ends: the header's own bytes are `..end`.
    pub(crate) end: usize,
    /// Where the body starts: past the empty line that ends the header,
    /// or `end` when none does (a line that is no field, or the end of
    /// the message).
    pub(crate) body: usize,
}

impl Header {
    /// Whether an empty line separates the header from the body.
    #[cfg(test)]
    fn separated(&self) -> bool {
        self.body > self.end
    }

    /// The fields named `name`, in order.
    pub(crate) fn named<'h>(
        &'h self,
        bytes: &'h [u8],
        name: &'h str,
    ) -> impl DoubleEndedIterator<Item = &'h Field> {
        self.fields.iter().filter(move |f| f.is(bytes, name))
    }
}

/// Reads the header at the start of `bytes`. `complete` says that `bytes`
/// is the whole message; otherwise `None` when the header may go on past
/// its end.
pub(crate) fn parse(bytes: &[u8], complete: bool) -> Option<Header> {
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = 0;
    loop {
        if pos == bytes.len() {
            if !complete {
                return None;
            }
            return Some(Header {
                fields,
                end: pos,
                body: pos,
            });
        }
        let (text_end, next) = line_at(bytes, pos, complete)?;
        let line = &bytes[pos..text_end];
        if line.is_empty() {
            return Some(Header {
                fields,
                end: pos,
                body: next,
            });
        }
        let continues = matches!(line[0], b' ' | b'\t');
        match fields.last_mut() {
            Some(last) if continues => last.end = next,
            _ => match field_line(line) {
                Some((name_end, colon)) => fields.push(Field {
                    start: pos,
                    name_end: pos + name_end,
                    colon: pos + colon,
                    end: next,
                }),
                None => {
                    return Some(Header {
                        fields,
                        end: pos,
                        body: pos,
                    })
                }
            },
        }
        pos = next;
    }
}

/// Where a field line's name ends and its colon is; `None` for a line
/// that starts no field.
fn field_line(line: &[u8]) -> Option<(usize, usize)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    (!name.is_empty() && name.iter().all(|b| b.is_ascii_graphic())).then_some((name.len(), colon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_continuation_lines_and_the_body_are_found_whatever_the_line_ends() {
        let m = b"Subject: a\r\n b\nFrom : x@y\rTo: z\r\n\r\nbody\r\n";
        let h = parse(m, true).unwrap();
        let names: Vec<&[u8]> = h.fields.iter().map(|f| f.name(m)).collect();
        assert_eq!(names, [&b"Subject"[..], b"From", b"To"]);
        assert_eq!(h.fields[0].unfolded(m), "a b");
        assert_eq!(h.fields[1].unfolded(m), "x@y");
        assert!(h.separated());
        assert_eq!(&m[h.body..], b"body\r\n");
    }

    #[test]
    fn a_line_that_is_no_field_ends_the_header_without_a_separator() {
        let m = b"Subject: a\r\nnot a field\r\n";
        let h = parse(m, true).unwrap();
        assert_eq!(h.fields.len(), 1);
        assert!(!h.separated());
        assert_eq!(h.end, 12);
        let h = parse(b"Subject: a\r\n", true).unwrap();
        assert_eq!((h.end, h.body), (12, 12));
    }

    proptest::proptest! {
        /// Any bytes a client sends parse without a panic into fields
        /// that lie in order within them, and the header found in a part
        /// of the message is the one found in the whole.
        #[test]
        fn any_bytes_parse_into_fields_in_order_within_them(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'F', b':', b' ', b'\t', b'\r', b'\n', 0xff]),
                0..120,
            ),
            cut in 0usize..120,
        ) {
            let h = parse(&bytes, true).unwrap();
            proptest::prop_assert!(h.end <= h.body && h.body <= bytes.len());
            let mut at = 0;
            for f in &h.fields {
                proptest::prop_assert!(at <= f.start && f.start < f.name_end);
                proptest::prop_assert!(f.name_end <= f.colon && f.colon < f.end && f.end <= h.end);
                proptest::prop_assert!(!f.name(&bytes).is_empty());
                at = f.end;
            }
            let cut = cut.min(bytes.len());
            if let Some(part) = parse(&bytes[..cut], false) {
                proptest::prop_assert_eq!(part, h);
            }
        }
    }

    #[test]
    fn an_unfinished_header_needs_more_bytes() {
        assert_eq!(parse(b"Subject: a\r\nFrom: b", false), None);
        assert_eq!(parse(b"Subject: a\r", false), None);
        assert!(parse(b"Subject: a\r\n\r\n", false).is_some());
    }
}
