//! A small RFC 3464 reader for test assertions, built on mailparse.

use std::collections::HashMap;

pub struct Dsn {
    pub headers: Vec<(String, String)>,
    pub content_type: String,
    pub report_type: String,
    pub part_types: Vec<String>,
    pub text: String,
    pub message_fields: HashMap<String, String>,
    pub recipients: Vec<HashMap<String, String>>,
    pub returned: String,
}

impl Dsn {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} header"))
    }
}

fn fields(block: &str) -> HashMap<String, String> {
    let (headers, _) = mailparse::parse_headers(block.as_bytes()).unwrap();
    headers
        .iter()
        .map(|h| (h.get_key(), h.get_value()))
        .collect()
}

pub fn parse(raw: &[u8]) -> Dsn {
    let mail = mailparse::parse_mail(raw).unwrap();
    let ct = &mail.ctype;
    let part_types = mail
        .subparts
        .iter()
        .map(|p| p.ctype.mimetype.clone())
        .collect();
    let status = String::from_utf8(mail.subparts[1].get_body_raw().unwrap()).unwrap();
    let normalized = status.replace("\r\n", "\n");
    let mut blocks = normalized.split("\n\n").filter(|b| !b.trim().is_empty());
    let message_fields = fields(blocks.next().unwrap());
    let recipients = blocks.map(fields).collect();
    Dsn {
        headers: mail
            .headers
            .iter()
            .map(|h| (h.get_key(), h.get_value()))
            .collect(),
        content_type: ct.mimetype.clone(),
        report_type: ct.params.get("report-type").cloned().unwrap_or_default(),
        part_types,
        text: mail.subparts[0].get_body().unwrap(),
        message_fields,
        recipients,
        returned: String::from_utf8(mail.subparts[2].get_body_raw().unwrap()).unwrap(),
    }
}
