//! `mailqueue shape` (Postfix's qshape): how many pending recipients
//! (or messages, by sender) wait per domain, in age buckets.

use std::borrow::Borrow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use mailqueue::queue::meta::{MessageMeta, Timestamp};

/// The buckets' upper bounds, in minutes; a last bucket holds the older.
pub const BUCKETS: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// Counts per domain and age bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// `recipient` or `sender`: what the rows count.
    pub by: String,
    /// The column names: `T`, then one per bucket (`5`, ..., `1280+`).
    pub columns: Vec<String>,
    /// The total row first, then one row per domain, largest first.
    pub rows: Vec<ShapeRow>,
}

/// One domain's counts, the total first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeRow {
    pub domain: String,
    pub counts: Vec<u64>,
}

/// The bucket of a message `age_minutes` old.
fn bucket(age_minutes: u64) -> usize {
    BUCKETS
        .iter()
        .position(|&b| age_minutes < b)
        .unwrap_or(BUCKETS.len())
}

impl Shape {
    /// Counts pending recipients by recipient domain, or messages by
    /// sender domain (`MAILER-DAEMON` for notices), as of `now`.
    /// Takes the messages one at a time: the queue is never held whole.
    pub fn of<M: Borrow<MessageMeta>>(
        messages: impl IntoIterator<Item = M>,
        by_sender: bool,
        now: Timestamp,
    ) -> Shape {
        let width = BUCKETS.len() + 2;
        let mut per: HashMap<String, Vec<u64>> = HashMap::new();
        let mut total = vec![0u64; width];
        for m in messages {
            let m = m.borrow();
            let b = 1 + bucket(now.since(m.arrival).as_secs() / 60);
            let domains: Vec<String> = if by_sender {
                vec![m
                    .sender
                    .as_ref()
                    .map(|a| a.domain().to_ascii_lowercase())
                    .unwrap_or_else(|| "MAILER-DAEMON".into())]
            } else {
                m.pending()
                    .map(|r| r.address.domain().to_ascii_lowercase())
                    .collect()
            };
            for d in domains {
                let row = per.entry(d).or_insert_with(|| vec![0; width]);
                row[0] += 1;
                row[b] += 1;
                total[0] += 1;
                total[b] += 1;
            }
        }
        let mut rows: Vec<ShapeRow> = per
            .into_iter()
            .map(|(domain, counts)| ShapeRow { domain, counts })
            .collect();
        rows.sort_by(|a, b| b.counts[0].cmp(&a.counts[0]).then(a.domain.cmp(&b.domain)));
        rows.insert(
            0,
            ShapeRow {
                domain: "TOTAL".into(),
                counts: total,
            },
        );
        let mut columns = vec!["T".to_string()];
        columns.extend(BUCKETS.iter().map(u64::to_string));
        columns.push(format!("{}+", BUCKETS[BUCKETS.len() - 1]));
        Shape {
            by: if by_sender { "sender" } else { "recipient" }.into(),
            columns,
            rows,
        }
    }

    /// The table, as qshape prints it.
    pub fn text(&self) -> String {
        let name_width = self
            .rows
            .iter()
            .map(|r| r.domain.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut s = format!("{:>name_width$}", "");
        for c in &self.columns {
            s.push_str(&format!(" {c:>6}"));
        }
        s.push('\n');
        for r in &self.rows {
            s.push_str(&format!("{:>name_width$}", r.domain));
            for n in &r.counts {
                s.push_str(&format!(" {n:>6}"));
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_fall_in_qshape_buckets() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(4), 0);
        assert_eq!(bucket(5), 1);
        assert_eq!(bucket(1279), 8);
        assert_eq!(bucket(1280), 9);
        assert_eq!(bucket(100_000), 9);
    }
}
