//! Macro expansion in domain-specs (RFC 7208 §7): `%{i}`, `%{d2}`,
//! `%{ir}.%{v}._spf.%{d}` and the escapes `%%`, `%_`, `%-`.

use std::net::IpAddr;

use super::record::Syntax;

/// What macros stand for during one evaluation.
#[derive(Debug, Clone)]
pub struct MacroValues<'a> {
    /// `%{s}`'s local part (`%{l}`).
    pub local: &'a str,
    /// `%{s}`'s domain (`%{o}`).
    pub sender_domain: &'a str,
    /// `%{h}`: the EHLO name.
    pub helo: &'a str,
    /// `%{i}`, `%{v}`.
    pub ip: IpAddr,
    /// `%{d}`: the domain whose record is being evaluated.
    pub domain: &'a str,
}

/// Expands the macros of a domain-spec; a name longer than 253
/// characters loses labels from the left until it fits (§7.3).
pub fn expand(spec: &str, v: &MacroValues<'_>) -> Result<String, Syntax> {
    let bad = |why: &str| Syntax(format!("{spec:?}: {why}"));
    let mut out = String::new();
    let mut rest = spec;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(c) = after.chars().next() else {
            return Err(bad("ends with a lone %"));
        };
        match c {
            '%' => out.push('%'),
            '_' => out.push(' '),
            '-' => out.push_str("%20"),
            '{' => {
                let end = after.find('}').ok_or_else(|| bad("unclosed %{"))?;
                out.push_str(&one_macro(&after[1..end], v).map_err(|why| bad(&why))?);
                rest = &after[end + 1..];
                continue;
            }
            _ => return Err(bad("% must be followed by %, _, - or {")),
        }
        rest = &after[c.len_utf8()..];
    }
    out.push_str(rest);
    let mut name = out.as_str();
    while name.len() > 253 {
        match name.split_once('.') {
            Some((_, shorter)) => name = shorter,
            None => break,
        }
    }
    Ok(name.to_string())
}

/// One `%{...}` body: a letter, digits, `r`, delimiters.
fn one_macro(body: &str, v: &MacroValues<'_>) -> Result<String, String> {
    let mut chars = body.chars();
    let letter = chars.next().ok_or("empty %{}")?;
    let value = match letter.to_ascii_lowercase() {
        's' => format!("{}@{}", v.local, v.sender_domain),
        'l' => v.local.to_string(),
        'o' => v.sender_domain.to_string(),
        'd' => v.domain.to_string(),
        'h' => v.helo.to_string(),
        'i' => dotted(v.ip),
        'v' => match v.ip {
            IpAddr::V4(_) => "in-addr".into(),
            IpAddr::V6(_) => "ip6".into(),
        },
        // The validated name of the address: "unknown" is what RFC 7208
        // §7.3 allows a checker to give, and this one gives it always
        // (the macro is deprecated and costs lookups).
        'p' => "unknown".into(),
        other => return Err(format!("%{{{other}}} is not allowed in a domain-spec")),
    };
    let rest = chars.as_str();
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let keep: Option<usize> = match &rest[..digits_end] {
        "" => None,
        d => match d.parse() {
            Ok(0) | Err(_) => return Err(format!("%{{{body}}}: bad number of parts")),
            Ok(n) => Some(n),
        },
    };
    let mut rest = &rest[digits_end..];
    let reverse = rest.starts_with(['r', 'R']);
    if reverse {
        rest = &rest[1..];
    }
    if let Some(c) = rest.chars().find(|c| !".-+,/_=".contains(*c)) {
        return Err(format!("%{{{body}}}: {c:?} is not a delimiter"));
    }
    let delimiters: &str = if rest.is_empty() { "." } else { rest };
    let mut parts: Vec<&str> = value.split(|c| delimiters.contains(c)).collect();
    if reverse {
        parts.reverse();
    }
    if let Some(n) = keep {
        let skip = parts.len().saturating_sub(n);
        parts.drain(..skip);
    }
    let joined = parts.join(".");
    Ok(if letter.is_ascii_uppercase() {
        url_escape(&joined)
    } else {
        joined
    })
}

/// `%{i}`: dotted quad, or an IPv6 address as 32 dot-separated nibbles.
fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .flat_map(|b| [b >> 4, b & 0xf])
            .map(|n| format!("{n:x}"))
            .collect::<Vec<_>>()
            .join("."),
    }
}

/// An upper-case macro letter URL-escapes the value (§7.3).
fn url_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(ip: &str) -> MacroValues<'static> {
        MacroValues {
            local: "strong-bad",
            sender_domain: "email.example.com",
            helo: "mx.example.org",
            ip: ip.parse().unwrap(),
            domain: "email.example.com",
        }
    }

    #[test]
    fn the_rfc_examples_expand_as_the_rfc_says() {
        // RFC 7208 §7.4.
        let v = values("192.0.2.3");
        let cases = [
            ("%{s}", "strong-bad@email.example.com"),
            ("%{o}", "email.example.com"),
            ("%{d}", "email.example.com"),
            ("%{d4}", "email.example.com"),
            ("%{d3}", "email.example.com"),
            ("%{d2}", "example.com"),
            ("%{d1}", "com"),
            ("%{dr}", "com.example.email"),
            ("%{d2r}", "example.email"),
            ("%{l}", "strong-bad"),
            ("%{l-}", "strong.bad"),
            ("%{lr}", "strong-bad"),
            ("%{lr-}", "bad.strong"),
            ("%{l1r-}", "strong"),
            (
                "%{ir}.%{v}._spf.%{d2}",
                "3.2.0.192.in-addr._spf.example.com",
            ),
            ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
            (
                "%{d2}.trusted-domains.example.net",
                "example.com.trusted-domains.example.net",
            ),
            ("%%%_%-", "% %20"),
        ];
        for (spec, want) in cases {
            assert_eq!(expand(spec, &v).unwrap(), want, "{spec}");
        }
        let v6 = values("2001:db8::cb01");
        assert_eq!(
            expand("%{ir}.%{v}._spf.%{d2}", &v6).unwrap(),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
    }

    #[test]
    fn bad_macros_are_errors_and_long_names_are_cut_from_the_left() {
        let v = values("192.0.2.3");
        for bad in ["%", "%x", "%{", "%{c}", "%{d0}", "%{d2q}", "%{}"] {
            assert!(expand(bad, &v).is_err(), "{bad}");
        }
        let long = format!("{}{}.%{{d}}", "a".repeat(60), ".bbbbbbbbbb".repeat(20));
        let name = expand(&long, &v).unwrap();
        assert!(
            name.len() <= 253 && name.ends_with(".email.example.com"),
            "{name}"
        );
    }
}
